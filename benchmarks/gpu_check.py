"""One command that proves the library, the workflow and the benchmarks on a GPU (``make gpu-check``).

In this order, each step with its own time limit inside the overall budget (``--budget``, 470 s by default;
``make gpu-check`` adds ``timeout 480`` around it):

1. ``tests``: ``pytest -m gpu tests/test_gpu.py``: every case on CUDA against the same call on the CPU
   (junit.xml, one row per test in tests.csv, every measured relative error in errors.csv);
2. the benchmarks in their GPU-sized mode, one CSV each under ``benchmarks/`` (``sd`` last, see 5):
   ``mixture`` (analytic Dirac-mixture trace at N = 1e5, d = 784 against the matmul's FLOP rate),
   ``adjoint`` (DF-EA against VJP per adjoint step and per guided sample, random SD-1.5-sized UNet, float16,
   4x64x64 latents), ``likelihood`` (vjp / dftm ratios at batch 128), ``trace`` (DF-TM against the exact VJP
   trace, all 4096 VJPs of the UNet) and ``sd`` (DF-TM against VJP and DF-EA against VJP at SD size, float16);
3. ``bars``: the two bars read from those CSVs (DF-EA >= 1.3x faster than VJP per guided sample; the mixture trace
   at >= 30 % of the matmul's rate);
4. ``workflow``: ``config/test.yaml`` end to end with ``device: auto`` (results in ``workflow/gpu/``), its CSVs
   compared with a CPU run of the same config (``workflow/cpu/``: made first, or reused from ``--cpu-workflow``
   or an earlier complete run in that folder); the comparison is ``workflow/compare.csv``;
5. the ``sd`` benchmark, which no bar needs, in the time that is left.

Everything goes under one folder (``--out``, default ``results/gpu-check/``): ``summary.csv`` (one row per step),
``environment.csv``, ``tests/``, ``benchmarks/``, ``workflow/`` and ``logs/`` (each step's output). Every CSV the
check writes has a ``device`` column (``torch.cuda.get_device_name()``, or ``cpu``); the workflow's own outputs
under ``workflow/cpu`` and ``workflow/gpu`` are the rules' files, untouched.

Without CUDA the CUDA steps are skipped, each saying so (``no CUDA device: skipping ...``), and the exit status is
0. ``--cpu-reference-only`` makes just the CPU run of the workflow (on a CPU machine, before the GPU is lent).
The exit status is 1 when a step fails: a test, a benchmark, a bar, or a workflow CSV outside the tolerance.

    python benchmarks/gpu_check.py [--out results/gpu-check] [--cpu-workflow DIR] [--skip-workflow]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
PYTHON = sys.executable
SNAKEMAKE = str(Path(PYTHON).with_name("snakemake")) if Path(PYTHON).with_name("snakemake").exists() else "snakemake"
TEST_CONFIG = REPO / "config" / "test.yaml"

# Workflow CSVs: numeric columns agree when |gpu - cpu| <= ATOL * (largest |cpu| of the column) + RTOL * |cpu|.
# The networks are float32 and trained for 10-40 Adam steps on both devices from the same CPU-drawn batches and
# noise; rounding differences (~1e-7 relative per step, from other reduction orders) pass through the training
# steps and the evaluations (ODE solves of 4-20 steps, DDIM chains), which amplify them by up to ~1e2-1e3:
# ~1e-4 relative. float64 stages (OT, exact mixtures) agree to ~1e-12. Bar: 1e-3 relative, 1e-6 of the column's
# scale absolute (for entries near zero).
RTOL, ATOL = 1e-3, 1e-6
# Columns never compared: wall-clock times and memory (differ between any two runs), the host and device, file
# sizes and content digests (a digest changes with the last bit), provenance.
IGNORED_WORDS = (
    "second",
    "time_",
    "timing",
    "wall",
    "speedup",
    "_ms",
    "per_s",
    "it_s",
    "mem",
    "rss",
    "device",
    "host",
    "thread",
    "cpu",
    "digest",
    "bytes",
    "git_revision",
    "path",
)

LAST = ("sd",)  # benchmarks run after the workflow comparison
BARS = {
    "adjoint": ("sample_ratio_vjp_over_dfea", "DF-EA >= 1.3x faster than VJP per guided sample (SD-1.5 UNet, 4x64x64)"),
    "mixture": ("matmul_bound_fraction", "analytic mixture trace >= 30 % of the matmul's FLOP rate (N = 1e5, d = 784)"),
}


@dataclass
class Step:
    """One row of summary.csv."""

    step: str
    status: str  # ok, failed, skipped, timeout
    seconds: float
    detail: str


def device_name(cuda: bool) -> str:
    import torch

    return torch.cuda.get_device_name() if cuda else "cpu"


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` through a temporary file (a cut-off run leaves no half-written CSV)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


class Budget:
    """The seconds left of the overall budget; a step gets its own limit or what is left, whichever is less."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def limit(self, step_limit: float) -> float:
        return max(0.0, min(step_limit, self.left()))


def run_logged(cmd: Sequence[str], log: Path, limit: float, env: dict[str, str] | None = None) -> tuple[str, float]:
    """Run ``cmd`` in the repository root with its output in ``log``; return (ok | failed | timeout, seconds)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if limit < 1:
        return "timeout", 0.0
    with log.open("w") as handle:
        handle.write("$ " + " ".join(cmd) + "\n")
        handle.flush()
        # a session of its own, so that a timeout ends the command's children too (Snakemake's jobs)
        proc = subprocess.Popen(
            list(cmd), cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            returncode = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return "timeout", time.monotonic() - start
    return ("ok" if returncode == 0 else "failed"), time.monotonic() - start


def child_env(**extra: str) -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH (the checkout's dfcore, not an installed one)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO)
    env.setdefault("MPLBACKEND", "Agg")
    env.update(extra)
    return env


def tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(line.strip() for line in text[-lines:])


# ---------------------------------------------------------------------------------------------------------------------
# 1. the gpu tests


def junit_rows(xml_path: Path, device: str) -> pd.DataFrame:
    """One row per test case of a pytest junit XML file: test, outcome (passed/failed/error/skipped), seconds,
    message, device."""
    rows = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "").splitlines()[0][:300] if child.get("message") else ""
        rows.append(
            {
                "test": case.get("name", ""),
                "outcome": outcome,
                "seconds": float(case.get("time", "nan")),
                "message": message,
                "device": device,
            }
        )
    return pd.DataFrame(rows, columns=["test", "outcome", "seconds", "message", "device"])


def run_tests(out: Path, device: str, budget: Budget) -> Step:
    folder = out / "tests"
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / "junit.xml"
    cmd = [
        PYTHON,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "tests/test_gpu.py",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
    ]
    env = child_env(DFCORE_GPU_ERRORS_CSV=str(folder / "errors.csv"))
    status, seconds = run_logged(cmd, out / "logs" / "tests.log", budget.limit(180), env)
    detail = tail(out / "logs" / "tests.log", 1)
    if xml.exists():
        table = junit_rows(xml, device)
        write_csv(table, folder / "tests.csv")
        counts = table["outcome"].value_counts().to_dict()
        detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        if counts.get("skipped") == len(table) and status == "ok":
            status, detail = "failed", f"every gpu test skipped: {detail}"
    return Step("tests", status, seconds, detail)


# ---------------------------------------------------------------------------------------------------------------------
# 2. the benchmarks, GPU-sized


def benchmark_commands(folder: Path) -> dict[str, tuple[list[str], float]]:
    """The GPU-sized benchmarks: name -> (command, time limit in seconds)."""

    def bench(script: str, *args: str) -> list[str]:
        return [PYTHON, str(BENCH / script), *args, "--out", str(folder / f"{script[6:-3]}.csv")]

    return {
        "mixture": (bench("bench_mixture.py", "--gpu", "--device", "cuda"), 90),
        "adjoint": (bench("bench_adjoint.py", "--gpu", "--device", "cuda", "--repeats", "2"), 150),
        "likelihood": (bench("bench_likelihood.py", "--gpu", "--device", "cuda", "--threads", "4"), 90),
        "trace": (bench("bench_trace.py", "--gpu", "--device", "cuda", "--threads", "4", "--repeats", "3"), 120),
        "sd": (bench("bench_sd.py", "--sd-size", "--dtype", "float16", "--device", "cuda", "--repeats", "2"), 120),
    }


def check_bars(folder: Path, device: str) -> tuple[Step, pd.DataFrame]:
    """The bars from benchmarks/adjoint.csv and benchmarks/mixture.csv (rows with a ``bar``)."""
    rows = []
    for name, (column, what) in BARS.items():
        path = folder / f"{name}.csv"
        if not path.exists():
            rows.append({"bar": what, "file": path.name, "value": math.nan, "threshold": math.nan, "met": "missing"})
            continue
        frame = pd.read_csv(path)
        for _, row in frame[frame["bar"].notna()].iterrows():
            rows.append(
                {
                    "bar": what,
                    "file": path.name,
                    "value": float(row[column]),
                    "threshold": float(row["bar"]),
                    "met": str(float(row[column]) >= float(row["bar"])),
                }
            )
    table = pd.DataFrame(rows, columns=["bar", "file", "value", "threshold", "met"]).assign(device=device)
    ok = len(table) > 0 and bool((table["met"] == "True").all())
    detail = "; ".join(f"{r.file}: {r.value:.3g} (bar {r.threshold:g}) {r.met}" for r in table.itertuples())
    return Step("bars", "ok" if ok else "failed", 0.0, detail), table


# ---------------------------------------------------------------------------------------------------------------------
# 3. the workflow, CPU against GPU


def derived_config(device: str, results: Path, path: Path) -> Path:
    """config/test.yaml with ``device`` and ``results`` replaced, written to ``path``."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["device"] = device
    config["results"] = str(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# config/test.yaml with device: {device} and results: {results} (written by benchmarks/gpu_check.py)\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def run_workflow(device: str, results: Path, out: Path, label: str, limit: float, cores: str) -> tuple[str, float]:
    """``snakemake --cores CORES`` on the derived config; a ``.complete`` file marks a finished run."""
    config = derived_config(device, results, out / "workflow" / f"config-{label}.yaml")
    marker = results.parent / f"{results.name}.complete"
    marker.unlink(missing_ok=True)
    # --nolock: the runs write only under their own results folder, one at a time; a lock left by a killed run
    # (a step past its limit) would otherwise refuse every later run in this checkout
    cmd = [SNAKEMAKE, "--cores", cores, "--configfile", str(config), "--rerun-incomplete", "--nolock"]
    status, seconds = run_logged(cmd, out / "logs" / f"workflow-{label}.log", limit, child_env())
    if status == "ok":
        marker.write_text(f"{label} run of {TEST_CONFIG.name} finished in {seconds:.0f} s\n")
    return status, seconds


def ignored(column: str) -> bool:
    return any(word in column.lower() for word in IGNORED_WORDS)


def compare_tables(reference: pd.DataFrame, other: pd.DataFrame) -> list[dict]:
    """Column by column: the non-ignored columns of ``other`` against ``reference``. Numeric columns agree within
    RTOL / ATOL (and NaN where the reference has NaN), others exactly. One dict per column."""
    rows = []
    if list(reference.columns) != list(other.columns) or len(reference) != len(other):
        return [
            {
                "column": "*",
                "kind": "layout",
                "max_abs_diff": math.nan,
                "max_rel_diff": math.nan,
                "ok": False,
                "note": f"columns {list(reference.columns)} x {len(reference)} rows against "
                f"{list(other.columns)} x {len(other)} rows",
            }
        ]
    for column in reference.columns:
        if ignored(column):
            continue
        ref, out = reference[column], other[column]
        numeric = pd.api.types.is_numeric_dtype(ref) and pd.api.types.is_numeric_dtype(out)
        numeric = numeric and not pd.api.types.is_bool_dtype(ref)
        if not numeric:
            same = bool(((ref.astype(object) == out.astype(object)) | (ref.isna() & out.isna())).all())
            rows.append(
                {"column": column, "kind": "exact", "max_abs_diff": math.nan, "max_rel_diff": math.nan, "ok": same}
            )
            continue
        a, b = ref.to_numpy(dtype=float), out.to_numpy(dtype=float)
        nan_a, nan_b = pd.isna(a), pd.isna(b)
        both = ~nan_a & ~nan_b
        diff = abs(a[both] - b[both])
        scale = float(abs(a[both]).max()) if both.any() else 0.0
        rel = diff / abs(a[both]).clip(min=1e-300) if both.any() else diff
        within = bool((diff <= ATOL * scale + RTOL * abs(a[both])).all()) and bool((nan_a == nan_b).all())
        rows.append(
            {
                "column": column,
                "kind": "numeric",
                "max_abs_diff": float(diff.max()) if diff.size else 0.0,
                "max_rel_diff": float(rel.max()) if diff.size else 0.0,
                "ok": within,
            }
        )
    return rows


def compare_results(cpu: Path, gpu: Path, device: str) -> pd.DataFrame:
    """Every CSV of the CPU run against the same file of the GPU run: one row per (file, compared column), with the
    tolerance and the GPU's device name; a file missing from the GPU run is one failed row."""
    rows = []
    for path in sorted(cpu.rglob("*.csv")):
        rel = path.relative_to(cpu)
        if "logs" in rel.parts:
            continue
        other = gpu / rel
        if not other.exists():
            rows.append({"file": str(rel), "column": "*", "kind": "missing", "ok": False})
            continue
        for row in compare_tables(pd.read_csv(path), pd.read_csv(other)):
            rows.append({"file": str(rel), **row})
    columns = ["file", "column", "kind", "max_abs_diff", "max_rel_diff", "ok", "note"]
    table = pd.DataFrame(rows).reindex(columns=columns)
    return table.assign(rtol=RTOL, atol_of_scale=ATOL, device=device)


# ---------------------------------------------------------------------------------------------------------------------


def environment(device: str, cuda: bool) -> pd.DataFrame:
    import torch

    return pd.DataFrame(
        [
            {
                "device": device,
                "cuda_available": cuda,
                "torch": torch.__version__,
                "cuda_runtime": torch.version.cuda or "",
                "gpu_count": torch.cuda.device_count() if cuda else 0,
                "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            }
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/gpu-check", help="the one folder everything goes to")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all steps together (470; no limit with --cpu-reference-only)",
    )
    parser.add_argument("--cpu-workflow", default=None, help="results folder of a CPU run of config/test.yaml")
    parser.add_argument("--cpu-reference-only", action="store_true", help="only the CPU run of the workflow")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-benchmarks", action="store_true")
    parser.add_argument("--skip-workflow", action="store_true")
    parser.add_argument("--cores", default="all", help="snakemake --cores for the workflow runs")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    device = device_name(cuda)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    write_csv(environment(device, cuda), out / "environment.csv")
    budget = Budget(args.budget if args.budget is not None else (math.inf if args.cpu_reference_only else 470.0))
    steps: list[Step] = []

    def say(step: Step) -> None:
        steps.append(step)
        if step.status == "skipped":
            print(f"[{step.step}] {step.detail}", flush=True)
        else:
            print(f"[{step.step}] {step.status} ({step.seconds:.0f} s) {step.detail}", flush=True)

    def skip(name: str, why: str) -> None:
        say(Step(name, "skipped", 0.0, why))

    cpu_results = Path(args.cpu_workflow).resolve() if args.cpu_workflow else out / "workflow" / "cpu"
    if args.cpu_reference_only:
        status, seconds = run_workflow("cpu", cpu_results, out, "cpu", budget.limit(1e9), args.cores)
        say(Step("workflow-cpu", status, seconds, str(cpu_results)))
    else:
        # 1. tests
        if args.skip_tests:
            skip("tests", "--skip-tests")
        elif not cuda:
            skip("tests", "no CUDA device: skipping the gpu tests (pytest -m gpu tests/test_gpu.py)")
        else:
            say(run_tests(out, device, budget))

        # 2. benchmarks (sd, beyond the bars, runs last: after the workflow, in what time is left)
        bench_dir = out / "benchmarks"
        commands = benchmark_commands(bench_dir)

        def bench(name: str) -> None:
            cmd, limit = commands[name]
            if args.skip_benchmarks:
                skip(f"bench-{name}", "--skip-benchmarks")
            elif not cuda:
                skip(f"bench-{name}", f"no CUDA device: skipping the GPU-sized benchmark {name}")
            else:
                log = out / "logs" / f"bench-{name}.log"
                status, seconds = run_logged(cmd, log, budget.limit(limit), child_env())
                detail = str(bench_dir / f"{name}.csv") if status == "ok" else tail(log)
                say(Step(f"bench-{name}", status, seconds, detail))

        for name in commands:
            if name not in LAST:
                bench(name)
        if cuda and not args.skip_benchmarks:
            bar_step, bar_table = check_bars(bench_dir, device)
            write_csv(bar_table, out / "bars.csv")
            say(bar_step)
        else:
            skip("bars", "no CUDA device: skipping the bars (no GPU benchmarks)" if not cuda else "--skip-benchmarks")

        # 3. workflow
        gpu_results = out / "workflow" / "gpu"
        if args.skip_workflow:
            skip("workflow", "--skip-workflow")
        elif not cuda:
            skip("workflow", "no CUDA device: skipping the workflow comparison (device: auto would run on the CPU)")
        else:
            reference_done = (cpu_results.parent / f"{cpu_results.name}.complete").exists() or (
                args.cpu_workflow is not None and (cpu_results / "report" / "outputs.csv").exists()
            )
            if not reference_done:
                status, seconds = run_workflow("cpu", cpu_results, out, "cpu", budget.limit(300), args.cores)
                say(Step("workflow-cpu", status, seconds, str(cpu_results)))
                reference_done = status == "ok"
            else:
                say(Step("workflow-cpu", "ok", 0.0, f"reused {cpu_results}"))
            if reference_done:
                status, seconds = run_workflow("auto", gpu_results, out, "gpu", budget.limit(300), args.cores)
                detail = tail(out / "logs" / "workflow-gpu.log")
                if status == "ok":
                    table = compare_results(cpu_results, gpu_results, device)
                    write_csv(table, out / "workflow" / "compare.csv")
                    bad = table[~table["ok"].astype(bool)]
                    status = "ok" if bad.empty else "failed"
                    detail = f"{len(table)} columns of {table['file'].nunique()} CSVs compared, {len(bad)} outside"
                say(Step("workflow", status, seconds, detail))
            else:
                skip("workflow", "no CPU reference run")

        # 4. what the bars do not need
        for name in LAST:
            bench(name)

    summary = pd.DataFrame([vars(s) for s in steps]).assign(device=device)
    write_csv(summary, out / "summary.csv")
    print(f"wrote {out / 'summary.csv'}")
    return 1 if any(s.status in ("failed", "timeout") for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
