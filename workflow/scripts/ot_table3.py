"""Rule `ot_table3`: dfcore.experiments.ot.run_table3."""

import torch

from dfcore.experiments.ot import run_table3
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)
    run_table3(
        snakemake.params.ot,
        snakemake.params.schedules,
        seed=snakemake.params.seed,
        device=snakemake.params.device,
        csv_path=snakemake.output.csv,
        markdown_path=snakemake.output.markdown,
        heatmap_path=snakemake.output.heatmap,
        fundamental_zarr=snakemake.output.fundamental,
        paths_zarr=snakemake.output.paths,
        config=dict(snakemake.params.items()),  # provenance: the config values the rule declares
    )
