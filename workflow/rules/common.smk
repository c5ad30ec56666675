# Shared helpers for every rules file; no science here (rules call dfcore entry points).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))

from dfcore.config import (
    ConfigError,
    canonical_params,
    dataset_section,
    load_yaml,
    target_section,
    validate_config,
)
from dfcore.experiments.likelihood_methods import OWN_METHODS
from dfcore.experiments.trace_budget import budget_runs, budget_section
from dfcore.fisher import TRACE_ESTIMATORS
from dfcore.models.networks import TRACE_TARGETS, training_states
from dfcore.registries import required_dependencies, wildcard_pattern

try:
    # Snakemake's own loader keeps the last of two equal keys; load_yaml refuses them.
    for _configfile in workflow.configfiles:
        load_yaml(_configfile)
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None


RESULTS = config["results"]

# Each rule file appends its final targets here; `rule all` collects them.
TARGETS = []


def all_targets():
    return TARGETS


# Params of the rules (kept here: rule files hold rules only). Each rule declares as params exactly the
# config values its script reads, and its script reads them from snakemake.params, never snakemake.config:
# Snakemake reruns a job when one of its params changes (rerun trigger `params`), so a changed key reruns
# the rules that read it and nothing else. Keys that only select targets (nll.runs, ot.convergence for
# Table 3, adjoint.mixture.schedules, ...) are left out: they add or remove jobs, never change one.
# `device` is a param of every rule that computes (a result on another device may differ in its last
# bits), so changing it reruns them; threads are not params (a changed --cores reruns nothing).
# Snakemake compares params by their repr: every mapping a helper returns goes through canonical_params,
# whose repr sorts the keys, so reordering the keys of a config mapping reruns nothing.


def without(section, *keys):
    """A config section without ``keys``."""
    return canonical_params(
        {key: value for key, value in section.items() if key not in keys}
    )


def schedule_params(wildcards):
    """Param function: the parameters of the job's schedule (top-level 'schedules' section)."""
    return canonical_params(config["schedules"].get(wildcards.schedule, {}))


def schedules_of(names):
    """The 'schedules' section restricted to ``names``."""
    return canonical_params({name: config["schedules"].get(name, {}) for name in names})


def dataset_spec(wildcards):
    """Param function: the job's entry of the 'datasets' section (None when absent; the job then says so)."""
    return canonical_params(config["datasets"].get(wildcards.dataset))


def training_section(name):
    """Param function for section ``name`` (denoiser, trace_net): the section as the job's dataset sees it,
    its own entry of ``overrides`` merged in, so another dataset's override, or a base key that this dataset
    overrides, retrains nothing here."""

    def section(wildcards):
        return canonical_params(dataset_section(config[name], wildcards.dataset))

    return section


def trace_section(wildcards):
    """Param function of train_trace and train_trace_target: the trace_net section as the job's dataset sees it
    (as training_section("trace_net")) and as the nets of the job's {target} see it (the main net: the section's
    own target; target_section merges trace_net.targets[target]); ``states`` is where the target trains
    (``training_states``: a target that reads x0 trains on noised data whatever ``states`` says), so toggling
    ``states``, or another target's entry, retrains only the nets it changes."""
    section = dataset_section(config["trace_net"], wildcards.dataset)
    target = getattr(wildcards, "target", section["target"])
    section = target_section(section, target)
    return canonical_params(
        {**section, "states": training_states(target, section["states"])}
    )


def ot_table3_params():
    """The 'ot' keys of Table 3: all but 'convergence' and 'protocols', t_min of its schedules only."""
    ot = config["ot"]
    return canonical_params(
        {
            **without(ot, "convergence", "protocols"),
            "t_min": {s: ot["t_min"][s] for s in ot["schedules"] if s in ot["t_min"]},
        }
    )


def ot_convergence_params():
    """The 'ot' keys of the convergence study: 'convergence', the grid keys and its own data sets."""
    ot, conv = config["ot"], config["ot"]["convergence"]
    return canonical_params(
        {
            **{
                key: ot[key]
                for key in ("dim", "spacing", "rho", "schedules", "asymmetry_floor")
            },
            "t_min": {s: ot["t_min"][s] for s in ot["schedules"] if s in ot["t_min"]},
            "datasets": {
                d: ot["datasets"][d] for d in conv["datasets"] if d in ot["datasets"]
            },
            "convergence": conv,
        }
    )


def ot_protocols_params():
    """The 'ot' keys of the protocols table: 'protocols', its data sets, and the keys of protocol 'ours'."""
    ot, prot = config["ot"], config["ot"]["protocols"]
    return canonical_params(
        {
            **{
                key: ot[key] for key in ("dim", "spacing", "rho", "update", "schedules")
            },
            "t_min": {s: ot["t_min"][s] for s in ot["schedules"] if s in ot["t_min"]},
            "datasets": {
                d: ot["datasets"][d] for d in prot["datasets"] if d in ot["datasets"]
            },
            "protocols": prot,
        }
    )


# Keys of an adjoint task that only name the rule's inputs or targets (not read by the task itself).
ADJOINT_TASK_TARGET_KEYS = {
    "mixture": ("dataset", "schedules"),
    "digits": ("schedule",),
}


def adjoint_task_params(task):
    """The 'adjoint' keys of ``task`` (mixture, digits): the shared sampler keys and its own subsection."""
    adjoint = config["adjoint"]
    return canonical_params(
        {
            **without(adjoint, "mixture", "digits", "classifier"),
            task: without(adjoint[task], *ADJOINT_TASK_TARGET_KEYS[task]),
        }
    )


def sd_params(*keys):
    """The 'sd' section restricted to ``keys``."""
    return canonical_params(
        {key: config["sd"][key] for key in keys if key in config["sd"]}
    )


def sd_tiny_params():
    """The 'sd' keys of the tiny pipeline's images: the last guidance scale of sd.nll only."""
    scales = config["sd"]["nll"]["guidance_scales"]
    return canonical_params(
        {
            **sd_params("prompts", "tiny_images", "num_steps"),
            "nll": {"guidance_scales": scales[-1:]},
        }
    )


def pretrained_params(key):
    """The subsection ``key`` (train, trace, measure) of the 'pretrained' section."""
    return canonical_params(config["pretrained"][key])


def pretrained_digits_params():
    """The 'pretrained.train' keys of the digits split: holdout and seed."""
    train = config["pretrained"]["train"]
    return canonical_params({key: train[key] for key in ("holdout", "seed")})


# Wildcard constraints, from the registries: the trace-net targets trained on the data alone (rule
# train_trace_target), those that read the data set's exact mixture (rule likelihood_trace), and the trace
# estimators of rule nll.
TRAINED_TARGETS = wildcard_pattern("trace_targets")
EXACT_MIXTURE_TARGETS = "|".join(
    name for name, spec in TRACE_TARGETS.items() if spec.reference == "exact_mixture"
)
TRACE_ESTIMATOR_NAMES = wildcard_pattern("trace_estimators")


def likelihood_trace_section(wildcards):
    """Param function of likelihood_trace: the trace_net section as the dataset and the job's {target} see it,
    without 'target' (the job's target is its wildcard, so trace_net.target retrains nothing here).
    """
    section = dataset_section(config["trace_net"], wildcards.dataset)
    return without(target_section(section, wildcards.target), "target")


# Input functions of the rules files.
def _likelihood_traces(dataset, methods):
    """The trace nets (input name trace_{target}) of the dftm methods among ``methods`` on ``dataset``."""
    stem = f"{RESULTS}/models/{dataset}_{config['likelihood']['schedule']}_trace"
    return {
        f"trace_{OWN_METHODS[method].trace_target}": f"{stem}_{OWN_METHODS[method].trace_target}.pt"
        for method in methods
        if method in OWN_METHODS and OWN_METHODS[method].trace_target
    }


def likelihood_trace_inputs(wildcards):
    """The trace nets that the likelihood job of a dataset needs: one per dftm method it runs."""
    return _likelihood_traces(wildcards.dataset, config["likelihood"]["methods"])


def heldout_trace_inputs(wildcards):
    """The trace nets of the held-out likelihood job: one per dftm method it runs, trained on its train set."""
    heldout = config["likelihood"]["heldout"]
    return _likelihood_traces(heldout["train"], heldout["methods"])


def nll_models(wildcards):
    """The networks the job's trace estimator is built from: its trace net (which holds its denoiser), else its
    denoiser, else none (the exact mixture, read from the data set)."""
    stem = f"{RESULTS}/models/{wildcards.dataset}_{wildcards.schedule}"
    needs = required_dependencies(TRACE_ESTIMATORS[wildcards.method])
    if "trace_model" in needs:
        return {"trace": f"{stem}_trace.pt"}
    return {"denoiser": f"{stem}_denoiser.pt"} if "denoiser" in needs else {}


def trace_error_targets(wildcards):
    """The further trace nets of Table 2 (with dftm among trace_error.methods): one per entry of
    trace_error.trace_targets other than the target of the main trace net ({stem}_trace.pt, trained on
    trace_net.target as the Table 2 dataset sees it, which is the `dftm` row), each {stem}_trace_{target}.pt.
    """
    te = config["trace_error"]
    if not any(
        "trace_model" in required_dependencies(TRACE_ESTIMATORS[m])
        for m in te["methods"]
    ):
        return []
    main = dataset_section(config["trace_net"], te["dataset"])["target"]
    stem = f"{RESULTS}/models/{te['dataset']}_{te['schedule']}"
    return [
        f"{stem}_trace_{target}.pt" for target in te["trace_targets"] if target != main
    ]


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


def trace_threads(wildcards):
    """As train_threads, and 2 threads for batches of 1,024 or more, where the MLP is GEMM-bound."""
    batch = dataset_section(config["trace_net"], wildcards.dataset).get("batch_size", 0)
    return 2 if batch >= 1024 else train_threads(wildcards)


def pretrained_bpd_inputs(wildcards):
    """The model and image folders of rule pretrained_bpd, and its trace net when dftm is among the methods."""
    inputs = {"model": PRETRAINED_MODEL, "images": PRETRAINED_IMAGES}
    if PRETRAINED_DFTM:
        inputs["trace"] = f"{RESULTS}/pretrained/trace"
    return inputs


# The training-budget study of the trace net (trace_budget section, rules train_trace_budget and trace_budget).
def trace_budget_runs():
    """The nets of the study: one {target, budget, steps} per target and budget, the steps a multiple of
    trace_net.steps as the trace_error data set sees it; none when trace_budget.enabled is false.
    """
    if not config["trace_budget"]["enabled"]:
        return []
    dataset = config["trace_error"]["dataset"]
    steps = dataset_section(config["trace_net"], dataset)["steps"]
    return budget_runs(config["trace_budget"], steps)


def trace_budget_nets():
    """The checkpoints of the study's nets, in the order of trace_budget_runs()."""
    te = config["trace_error"]
    stem = f"{RESULTS}/models/{te['dataset']}_{te['schedule']}_trace"
    return [
        f"{stem}_{run['target']}_steps{run['steps']}.pt" for run in trace_budget_runs()
    ]


def trace_budget_section(wildcards):
    """Param function of train_trace_budget: the trace_net section as the job's dataset and {target} see it,
    with the job's {steps} (budget_section)."""
    section = dataset_section(config["trace_net"], wildcards.dataset)
    return canonical_params(
        budget_section(section, wildcards.target, int(wildcards.steps))
    )


def trace_budget_error_params():
    """The trace_error keys the study's evaluation reads (its data set, schedule, times and test points)."""
    keys = (
        "dataset",
        "schedule",
        "times",
        "t_zero",
        "num_points",
        "num_probes",
        "seed",
    )
    return canonical_params({key: config["trace_error"][key] for key in keys})
