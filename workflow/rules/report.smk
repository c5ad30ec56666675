# Rules of the 'report' stage (see README, 'Workflow').
# Report-level outputs: a table of every final output with its content digest and provenance, and the effective
# configuration of the run. Included last, so that TARGETS already holds the final outputs of every other stage.


rule summary:
    input:
        outputs=list(TARGETS),
    output:
        table=report(
            f"{RESULTS}/report/outputs.csv",
            caption="../report/summary.rst",
            category="Run summary",
        ),
        # read back by `snakemake --report` without --configfile (Snakefile)
        config=report(
            f"{RESULTS}/report/config.yaml",
            caption="../report/config.rst",
            category="Configuration",
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
        # the whole validated config, defaults filled in: any changed key rewrites config.yaml
        config=canonical_params(config),
    script:
        "../scripts/summary.py"


TARGETS.extend([f"{RESULTS}/report/outputs.csv", f"{RESULTS}/report/config.yaml"])
