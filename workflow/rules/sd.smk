# Rules of the 'sd' stage (docs/stable-diffusion.md, resources/README.md): DF-TM likelihoods and
# DF-EA adjoint guidance on a local Stable Diffusion pipeline. Off unless config sd.enabled; with sd.tiny a
# tiny random pipeline, CLIP reward and image folder are built here (tests, CI) instead of real weights.

SD = config["sd"]
if SD["tiny"]:
    SD_PIPELINE = f"{RESULTS}/sd/tiny/pipeline"
    SD_CLIP = f"{RESULTS}/sd/tiny/clip"
    SD_IMAGES = f"{RESULTS}/sd/tiny/images"
else:
    SD_PIPELINE = SD["pipeline"]
    SD_CLIP = SD["adjoint"]["clip_path"]
    SD_IMAGES = SD["trace_net"]["image_dir"]
SD_USES_CLIP = SD["adjoint"]["reward"] == "clip"
# The tiny pipeline runs fastest on one thread (a shared CI machine); real weights use every core given.
SD_THREADS = 1 if SD["tiny"] else workflow.cores


rule sd_tiny_pipeline:
    output:
        pipeline=directory(f"{RESULTS}/sd/tiny/pipeline"),
        clip=directory(f"{RESULTS}/sd/tiny/clip"),
        images=directory(f"{RESULTS}/sd/tiny/images"),
    log:
        f"{RESULTS}/logs/sd/tiny_pipeline.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        sd=sd_tiny_params(),
        seed=config["seed"],
    script:
        "../scripts/sd.py"


rule sd_trace_net:
    input:
        pipeline=sd_local(SD_PIPELINE),
        images=sd_local(SD_IMAGES),
    output:
        checkpoint=f"{RESULTS}/models/sd_trace_net.pt",
        loss=f"{RESULTS}/sd/trace_net_loss.csv",
    log:
        f"{RESULTS}/logs/sd/trace_net.log",
    conda:
        "../envs/dfcore.yaml"
    threads: SD_THREADS
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        sd=sd_params("dtype", "negative_prompt", "trace_net"),
        resume=f"{RESULTS}/models/sd_trace_net.resume.pt",
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/sd.py"


rule sd_nll:
    input:
        pipeline=sd_local(SD_PIPELINE),
        trace=f"{RESULTS}/models/sd_trace_net.pt",
    output:
        zarr=directory(f"{RESULTS}/sd/nll/nll.zarr"),
        csv=report(
            f"{RESULTS}/sd/nll/nll.csv",
            caption="../report/sd_nll.rst",
            category="Stable Diffusion",
        ),
        guidance=report(
            f"{RESULTS}/sd/nll/nll_vs_guidance.png",
            caption="../report/sd_nll_guidance.rst",
            category="Stable Diffusion",
        ),
        seeds=report(
            f"{RESULTS}/sd/nll/nll_seeds.png",
            caption="../report/sd_nll_seeds.rst",
            category="Stable Diffusion",
        ),
    log:
        f"{RESULTS}/logs/sd/nll.log",
    conda:
        "../envs/dfcore.yaml"
    threads: SD_THREADS
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        sd=sd_params("dtype", "prompts", "negative_prompt", "num_steps", "nll"),
        device=config["device"],
    script:
        "../scripts/sd.py"


rule sd_adjoint:
    input:
        pipeline=sd_local(SD_PIPELINE),
        clip=sd_local(SD_CLIP) if SD_USES_CLIP else [],
    output:
        metrics=report(
            f"{RESULTS}/sd/adjoint/metrics.csv",
            caption="../report/sd_adjoint.rst",
            category="Stable Diffusion",
        ),
        plot=report(
            f"{RESULTS}/sd/adjoint/scores.png",
            caption="../report/sd_adjoint.rst",
            category="Stable Diffusion",
        ),
    log:
        f"{RESULTS}/logs/sd/adjoint.log",
    conda:
        "../envs/dfcore.yaml"
    threads: SD_THREADS
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        sd=sd_params("dtype", "prompts", "negative_prompt", "adjoint"),
        device=config["device"],
    script:
        "../scripts/sd.py"


SD_TARGETS = [
    f"{RESULTS}/sd/nll/{name}"
    for name in ["nll.zarr", "nll.csv", "nll_vs_guidance.png", "nll_seeds.png"]
] + [f"{RESULTS}/sd/adjoint/{name}" for name in ["metrics.csv", "scores.png"]]

if SD["enabled"]:
    TARGETS.extend(SD_TARGETS)
