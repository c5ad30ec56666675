# Rules of the 'pretrained' stage (docs/your-model.md, "The workflow stage"; resources/README.md): the DF-TM trace
# net and bits/dim of images under a diffusers pipeline folder. Off unless config pretrained.enabled. With
# pretrained.model null the in-project DDPM is trained on the digits here; with pretrained.images null the
# digits split is written here as PNG folders. The trace net trains on pretrained.trace_images when given.

PRETRAINED = config["pretrained"]
if PRETRAINED["model"] is None:
    PRETRAINED_MODEL = f"{RESULTS}/pretrained/model"
else:
    PRETRAINED_MODEL = PRETRAINED["model"]
if PRETRAINED["images"] is None:
    PRETRAINED_TRAIN_IMAGES = f"{RESULTS}/pretrained/digits/train"
    PRETRAINED_IMAGES = f"{RESULTS}/pretrained/digits/test"
else:
    PRETRAINED_TRAIN_IMAGES = PRETRAINED_IMAGES = PRETRAINED["images"]
if PRETRAINED["trace_images"] is not None:
    PRETRAINED_TRAIN_IMAGES = PRETRAINED["trace_images"]
PRETRAINED_DFTM = "dftm" in PRETRAINED["measure"]["methods"]


rule pretrained_model:
    output:
        model=directory(f"{RESULTS}/pretrained/model"),
        loss=f"{RESULTS}/pretrained/model_loss.csv",
    log:
        f"{RESULTS}/logs/pretrained/model.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        train=pretrained_params("train"),
        seed=config["seed"],
    script:
        "../scripts/pretrained.py"


rule pretrained_digits:
    output:
        train=directory(f"{RESULTS}/pretrained/digits/train"),
        test=directory(f"{RESULTS}/pretrained/digits/test"),
    log:
        f"{RESULTS}/logs/pretrained/digits.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        train=pretrained_digits_params(),
        num_images=PRETRAINED["measure"]["num_images"],
        seed=config["seed"],
    script:
        "../scripts/pretrained.py"


rule pretrained_trace:
    input:
        model=PRETRAINED_MODEL,
        images=PRETRAINED_TRAIN_IMAGES,
    output:
        trace=directory(f"{RESULTS}/pretrained/trace"),
    log:
        f"{RESULTS}/logs/pretrained/trace.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        trace=pretrained_params("trace"),
        cond=PRETRAINED["cond"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/pretrained.py"


rule pretrained_bpd:
    input:
        unpack(pretrained_bpd_inputs),
    output:
        csv=report(
            f"{RESULTS}/pretrained/bpd.csv",
            caption="../report/pretrained_bpd.rst",
            category="Your own model",
        ),
        summary=f"{RESULTS}/pretrained/summary.json",
        plot=report(
            f"{RESULTS}/pretrained/bpd.png",
            caption="../report/pretrained_bpd.rst",
            category="Your own model",
        ),
    log:
        f"{RESULTS}/logs/pretrained/bpd.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        measure=pretrained_params("measure"),
        cond=PRETRAINED["cond"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/pretrained.py"


PRETRAINED_TARGETS = [
    f"{RESULTS}/pretrained/{name}" for name in ["bpd.csv", "summary.json", "bpd.png"]
]

if PRETRAINED["enabled"]:
    TARGETS.extend(PRETRAINED_TARGETS)
