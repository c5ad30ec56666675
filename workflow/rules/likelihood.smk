# Rules of the 'likelihood' stage (docs/likelihood.md): NLL error against time per trace
# estimator on Gaussian mixtures with a closed-form density, every method on the same trained denoiser with
# the same ODE solver; the peers k-diffusion and flow_matching through thin adapters; Table 2 on the mixtures;
# bits/dim of held-out digits (likelihood.heldout) by the same estimators.
# The denoisers come from rule train_denoiser, the sq_norm and residual trace nets from rule train_trace_target;
# the ablation's trace net (target from the exact mixture) is trained here.

LIKELIHOOD = config["likelihood"]
LIKELIHOOD_SCHEDULE = LIKELIHOOD["schedule"]
HELDOUT = LIKELIHOOD["heldout"]


rule likelihood_trace:
    input:
        data=f"{RESULTS}/data/{{dataset}}.zarr",
        denoiser=f"{RESULTS}/models/{{dataset}}_{{schedule}}_denoiser.pt",
    output:
        model=f"{RESULTS}/models/{{dataset}}_{{schedule}}_trace_{{target}}.pt",
        losses=f"{RESULTS}/models/{{dataset}}_{{schedule}}_trace_{{target}}_loss.csv",
    log:
        f"{RESULTS}/logs/train/{{dataset}}_{{schedule}}_trace_{{target}}.log",
    wildcard_constraints:
        target=EXACT_MIXTURE_TARGETS,
    conda:
        "../envs/dfcore.yaml"
    threads: trace_threads
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        trace_net=likelihood_trace_section,
        seed=config["seed"],
        device=config["device"],
        resume=f"{RESULTS}/models/resume/{{dataset}}_{{schedule}}_trace_{{target}}.pt",
    script:
        "../scripts/likelihood_trace.py"


rule likelihood_dataset:
    input:
        unpack(likelihood_trace_inputs),
        data=f"{RESULTS}/data/{{dataset}}.zarr",
        denoiser=f"{RESULTS}/models/{{dataset}}_{LIKELIHOOD_SCHEDULE}_denoiser.pt",
    output:
        f"{RESULTS}/likelihood/points_{{dataset}}.csv",
    log:
        f"{RESULTS}/logs/likelihood/{{dataset}}.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=120,
    params:
        likelihood=without(LIKELIHOOD, "datasets", "table2", "schedule", "heldout"),
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/likelihood.py"


rule likelihood_benchmark:
    input:
        points=expand(
            f"{RESULTS}/likelihood/points_{{dataset}}.csv",
            dataset=LIKELIHOOD["datasets"],
        ),
    output:
        csv=report(
            f"{RESULTS}/likelihood/benchmark.csv",
            caption="../report/likelihood_benchmark.rst",
            category="Likelihood benchmark",
        ),
        figure=report(
            f"{RESULTS}/likelihood/benchmark.png",
            caption="../report/likelihood_benchmark.rst",
            category="Likelihood benchmark",
        ),
        pareto=report(
            f"{RESULTS}/likelihood/pareto.png",
            caption="../report/likelihood_pareto.rst",
            category="Likelihood benchmark",
        ),
    log:
        f"{RESULTS}/logs/likelihood/benchmark.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/likelihood_benchmark.py"


rule likelihood_table2:
    input:
        data=f"{RESULTS}/data/{{dataset}}.zarr",
        trace=f"{RESULTS}/models/{{dataset}}_{LIKELIHOOD_SCHEDULE}_trace_sq_norm.pt",
    output:
        csv=report(
            f"{RESULTS}/likelihood/table2_{{dataset}}.csv",
            caption="../report/likelihood_table2.rst",
            category="Likelihood benchmark",
        ),
        markdown=report(
            f"{RESULTS}/likelihood/table2_{{dataset}}.md",
            caption="../report/likelihood_table2.rst",
            category="Likelihood benchmark",
        ),
        figure=report(
            f"{RESULTS}/likelihood/table2_{{dataset}}.png",
            caption="../report/likelihood_table2.rst",
            category="Likelihood benchmark",
        ),
        zarr=directory(f"{RESULTS}/likelihood/table2_{{dataset}}.zarr"),
    log:
        f"{RESULTS}/logs/likelihood/table2_{{dataset}}.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        table2=without(LIKELIHOOD["table2"], "datasets"),
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/likelihood_table2.py"


if HELDOUT["train"]:

    rule likelihood_heldout:
        input:
            unpack(heldout_trace_inputs),
            train=f"{RESULTS}/data/{HELDOUT['train']}.zarr",
            test=f"{RESULTS}/data/{HELDOUT['test']}.zarr",
            denoiser=f"{RESULTS}/models/{HELDOUT['train']}_{LIKELIHOOD_SCHEDULE}_denoiser.pt",
        output:
            points=f"{RESULTS}/likelihood/heldout_points.csv",
            summary=report(
                f"{RESULTS}/likelihood/heldout.csv",
                caption="../report/likelihood_heldout.rst",
                category="Likelihood benchmark",
            ),
            markdown=report(
                f"{RESULTS}/likelihood/heldout.md",
                caption="../report/likelihood_heldout.rst",
                category="Likelihood benchmark",
            ),
        log:
            f"{RESULTS}/logs/likelihood/heldout.log",
        conda:
            "../envs/dfcore.yaml"
        threads: 2
        resources:
            mem_mb=6000,
            runtime=120,
        params:
            # the solver keys of the section and its heldout subsection
            likelihood=without(
                LIKELIHOOD,
                "datasets",
                "table2",
                "schedule",
                "methods",
                "num_points",
                "seed",
                "t_min",
            ),
            seed=config["seed"],
            device=config["device"],
        script:
            "../scripts/likelihood_heldout.py"

    TARGETS.extend(
        f"{RESULTS}/likelihood/{name}" for name in ("heldout.csv", "heldout.md")
    )


if LIKELIHOOD["datasets"]:
    TARGETS.extend([f"{RESULTS}/likelihood/benchmark.{ext}" for ext in ("csv", "png")])
TARGETS.extend(
    f"{RESULTS}/likelihood/table2_{name}.{ext}"
    for name in LIKELIHOOD["table2"]["datasets"]
    for ext in ("csv", "md", "png", "zarr")
)
