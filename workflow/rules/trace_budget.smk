# Rules of the trace-net training-budget study (trace_budget section, off by default): one trace net per
# (target, budget) on the Table 2 data set and schedule, and its Table 2 DF-TM error against the steps.


# The trace network with trace_net.target replaced by {target} and trace_net.steps by {steps} (warmup_steps
# scaled alike), everything else as in train_trace.
use rule train_trace as train_trace_budget with:
    output:
        model=f"{RESULTS}/models/{{dataset}}_{{schedule}}_trace_{{target}}_steps{{steps}}.pt",
        losses=f"{RESULTS}/models/{{dataset}}_{{schedule}}_trace_{{target}}_steps{{steps}}_loss.csv",
    log:
        f"{RESULTS}/logs/train/{{dataset}}_{{schedule}}_trace_{{target}}_steps{{steps}}.log",
    wildcard_constraints:
        target=TRAINED_TARGETS,
        steps=r"[1-9][0-9]*",
    params:
        trace_net=trace_budget_section,
        seed=config["seed"],
        device=config["device"],
        resume=f"{RESULTS}/models/resume/{{dataset}}_{{schedule}}_trace_{{target}}_steps{{steps}}.pt",


rule trace_budget:
    input:
        data=f"{RESULTS}/data/{config['trace_error']['dataset']}.zarr",
        nets=trace_budget_nets(),
    output:
        csv=report(
            f"{RESULTS}/trace_error/convergence.csv",
            caption="../report/trace_budget.rst",
            category="Table 2: trace error",
        ),
        figure=report(
            f"{RESULTS}/trace_error/convergence_steps.png",
            caption="../report/trace_budget.rst",
            category="Table 2: trace error",
        ),
    log:
        f"{RESULTS}/logs/trace_error/trace_budget.log",
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        trace_error=trace_budget_error_params(),
        runs=trace_budget_runs(),
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/trace_budget.py"


if config["trace_budget"]["enabled"]:
    TARGETS.extend(
        [
            f"{RESULTS}/trace_error/convergence.csv",
            f"{RESULTS}/trace_error/convergence_steps.png",
        ]
    )
