# Shared helpers for every rules file; no science here (rules call dfcore entry points).
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


# Input functions of the rules files (kept here: rule files hold rules only).
def nll_models(wildcards):
    stem = f"{RESULTS}/models/{wildcards.dataset}_{wildcards.schedule}"
    return {
        "analytic": {},
        "dftm": {"trace": f"{stem}_trace.pt"},
    }.get(wildcards.method, {"denoiser": f"{stem}_denoiser.pt"})


def sd_local(path):
    """A local input folder, or nothing when unset (the run then fails with the loader's clear message)."""
    return [path] if path else []


def train_threads(wildcards):
    """Image (UNet) training uses 2 threads; the small MLPs run fastest on one."""
    return (
        2
        if config["datasets"].get(wildcards.dataset, {}).get("kind") == "digits"
        else 1
    )
