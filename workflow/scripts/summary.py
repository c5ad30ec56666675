"""Rule `summary`: dfcore.experiments.summary.write_summary, and the run's effective configuration."""

import json
import logging

import yaml

from dfcore.experiments.summary import write_summary
from dfcore.io import write_text
from dfcore.logs import rule_log

CONFIG_HEADER = """\
# The effective configuration of this run: config/config.yaml, then each --configfile in order, then --config,
# merged, validated against workflow/schemas/config.schema.yaml, every default filled in (keys: config/README.md).
# `snakemake --report FILE` without --configfile reports on the run recorded here (docs/design.md, "The report").
"""

with rule_log(snakemake.log[0]):  # output, warnings and tracebacks go to the rule's log
    table = write_summary(snakemake.input.outputs, snakemake.output.table, root=snakemake.params.root)
    logging.info("summarised %d outputs into %s", len(table), snakemake.output.table)
    config = json.loads(json.dumps(snakemake.params.config))  # plain dicts and lists for yaml.safe_dump
    write_text(CONFIG_HEADER + yaml.safe_dump(config, sort_keys=False), snakemake.output.config)
    logging.info("effective configuration written to %s", snakemake.output.config)
