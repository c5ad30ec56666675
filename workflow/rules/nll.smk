# Rules of the 'nll' stage (see README, 'Workflow'): likelihood through the PF-ODE (Eq. 14) and the
# paper's Table 2 (relative trace error of VJP, DF-TM and Hutchinson against the analytic trace).


rule nll:
    input:
        unpack(nll_models),
        data=f"{RESULTS}/data/{{dataset}}.zarr",
    output:
        report(
            f"{RESULTS}/nll/{{dataset}}_{{schedule}}_{{method}}.csv",
            caption="../report/nll.rst",
            category="Likelihood (PF-ODE)",
        ),
    log:
        f"{RESULTS}/logs/nll/{{dataset}}_{{schedule}}_{{method}}.log",
    wildcard_constraints:
        method=TRACE_ESTIMATOR_NAMES,
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        nll=without(config["nll"], "runs"),
        schedule=schedule_params,
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/nll.py"


TRACE_ERROR = f"{RESULTS}/trace_error/{config['trace_error']['dataset']}_{config['trace_error']['schedule']}"


rule trace_error:
    input:
        data=f"{RESULTS}/data/{config['trace_error']['dataset']}.zarr",
        trace=f"{RESULTS}/models/{config['trace_error']['dataset']}_{config['trace_error']['schedule']}_trace.pt",
        targets=trace_error_targets,
    output:
        csv=report(
            f"{TRACE_ERROR}.csv",
            caption="../report/trace_error.rst",
            category="Table 2: trace error",
        ),
        markdown=report(
            f"{TRACE_ERROR}.md",
            caption="../report/trace_error.rst",
            category="Table 2: trace error",
        ),
        figure=report(
            f"{TRACE_ERROR}.png",
            caption="../report/trace_error.rst",
            category="Table 2: trace error",
        ),
        zarr=directory(f"{TRACE_ERROR}.zarr"),
    log:
        f"{RESULTS}/logs/trace_error/table2.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        # trace_targets only chooses the inputs (targets): the script reads each net's target from its checkpoint
        trace_error=without(config["trace_error"], "trace_targets"),
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/trace_error.py"


TARGETS.extend(
    f"{RESULTS}/nll/{run['dataset']}_{run['schedule']}_{run['method']}.csv"
    for run in config["nll"]["runs"]
)
TARGETS.extend([f"{TRACE_ERROR}.{ext}" for ext in ("csv", "md", "png", "zarr")])
