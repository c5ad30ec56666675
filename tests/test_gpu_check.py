"""benchmarks/gpu_check.py (``make gpu-check``) on a machine without CUDA: the CUDA steps are skipped, each
saying so, the exit status is 0 and the folder holds the summary and the environment only. Its parts that run on
a GPU are checked here on files made up for the purpose: the workflow CSV comparison, the bars, the junit table and
the derived workflow config."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from dfcore.config import load_config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402  (benchmarks/gpu_check.py)

SKIPPED_STEPS = [
    "tests",
    "bench-mixture",
    "bench-adjoint",
    "bench-likelihood",
    "bench-trace",
    "bars",
    "workflow",
    "bench-sd",
]


def test_cpu_path_skips_every_cuda_step_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu-check"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE_")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no CUDA even on a GPU machine
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for message in [
        "no CUDA device: skipping the gpu tests (pytest -m gpu tests/test_gpu.py)",
        *(f"no CUDA device: skipping the GPU-sized benchmark {name}" for name in gpu_check.benchmark_commands(out)),
        "no CUDA device: skipping the bars",
        "no CUDA device: skipping the workflow comparison",
    ]:
        assert message in proc.stdout, (message, proc.stdout)
    # one folder: the summary, the environment and the (empty) log folder; nothing was run
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["environment.csv", "logs", "summary.csv"]
    summary = pd.read_csv(out / "summary.csv")
    assert summary["step"].tolist() == SKIPPED_STEPS
    assert set(summary["status"]) == {"skipped"} and set(summary["device"]) == {"cpu"}
    environment = pd.read_csv(out / "environment.csv")
    assert environment.loc[0, "device"] == "cpu" and not environment.loc[0, "cuda_available"]


def _write(folder: Path, name: str, frame: pd.DataFrame) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


@pytest.fixture
def runs(tmp_path):
    """A CPU and a 'GPU' results folder with the same tables, the GPU's numbers off by 1e-5 relative."""
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    nll = pd.DataFrame(
        {
            "method": ["vjp", "dftm"],
            "target": [None, "residual"],  # a text column with an empty cell in both runs
            "nll_nats": [2.5, -1.25],
            "exact": [float("nan"), 3.0],
            "seconds": [1.0, 2.0],
        }
    )
    _write(cpu, "nll/gmm.csv", nll)
    _write(gpu, "nll/gmm.csv", nll.assign(nll_nats=nll["nll_nats"] * (1 + 1e-5), seconds=[9.0, 9.0]))
    report = pd.DataFrame({"path": ["cpu/a.zarr"], "digest": ["aa"], "bytes": [10], "seed": [0]})
    _write(cpu, "report/outputs.csv", report)
    _write(gpu, "report/outputs.csv", report.assign(path="gpu/a.zarr", digest="bb", bytes=11))
    _write(cpu, "logs/train.csv", pd.DataFrame({"x": [1]}))  # logs are not compared
    return cpu, gpu


def test_compare_results_passes_within_tolerance_and_ignores_timings_and_digests(runs):
    cpu, gpu = runs
    table = gpu_check.compare_results(cpu, gpu, "GPU X")
    assert table["ok"].all()
    assert set(zip(table["file"], table["column"])) == {
        ("nll/gmm.csv", "method"),
        ("nll/gmm.csv", "target"),
        ("nll/gmm.csv", "nll_nats"),
        ("nll/gmm.csv", "exact"),
        ("report/outputs.csv", "seed"),
    }
    rel = table.set_index("column").loc["nll_nats", "max_rel_diff"]
    assert rel == pytest.approx(1e-5, rel=1e-6)
    assert set(table["device"]) == {"GPU X"} and set(table["rtol"]) == {gpu_check.RTOL}


@pytest.mark.parametrize(
    ("change", "column"),
    [
        (lambda f: f.assign(nll_nats=f["nll_nats"] * (1 + 2e-3)), "nll_nats"),  # 2e-3 > RTOL
        (lambda f: f.assign(exact=[0.5, 3.0]), "exact"),  # a number where the CPU has NaN
        (lambda f: f.assign(method=["vjp", "hutchinson"]), "method"),
        (lambda f: f.assign(target=["sq_norm", "residual"]), "target"),  # text where the CPU has none
        (lambda f: f.iloc[:1], "*"),  # a row lost
    ],
)
def test_compare_results_fails_outside_tolerance(runs, change, column):
    cpu, gpu = runs
    _write(gpu, "nll/gmm.csv", change(pd.read_csv(cpu / "nll/gmm.csv")))
    table = gpu_check.compare_results(cpu, gpu, "GPU X")
    assert table.loc[~table["ok"].astype(bool), "column"].tolist() == [column]


def test_compare_results_fails_on_a_missing_file(runs):
    cpu, gpu = runs
    (gpu / "nll" / "gmm.csv").unlink()
    table = gpu_check.compare_results(cpu, gpu, "GPU X")
    assert table.loc[~table["ok"].astype(bool), ["file", "kind"]].values.tolist() == [["nll/gmm.csv", "missing"]]


def test_bars_read_from_the_benchmark_csvs(tmp_path):
    _write(
        tmp_path,
        "adjoint.csv",
        pd.DataFrame(
            {"model": ["sd15_4x64x64", "sd15_4x64x64"], "sample_ratio_vjp_over_dfea": [1.6, 1.6], "bar": [1.3] * 2}
        ),
    )
    _write(tmp_path, "mixture.csv", pd.DataFrame({"matmul_bound_fraction": [0.9, 0.25], "bar": [None, 0.3]}))
    step, table = gpu_check.check_bars(tmp_path, "GPU X")
    assert step.status == "failed" and table["met"].tolist() == ["True", "True", "False"]
    assert table["value"].tolist() == [1.6, 1.6, 0.25] and set(table["device"]) == {"GPU X"}
    _write(tmp_path, "mixture.csv", pd.DataFrame({"matmul_bound_fraction": [0.31], "bar": [0.3]}))
    assert gpu_check.check_bars(tmp_path, "GPU X")[0].status == "ok"
    (tmp_path / "adjoint.csv").unlink()
    step, table = gpu_check.check_bars(tmp_path, "GPU X")
    assert step.status == "failed" and "missing" in table["met"].tolist()


def test_junit_rows(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="t" name="test_a[x]" time="0.5"/>'
        '<testcase classname="t" name="test_b" time="1.5"><failure message="output &apos;vjp&apos; off&#10;more"/></testcase>'
        '<testcase classname="t" name="test_c" time="0"><skipped message="no CUDA"/></testcase>'
        "</testsuite></testsuites>"
    )
    table = gpu_check.junit_rows(xml, "GPU X")
    assert table[["test", "outcome", "seconds"]].values.tolist() == [
        ["test_a[x]", "passed", 0.5],
        ["test_b", "failed", 1.5],
        ["test_c", "skipped", 0.0],
    ]
    assert table.loc[1, "message"] == "output 'vjp' off" and set(table["device"]) == {"GPU X"}


def test_derived_workflow_config_is_the_test_config_with_device_and_results(tmp_path):
    path = gpu_check.derived_config("auto", tmp_path / "gpu", tmp_path / "config-gpu.yaml")
    derived, original = load_config(path), load_config(REPO / "config" / "test.yaml")
    assert derived["device"] == "auto" and derived["results"] == str(tmp_path / "gpu")
    assert {k: v for k, v in derived.items() if k not in ("device", "results")} == {
        k: v for k, v in original.items() if k not in ("device", "results")
    }


def test_a_step_past_its_limit_is_ended_with_its_children(tmp_path):
    """A timed-out step (e.g. Snakemake) takes its own children (the jobs) with it."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    status, seconds = gpu_check.run_logged([sys.executable, "-c", script], tmp_path / "step.log", limit=3.0)
    assert status == "timeout" and seconds < 20
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child)
    assert gpu_check.run_logged([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "b.log", 30)[0] == "failed"
    assert gpu_check.run_logged([sys.executable, "-c", "print('x')"], tmp_path / "c.log", 30)[0] == "ok"
    assert (tmp_path / "c.log").read_text().splitlines()[-1] == "x"


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped by its new parent, counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
