# diffusion-fisher: the diffusion Fisher F_t(x) = -∇² log q_t(x) and the experiments of
# Wang et al., "Efficiently Access Diffusion Fisher: Within the Outer Product Span Space" (ICML 2025).
#
#   snakemake --cores all                         # default config (small scale)
#   snakemake --cores all --configfile config/paper.yaml
#   snakemake --profile profiles/slurm            # on a SLURM cluster
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/nll.smk"
include: "workflow/rules/likelihood.smk"
include: "workflow/rules/adjoint.smk"
include: "workflow/rules/ot.smk"
include: "workflow/rules/sd.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
