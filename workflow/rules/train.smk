# Rules of the 'train' stage (see README, 'Workflow'): the denoiser and the trace network (Alg. 1) of a
# (dataset, schedule) pair; train_trace_target trains the same trace network on another regression target
# (Table 2 compares them). Resume checkpoints live in {RESULTS}/models/resume/ (not outputs, so an
# interrupted job keeps them and the rerun continues from the last one).


rule train_denoiser:
    input:
        data=f"{RESULTS}/data/{{dataset}}.zarr",
    output:
        model=f"{RESULTS}/models/{{dataset}}_{{schedule}}_denoiser.pt",
        losses=f"{RESULTS}/models/{{dataset}}_{{schedule}}_denoiser_loss.csv",
    log:
        f"{RESULTS}/logs/train/{{dataset}}_{{schedule}}_denoiser.log",
    conda:
        "../envs/dfcore.yaml"
    threads: train_threads
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        denoiser=training_section("denoiser"),
        schedule=schedule_params,
        seed=config["seed"],
        device=config["device"],
        resume=f"{RESULTS}/models/resume/{{dataset}}_{{schedule}}_denoiser.pt",
    script:
        "../scripts/train.py"


rule train_trace:
    input:
        data=f"{RESULTS}/data/{{dataset}}.zarr",
        denoiser=f"{RESULTS}/models/{{dataset}}_{{schedule}}_denoiser.pt",
    output:
        model=f"{RESULTS}/models/{{dataset}}_{{schedule}}_trace.pt",
        losses=f"{RESULTS}/models/{{dataset}}_{{schedule}}_trace_loss.csv",
    log:
        f"{RESULTS}/logs/train/{{dataset}}_{{schedule}}_trace.log",
    conda:
        "../envs/dfcore.yaml"
    threads: trace_threads
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        trace_net=trace_section,
        seed=config["seed"],
        device=config["device"],
        resume=f"{RESULTS}/models/resume/{{dataset}}_{{schedule}}_trace.pt",
    script:
        "../scripts/train.py"


# The trace network with trace_net.target replaced by {target}, everything else as in train_trace.
use rule train_trace as train_trace_target with:
    output:
        model=f"{RESULTS}/models/{{dataset}}_{{schedule}}_trace_{{target}}.pt",
        losses=f"{RESULTS}/models/{{dataset}}_{{schedule}}_trace_{{target}}_loss.csv",
    log:
        f"{RESULTS}/logs/train/{{dataset}}_{{schedule}}_trace_{{target}}.log",
    wildcard_constraints:
        target=TRAINED_TARGETS,
    params:
        trace_net=trace_section,
        seed=config["seed"],
        device=config["device"],
        resume=f"{RESULTS}/models/resume/{{dataset}}_{{schedule}}_trace_{{target}}.pt",
