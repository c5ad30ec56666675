"""The workflow reruns exactly what changed, never takes a half-written output as done, fails clearly on
bad inputs, and gives bit-identical results for a fixed seed on the CPU.

One full run of ``config/test.yaml`` in a scratch copy of the repository (module fixture), then each
test works on a dry run of it or on its own copy (``copy_run`` keeps mtimes and .snakemake metadata).
Which rules a change triggers is read from the dry run's job table (``snakemake -n``) and, in one case
per rule family (:data:`PENDING_CHECKED`), checked against ``snakemake --summary``; the expected sets
below are written out by hand, rule by rule. The dry runs of the changed-parameter and changed-script cases are
started together (module fixtures) and run two at a time; each test reads the plan of its own case.
Changes are made to file content, never by touching mtimes alone (small files are checksummed, so a
touch changes nothing, which :func:`test_touching_outputs_without_changing_them_reruns_nothing` checks).

Skip with ``-m 'not workflow'``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from report_tools import report_results
from workflow_helpers import REPO, copy_repo, copy_run, pending_rules, planned_jobs, run_snakemake, same_content

from dfcore.io import load_checkpoint, read_zarr, save_checkpoint, write_zarr

pytestmark = pytest.mark.workflow

CONFIG = "config/test.yaml"
SUMMARY = "results/report/outputs.csv"
RUN_OUTPUT = ".snakemake/full_run_output.txt"  # what Snakemake printed during the fixture's full run
# How the runs of these tests execute jobs: two at a time, each on one thread. The tiny jobs gain little from a
# second thread, and where other work shares the two cores a two-thread job spins and takes several times as long.
# Threads are not params, so this plans and reruns nothing differently.
RUN_OPTIONS = ("--cores", "2", "--max-threads", "1")

# Every rule of the DAG of config/test.yaml, by stage.
DATA = {"make_data", "sd_tiny_pipeline"}
TRAINING = {
    "train_denoiser",
    "train_trace",
    "train_trace_target",
    "adjoint_classifier",
    "sd_trace_net",
}
EVALUATION = {
    "nll",
    "trace_error",
    "ot_table3",
    "ot_convergence",
    "ot_protocols",
    "adjoint_mixture",
    "adjoint_digits",
    "sd_nll",
    "sd_adjoint",
    "likelihood_dataset",
    "likelihood_benchmark",
    "likelihood_table2",
    "likelihood_heldout",
}
REPORT = {"summary"}
ALL_RULES = DATA | TRAINING | EVALUATION | REPORT

# Each rule declares as params exactly the config values its script reads (workflow/rules/common.smk), so a
# changed key reruns the jobs that read it and the jobs downstream of them, nothing else.

# (b) one evaluation parameter changed -> exactly these jobs (rule: job count), never a training or data job.
PARAM_CHANGES = {
    "nll.num_steps": (("nll", "num_steps"), 10, {"nll": 2, "summary": 1}),
    "ot.convergence.steps": (("ot", "convergence", "steps"), [10, 20], {"ot_convergence": 1, "summary": 1}),
    "ot.num_steps": (("ot", "num_steps"), 30, {"ot_table3": 1, "summary": 1}),
    "ot.protocol": (("ot", "protocol"), "official", {"ot_table3": 1, "summary": 1}),
    "ot.protocols.steps": (("ot", "protocols", "steps"), [5, 20], {"ot_protocols": 1, "summary": 1}),
    # read by Table 3 and by protocol 'ours' of the protocols table (the convergence study sets its own updates)
    "ot.update": (("ot", "update"), "euler", {"ot_table3": 1, "ot_protocols": 1, "summary": 1}),
    "adjoint.lambda_samples": (
        ("adjoint", "lambda_samples"),
        2,
        {"adjoint_mixture": 1, "adjoint_digits": 1, "summary": 1},
    ),
    "likelihood.num_points": (
        ("likelihood", "num_points"),
        3,
        {"likelihood_dataset": 1, "likelihood_benchmark": 1, "summary": 1},
    ),
    "likelihood.table2.num_points": (("likelihood", "table2", "num_points"), 8, {"likelihood_table2": 1, "summary": 1}),
    "likelihood.heldout.num_points": (
        ("likelihood", "heldout", "num_points"),
        1,
        {"likelihood_heldout": 1, "summary": 1},
    ),
    # one DF-TM row fewer: Table 2 again (its input list changed), its trace nets stay
    "trace_error.trace_targets": (
        ("trace_error", "trace_targets"),
        ["dataset_posterior", "sq_norm"],
        {"trace_error": 1, "summary": 1},
    ),
}

# (b') one data or training parameter changed -> the jobs that read it and everything downstream of them.
UPSTREAM_PARAM_CHANGES = {
    # checkerboard_VE's and lowrank4_VP's denoisers (digits sets its own steps in denoiser.overrides.digits),
    # their trace nets, and what uses them: nll (the dftm run only), trace_error (the main net and Table 2's
    # sq_norm and residual nets), the likelihood stage (its sq_norm net)
    "denoiser.steps": (
        ("denoiser", "steps"),
        30,
        {
            "train_denoiser": 2,
            "train_trace": 1,
            "train_trace_target": 3,
            "nll": 1,
            "trace_error": 1,
            "likelihood_dataset": 1,
            "likelihood_benchmark": 1,
            "likelihood_table2": 1,
            "summary": 1,
        },
    ),
    # the training budget of every trace net (digits overrides its own steps), and their users
    "trace_net.steps": (
        ("trace_net", "steps"),
        12,
        {
            "train_trace": 1,
            "train_trace_target": 3,
            "nll": 1,
            "trace_error": 1,
            "likelihood_dataset": 1,
            "likelihood_benchmark": 1,
            "likelihood_table2": 1,
            "summary": 1,
        },
    ),
    # states: ode changes only the nets whose target reads no x0 (divergence); the test config has none, so no
    # net retrains, and only the summary (which records the config) reruns
    "trace_net.states": (("trace_net", "states"), "ode", {"summary": 1}),
    # one target's own settings: only the nets of that target (Table 2's residual net) and their users
    "trace_net.targets": (
        ("trace_net", "targets"),
        {"residual": {"steps": 7}},
        {"train_trace_target": 1, "trace_error": 1, "summary": 1},
    ),
    # another main target: the main net retrains (nll dftm uses it) and Table 2 now needs a dataset_posterior net;
    # the residual net it had is no longer an input; the likelihood stage's nets take their target from their job
    "trace_net.target": (
        ("trace_net", "target"),
        "residual",
        {"train_trace": 1, "train_trace_target": 1, "nll": 1, "trace_error": 1, "summary": 1},
    ),
    # an override of one dataset: that dataset's denoiser, the trace net on it and their users only
    "denoiser.overrides.digits.steps": (
        ("denoiser", "overrides", "digits", "steps"),
        12,
        {"train_denoiser": 1, "train_trace_target": 1, "adjoint_digits": 1, "likelihood_heldout": 1, "summary": 1},
    ),
    # one dataset: its store and the nll run on it (gmm / VP / analytic)
    "datasets.gmm.num_samples": (("datasets", "gmm", "num_samples"), 150, {"make_data": 1, "nll": 1, "summary": 1}),
}

# The cases whose plan is also read from ``snakemake --summary`` (an output is 'update pending' when its job has
# a reason to run, the same per-job reason that puts the job in the dry run's table): one per rule family, each
# a separate Snakemake process of its own, so not every case.
PENDING_CHECKED = {
    "nll.num_steps",  # nll
    "ot.update",  # ot: Table 3 and the protocols table
    "adjoint.lambda_samples",  # adjoint
    "likelihood.num_points",  # likelihood
    "trace_error.trace_targets",  # trace error (Table 2)
    "denoiser.steps",  # training, with the evaluation downstream of it
    "datasets.gmm.num_samples",  # data
    "likelihood.py",  # a changed script (one script, two rules)
}

# (c) the code of one rule's script changed -> exactly that rule and its dependants rerun.
SCRIPT_CHANGES = {
    "ot_convergence.py": {"ot_convergence", "summary"},
    "ot_table3.py": {"ot_table3", "summary"},
    "ot_protocols.py": {"ot_protocols", "summary"},
    "trace_error.py": {"trace_error", "summary"},
    "nll.py": {"nll", "summary"},
    "likelihood.py": {"likelihood_dataset", "likelihood_benchmark", "summary"},
    "likelihood_heldout.py": {"likelihood_heldout", "summary"},
    "summary.py": {"summary"},
}

# Wall-clock times differ between runs: outputs under these folders are not compared.
TIMED = ("benchmarks/",)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A scratch copy of the repository after a complete run of the test config. DFCORE_FINISHED_RUN=<dir>
    starts from a copy of an earlier finished scratch run instead, code included (for iterating on these tests)."""
    if os.environ.get("DFCORE_FINISHED_RUN"):
        work = copy_run(Path(os.environ["DFCORE_FINISHED_RUN"]), tmp_path_factory.mktemp("workflow") / "repo")
        return work
    work = copy_repo(tmp_path_factory.mktemp("workflow") / "repo")
    started = time.monotonic()
    result = run_snakemake(work, *RUN_OPTIONS, "--configfile", CONFIG, timeout=900)
    (work / RUN_OUTPUT).write_text(result.stdout + result.stderr)
    print(f"full run of {CONFIG}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return work


@pytest.fixture
def scratch(finished, tmp_path) -> Path:
    """A private copy of the finished run, for tests that change files."""
    return copy_run(finished, tmp_path / "repo")


def _config_with(work: Path, path: tuple[str, ...], value, dst: Path) -> Path:
    config = yaml.safe_load((work / CONFIG).read_text())
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    assert node.get(path[-1]) != value, f"{'.'.join(path)} is already {value!r} in {CONFIG}"
    node[path[-1]] = value
    dst.write_text(yaml.safe_dump(config, sort_keys=False))  # key order matters: dict params are compared by repr
    return dst


# --------------------------------------------------------------------------------------------- #
# the DAG and the rerun rules


def test_the_dag_has_the_expected_rules(finished):
    assert set(planned_jobs(finished, "--configfile", CONFIG, "--forceall")) == ALL_RULES


def test_nothing_to_do_after_a_full_run(finished):
    """(a) no change: the dry run has nothing to do, and the summary has nothing pending."""
    assert planned_jobs(finished, "--configfile", CONFIG) == {}
    assert pending_rules(finished, "--configfile", CONFIG) == set()


def test_touching_outputs_without_changing_them_reruns_nothing(scratch):
    """Newer mtimes alone are not a change: small inputs are compared by checksum."""
    touched = [
        p
        for p in (scratch / "results").rglob("*")
        if p.is_file()
        and p.suffix in (".csv", ".md", ".png")
        and p.stat().st_size < 500_000
        and "report" not in p.parts
    ]
    assert touched
    later = time.time() + 5
    for p in touched:
        os.utime(p, (later, later))
    assert planned_jobs(scratch, "--configfile", CONFIG) == {}


def test_the_pending_checked_cases_exist():
    cases = PARAM_CHANGES.keys() | UPSTREAM_PARAM_CHANGES.keys() | SCRIPT_CHANGES.keys()
    assert PENDING_CHECKED <= cases, PENDING_CHECKED - cases


@pytest.fixture(scope="module")
def dry_runs() -> Iterator[ThreadPoolExecutor]:
    """Runs Snakemake dry runs (``planned_jobs``, ``pending_rules``) two at a time: each is one single-threaded
    process, and there are two cores. None of them writes to the folder it plans."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def _plans(pool: ThreadPoolExecutor, work: Path, config: str, pending: bool) -> tuple[Future, Future | None]:
    """The dry run's plan and, with ``pending``, the rules ``snakemake --summary`` marks 'update pending', both
    started in ``pool``."""
    args = (work, "--configfile", config)
    return pool.submit(planned_jobs, *args), pool.submit(pending_rules, *args) if pending else None


@pytest.fixture(scope="module")
def parameter_plans(finished, dry_runs, tmp_path_factory) -> dict[str, tuple[Future, Future | None]]:
    """The plans of every case of PARAM_CHANGES and UPSTREAM_PARAM_CHANGES (the finished run, the test config with
    that one value changed), all started at once; each test reads its own."""
    folder = tmp_path_factory.mktemp("changed_parameters")
    plans = {}
    for name, (path, value, _) in {**PARAM_CHANGES, **UPSTREAM_PARAM_CHANGES}.items():
        config = _config_with(finished, path, value, folder / f"{name}.yaml")
        plans[name] = _plans(dry_runs, finished, str(config), name in PENDING_CHECKED)
    return plans


@pytest.mark.parametrize("name", sorted(PARAM_CHANGES) + sorted(UPSTREAM_PARAM_CHANGES))
def test_a_changed_parameter_reruns_exactly_its_rules(parameter_plans, name):
    """(b) exactly: the jobs that read the parameter, the jobs downstream of them, and the report; an evaluation
    parameter (PARAM_CHANGES) never reruns a training or data job. In the cases of PENDING_CHECKED,
    ``snakemake --summary`` marks the outputs of the same rules 'update pending'."""
    expected = {**PARAM_CHANGES, **UPSTREAM_PARAM_CHANGES}[name][2]
    planned, pending = parameter_plans[name]
    jobs = planned.result()
    if name in PARAM_CHANGES:
        assert jobs and "summary" in jobs
        assert set(jobs) <= EVALUATION | REPORT, f"not evaluation or report: {set(jobs) - EVALUATION - REPORT}"
    assert set(jobs) == set(expected)
    assert jobs == expected
    if name in PENDING_CHECKED:
        assert pending is not None and pending.result() == set(expected)


def _reversed_keys(value):
    """``value`` with the keys of every mapping, at every depth, in reverse order."""
    if isinstance(value, dict):
        return {key: _reversed_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(item) for item in value]
    return value


def test_reordering_the_keys_of_config_mappings_reruns_nothing(finished, tmp_path):
    """Params are compared by their repr, made canonical: the run's effective config (config/config.yaml and the
    --configfile merged, defaults included, as the run recorded it) with the keys of every mapping reversed plans
    nothing; a changed value in it still reruns its rules."""
    config = _reversed_keys(yaml.safe_load((finished / "results" / "report" / "config.yaml").read_text()))
    reordered = tmp_path / "reordered.yaml"
    reordered.write_text(yaml.safe_dump(config, sort_keys=False))
    assert planned_jobs(finished, "--configfile", str(reordered)) == {}
    config["nll"]["num_steps"] = int(config["nll"]["num_steps"]) + 1
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config, sort_keys=False))
    assert "nll" in planned_jobs(finished, "--configfile", str(changed))


def test_scripts_read_the_config_only_through_their_params():
    """A script reading snakemake.config would escape the params rerun trigger (a change would rerun nothing)."""
    scripts = sorted((REPO / "workflow" / "scripts").glob("*.py"))
    assert scripts
    assert [p.name for p in scripts if "snakemake.config" in p.read_text()] == []


@pytest.fixture(scope="module")
def script_plans(finished, dry_runs, tmp_path_factory) -> dict[str, tuple[Future, Future | None]]:
    """The plans of every case of SCRIPT_CHANGES, each on a copy of the finished run whose script of that name has
    one line added, all started at once; each test reads its own."""
    plans = {}
    for script in SCRIPT_CHANGES:
        work = copy_run(finished, tmp_path_factory.mktemp("changed_script") / "repo")
        path = work / "workflow" / "scripts" / script
        path.write_text(path.read_text() + "\n# changed by test_workflow.py\n")
        plans[script] = _plans(dry_runs, work, CONFIG, script in PENDING_CHECKED)
    return plans


@pytest.mark.parametrize("script", sorted(SCRIPT_CHANGES))
def test_a_changed_script_reruns_its_rule_and_dependants(script_plans, script):
    """(c) the code of one rule's script changed (content, hence mtime): that rule and what depends on it (and, in
    the cases of PENDING_CHECKED, the same rules 'update pending' in ``snakemake --summary``)."""
    planned, pending = script_plans[script]
    assert set(planned.result()) == SCRIPT_CHANGES[script]
    if script in PENDING_CHECKED:
        assert pending is not None and pending.result() == SCRIPT_CHANGES[script]


def test_the_report_builds_with_every_result_captioned(finished):
    """`snakemake --report` after a --configfile run, without repeating it: the Snakefile reads the run's effective
    configuration back from results/report/config.yaml, which the report shows, and every caption is rendered."""
    result = run_snakemake(finished, "--report", "results/report.zip", timeout=300)
    assert "report on the last complete run, configuration results/report/config.yaml" in result.stderr
    results = report_results(finished / "results" / "report.zip")
    captions = {path: re.sub(r"<[^>]+>", "", entry["caption"] or "").strip() for path, entry in results.items()}
    uncaptioned = [path for path, caption in captions.items() if len(caption) < 40]
    assert not uncaptioned, f"report results without a caption: {uncaptioned}"
    # a list or a template left unrendered in a caption
    raw = {path: caption for path, caption in captions.items() if re.search(r"\['|\{\{|\{%|\}\}", caption)}
    assert not raw, raw
    assert "lowrank4 (d = 4)" in captions["results/likelihood/benchmark.csv"]
    assert all(entry["data"] for entry in results.values())
    figures = [path for path, entry in results.items() if entry["mime_type"].startswith("image/")]
    assert figures and all(results[p]["data"][:8] == b"\x89PNG\r\n\x1a\n" for p in figures if p.endswith(".png"))
    assert "results/report/outputs.csv" in results
    config = results["results/report/config.yaml"]
    assert config["category"] == "Configuration"
    assert config["data"] == (finished / "results" / "report" / "config.yaml").read_bytes()


def test_the_effective_configuration_is_recorded(finished):
    """results/report/config.yaml is config/config.yaml extended by config/test.yaml (Snakemake's merge), validated
    with every default filled in."""
    from dfcore.config import validate_config

    def merged(base: dict, extra: dict) -> dict:
        out = dict(base)
        for key, value in extra.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    expected = validate_config(
        merged(
            yaml.safe_load((REPO / "config" / "config.yaml").read_text()), yaml.safe_load((REPO / CONFIG).read_text())
        )
    )
    recorded = yaml.safe_load((finished / "results" / "report" / "config.yaml").read_text())
    assert recorded == expected
    assert recorded["likelihood"]["datasets"] == ["lowrank4"]  # from config/test.yaml


def test_the_run_prints_no_shell_command_and_its_logs_no_known_harmless_warnings(finished):
    output = finished / RUN_OUTPUT
    if not output.exists():
        pytest.skip(f"no {RUN_OUTPUT}: the run was not made by this fixture")
    assert "Shell command: None" not in output.read_text()
    logs = {path: path.read_text() for path in (finished / "results" / "logs").rglob("*.log")}
    assert logs
    for phrase in (
        "UnstableSpecificationWarning",
        "Consolidated metadata is currently not part",
        "requires torchvision",
    ):
        noisy = [str(path) for path, text in logs.items() if phrase in text]
        assert not noisy, f"{phrase!r} in {noisy}"


# --------------------------------------------------------------------------------------------- #
# robustness


def test_a_leftover_temporary_store_is_not_taken_as_done(scratch):
    """A writer killed mid-write leaves only a hidden temporary sibling; the output counts as missing."""
    store = scratch / "results" / "ot" / "fundamental.zarr"
    leftover = store.with_name(f".{store.name}.killed.tmp")
    shutil.copytree(store, leftover)
    for chunk in [p for p in leftover.rglob("c/*") if p.is_file()][::2]:
        chunk.unlink()  # half of the chunks never made it
    shutil.rmtree(store)
    jobs = planned_jobs(scratch, "--configfile", CONFIG)
    assert not store.exists() and leftover.exists()
    assert set(jobs) == {"ot_table3", "summary"}
    with pytest.raises(FileNotFoundError, match=str(store.name)):
        read_zarr(store)


_KILLED_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np, xarray as xr
    from dfcore.io import write_zarr
    path = sys.argv[1]
    small = xr.Dataset({"v": (("i",), np.arange(4.0))})
    write_zarr(small, path)
    print("first", flush=True)
    big = xr.Dataset({"v": (("i", "j"), np.ones((4000, 400)))})
    big["v"].encoding["chunks"] = (1, 400)
    write_zarr(big, path)   # killed while its 4000 chunk files are being written
    print("second", flush=True)
    """
)


def test_a_killed_writer_leaves_the_previous_store_intact(tmp_path):
    target = tmp_path / "out.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "first"
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".out.zarr.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(tmp_path.glob(".out.zarr.*.tmp")), "the second write never started"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ds = read_zarr(target)  # the complete first version, not a mix
    np.testing.assert_array_equal(ds["v"].values, np.arange(4.0))
    assert ds["v"].dims == ("i",)


def test_a_corrupted_input_gives_a_clear_error(scratch):
    store = scratch / "results" / "ot" / "paths.zarr"
    chunks = [p for p in store.rglob("c/*") if p.is_file()]
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(b"\x00garbage")
    result = run_snakemake(
        scratch, "--cores", "1", "--configfile", CONFIG, "--forcerun", "summary", "--retries", "0", check=False
    )
    assert result.returncode != 0
    log = (scratch / "results" / "logs" / "report" / "summary.log").read_text()
    text = result.stderr + result.stdout + log
    assert "cannot read Zarr store" in text and store.name in text, text[-3000:]
    assert not (scratch / SUMMARY).exists() or "garbage" not in (scratch / SUMMARY).read_text()


def test_a_missing_input_gives_a_clear_error(scratch):
    victim = scratch / "results" / "ot" / "table3.csv"
    victim.unlink()
    result = run_snakemake(
        scratch,
        "--cores",
        "1",
        "--configfile",
        CONFIG,
        "--allowed-rules",
        "summary",
        "--forcerun",
        "summary",
        check=False,
    )
    assert result.returncode != 0
    text = result.stderr + result.stdout
    assert "Missing input files" in text and victim.name in text, text[-3000:]


def _chunk_files(store: Path, array: str) -> list[Path]:
    root = store / array / "c"
    return [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())


def test_a_deleted_chunk_of_any_store_is_refused_naming_the_store_and_the_array(finished, tmp_path):
    """Every Zarr store of the run, every array in it: without one of its chunks the store is not read.
    Every rule that reads a store (the data stores in training and evaluation, every store in the
    summary) reads it through read_zarr."""
    stores = sorted(p for p in (finished / "results").rglob("*.zarr") if not p.name.startswith("."))
    names = {str(p.relative_to(finished / "results")) for p in stores}
    assert {"data/checkerboard.zarr", "ot/paths.zarr", "adjoint/digits/trajectories.zarr", "sd/nll/nll.zarr"} <= names
    assert any(n.startswith("trace_error/") for n in names), names
    checked = 0
    for original in stores:
        store = shutil.copytree(original, tmp_path / original.relative_to(finished))
        for array in sorted(
            p.parent.relative_to(store).as_posix() for p in store.rglob("*/zarr.json") if (p.parent / "c").exists()
        ):
            chunk = _chunk_files(store, array)[-1]
            saved = chunk.read_bytes()
            chunk.unlink()
            with pytest.raises(ValueError) as err:
                read_zarr(store)
            assert str(store) in str(err.value) and f"array {array!r}" in str(err.value), str(err.value)
            chunk.write_bytes(saved)
            checked += 1
        read_zarr(store)
    assert checked >= 20, checked


def test_a_deleted_chunk_of_a_data_store_fails_training_with_the_store_named(scratch):
    store = scratch / "results" / "data" / "checkerboard.zarr"
    (store / "x" / "c" / "0" / "0").unlink()
    target = "results/models/checkerboard_VE_denoiser.pt"
    result = run_snakemake(
        scratch,
        "--cores",
        "1",
        "--configfile",
        CONFIG,
        "--force",
        target,
        "--allowed-rules",
        "train_denoiser",
        "--retries",
        "0",
        check=False,
    )
    assert result.returncode != 0
    log = (scratch / "results" / "logs" / "train" / "checkerboard_VE_denoiser.log").read_text()
    assert "Traceback (most recent call last):" in log, log[-3000:]
    named = store.relative_to(scratch)  # as the rule's input names it
    assert f"Zarr store {named}: array 'x' is missing 1 of 1 chunks (first: c/0/0)" in log, log[-3000:]
    assert "loss=nan" not in log


def test_a_deleted_chunk_of_the_table2_store_fails_the_summary(scratch):
    (store,) = (scratch / "results" / "trace_error").glob("*.zarr")
    chunk = _chunk_files(store, "rel_error")[0]
    chunk.unlink()
    result = run_snakemake(
        scratch,
        "--cores",
        "1",
        "--configfile",
        CONFIG,
        "--forcerun",
        "summary",
        "--allowed-rules",
        "summary",
        "--retries",
        "0",
        check=False,
    )
    assert result.returncode != 0
    log = (scratch / "results" / "logs" / "report" / "summary.log").read_text()
    assert "Traceback (most recent call last):" in log, log[-3000:]
    assert f"Zarr store {store.relative_to(scratch)}: array 'rel_error' is missing" in log, log[-3000:]
    assert not (scratch / SUMMARY).exists()


def test_damaged_files_give_errors_that_name_them(tmp_path):
    broken = tmp_path / "model.pt"
    save_checkpoint({"w": np.arange(3).tolist()}, broken)
    broken.write_bytes(broken.read_bytes()[:20])
    with pytest.raises(ValueError, match="model.pt"):
        load_checkpoint(broken)
    with pytest.raises(FileNotFoundError, match="absent.zarr"):
        read_zarr(tmp_path / "absent.zarr")
    half = tmp_path / "half.zarr"
    write_zarr(xr.Dataset({"v": (("i",), np.arange(3.0))}), half)
    for meta in half.rglob("zarr.json"):
        meta.write_text("{not json")
    with pytest.raises(ValueError, match="half.zarr"):
        read_zarr(half)


# Seeded jobs forced to run again (with `--force`, only these jobs): data, a denoiser's training, the
# classifier's training, Alg. 2. Their outputs must be bit-identical (tables: except wall-clock columns).
RERUN_TARGETS = [
    "results/data/gmm.zarr",
    "results/models/checkerboard_VE_denoiser.pt",
    "results/adjoint/classifier.csv",
    "results/ot/table3.csv",
]


def test_a_fixed_seed_gives_bit_identical_results(scratch, finished):
    """The seeded jobs again, same seed, same CPU: the same bytes in every Zarr store, checkpoint and figure
    they write, and the same values in every table except its wall-clock columns."""
    before = {p.relative_to(scratch): p.stat().st_mtime_ns for p in (scratch / "results").rglob("*") if p.is_file()}
    run_snakemake(scratch, *RUN_OPTIONS, "--configfile", CONFIG, "--force", *RERUN_TARGETS, timeout=900)
    rewritten = sorted(
        {
            Path(
                *rel.parts[
                    : next((i + 1 for i, part in enumerate(rel.parts) if part.endswith(".zarr")), len(rel.parts))
                ]
            )
            for rel, mtime in before.items()
            if (scratch / rel).exists() and (scratch / rel).stat().st_mtime_ns != mtime and "logs" not in rel.parts
        }
    )
    for target in RERUN_TARGETS:
        assert Path(target) in rewritten, f"{target} was not written again"
    differing = [
        str(rel)
        for rel in rewritten
        if not any(word in str(rel) for word in TIMED)
        and rel.suffix not in (".md",)
        and not same_content(finished / rel, scratch / rel)
    ]
    assert not differing, f"outputs that differ between two runs with the same seed: {differing}"
