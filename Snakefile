# diffusion-fisher: the diffusion Fisher F_t(x) = -∇² log q_t(x) and the experiments of
# Wang et al., "Efficiently Access Diffusion Fisher: Within the Outer Product Span Space" (ICML 2025).
#
#   snakemake --cores all                         # default config (small scale)
#   snakemake --cores all --configfile config/paper.yaml
#   snakemake --profile profiles/slurm            # on a SLURM cluster
import sys
from pathlib import Path

import yaml
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# `snakemake --report FILE` with neither --configfile nor --config reports on the last complete run: the summary
# rule wrote that run's effective configuration to <results>/report/config.yaml (the default results directory;
# for another one, give that file: --configfile <results>/report/config.yaml). docs/design.md, "The report".
_LAST_RUN_CONFIG = Path(config["results"]) / "report" / "config.yaml"
_REPORT_ONLY = (
    any(a == "--report" or a.startswith("--report=") for a in sys.argv)
    and "--report-after-run" not in sys.argv
)
if (
    _REPORT_ONLY
    and not workflow.config_settings.overwrite_config
    and _LAST_RUN_CONFIG.exists()
):
    with open(_LAST_RUN_CONFIG) as _stream:
        _recorded = yaml.safe_load(_stream)
    config.clear()
    config.update(_recorded)
    print(
        f"report on the last complete run, configuration {_LAST_RUN_CONFIG}",
        file=sys.stderr,
    )


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/nll.smk"
include: "workflow/rules/trace_budget.smk"
include: "workflow/rules/likelihood.smk"
include: "workflow/rules/adjoint.smk"
include: "workflow/rules/ot.smk"
include: "workflow/rules/sd.smk"
include: "workflow/rules/pretrained.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
