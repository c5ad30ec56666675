# Rules of the 'adjoint' stage (see README, 'Workflow').
# DF-EA (Eq. 20): adjoint guidance whose Fisher-vector products come from analytic / dfea / vjp,
# against autograd through the sampler. Task (a): 2-D mixtures, exact denoiser; task (b): digits,
# trained UNet denoiser and the classifier trained here.

ADJOINT_FILES = ["metrics.csv", "agreement.csv", "loss_vs_time.png", "agreement.png"]


rule adjoint_classifier:
    output:
        checkpoint=f"{RESULTS}/models/digits_classifier.pt",
        metrics=report(
            f"{RESULTS}/adjoint/classifier.csv",
            caption="../report/adjoint_classifier.rst",
            category="Adjoint guidance",
            subcategory="digits",
        ),
    log:
        f"{RESULTS}/logs/adjoint/classifier.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=canonical_params(config["adjoint"]["classifier"]),
        seed=config["seed"],
    script:
        "../scripts/adjoint_classifier.py"


rule adjoint_mixture:
    input:
        data=f"{RESULTS}/data/{{dataset}}.zarr",
    output:
        metrics=report(
            f"{RESULTS}/adjoint/mixture_{{dataset}}_{{schedule}}/metrics.csv",
            caption="../report/adjoint_metrics.rst",
            category="Adjoint guidance",
            subcategory="2-D mixture",
        ),
        agreement=report(
            f"{RESULTS}/adjoint/mixture_{{dataset}}_{{schedule}}/agreement.csv",
            caption="../report/adjoint_agreement.rst",
            category="Adjoint guidance",
            subcategory="2-D mixture",
        ),
        trajectories=directory(
            f"{RESULTS}/adjoint/mixture_{{dataset}}_{{schedule}}/trajectories.zarr"
        ),
        loss_plot=report(
            f"{RESULTS}/adjoint/mixture_{{dataset}}_{{schedule}}/loss_vs_time.png",
            caption="../report/adjoint_loss_vs_time.rst",
            category="Adjoint guidance",
            subcategory="2-D mixture",
        ),
        agreement_plot=report(
            f"{RESULTS}/adjoint/mixture_{{dataset}}_{{schedule}}/agreement.png",
            caption="../report/adjoint_agreement.rst",
            category="Adjoint guidance",
            subcategory="2-D mixture",
        ),
        lambda_exact=report(
            f"{RESULTS}/adjoint/mixture_{{dataset}}_{{schedule}}/lambda_exact.csv",
            caption="../report/adjoint_lambda_exact.rst",
            category="Adjoint guidance",
            subcategory="2-D mixture",
        ),
    log:
        f"{RESULTS}/logs/adjoint/mixture_{{dataset}}_{{schedule}}.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        adjoint=adjoint_task_params("mixture"),
        schedule=schedule_params,
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/adjoint_mixture.py"


rule adjoint_digits:
    input:
        denoiser=f"{RESULTS}/models/digits_{config['adjoint']['digits']['schedule']}_denoiser.pt",
        classifier=f"{RESULTS}/models/digits_classifier.pt",
    output:
        metrics=report(
            f"{RESULTS}/adjoint/digits/metrics.csv",
            caption="../report/adjoint_metrics.rst",
            category="Adjoint guidance",
            subcategory="digits",
        ),
        agreement=report(
            f"{RESULTS}/adjoint/digits/agreement.csv",
            caption="../report/adjoint_agreement.rst",
            category="Adjoint guidance",
            subcategory="digits",
        ),
        trajectories=directory(f"{RESULTS}/adjoint/digits/trajectories.zarr"),
        loss_plot=report(
            f"{RESULTS}/adjoint/digits/loss_vs_time.png",
            caption="../report/adjoint_loss_vs_time.rst",
            category="Adjoint guidance",
            subcategory="digits",
        ),
        agreement_plot=report(
            f"{RESULTS}/adjoint/digits/agreement.png",
            caption="../report/adjoint_agreement.rst",
            category="Adjoint guidance",
            subcategory="digits",
        ),
        grid_plot=report(
            f"{RESULTS}/adjoint/digits/samples.png",
            caption="../report/adjoint_digits_grid.rst",
            category="Adjoint guidance",
            subcategory="digits",
        ),
    log:
        f"{RESULTS}/logs/adjoint/digits.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=15,
    params:
        adjoint=adjoint_task_params("digits"),
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/adjoint_digits.py"


TARGETS.extend(
    [f"{RESULTS}/adjoint/classifier.csv"]
    + [
        f"{RESULTS}/adjoint/mixture_{config['adjoint']['mixture']['dataset']}_{schedule}/{name}"
        for schedule in config["adjoint"]["mixture"]["schedules"]
        for name in ADJOINT_FILES + ["trajectories.zarr", "lambda_exact.csv"]
    ]
    + [
        f"{RESULTS}/adjoint/digits/{name}"
        for name in ADJOINT_FILES + ["samples.png", "trajectories.zarr"]
    ]
)
