# Shared helpers for every rule file. No science here: rules call dfcore entry points.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))

from dfcore.config import ConfigError, validate_config

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None


RESULTS = config["results"]

# Each rule file appends its final targets here; `rule all` collects them.
TARGETS = []


def all_targets():
    return TARGETS
