# Rules of the 'report' stage (see README, 'Workflow').
# Report-level outputs: a table of every final output with its content digest and provenance.
# Included last, so that TARGETS already holds the final outputs of every other stage.


rule summary:
    input:
        outputs=list(TARGETS),
    output:
        report(
            f"{RESULTS}/report/outputs.csv",
            caption="../report/summary.rst",
            category="Run summary",
        ),
    log:
        f"{RESULTS}/logs/report/summary.log",
    localrule: True
    conda:
        "../envs/dfcore.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        root=lambda wildcards, output: str(Path(output[0]).parent.parent),
    script:
        "../scripts/summary.py"


TARGETS.append(f"{RESULTS}/report/outputs.csv")
