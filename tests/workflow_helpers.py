"""Helpers shared by the workflow tests (tests/test_workflow.py) and the cluster test (tests/cluster/):
copy the repository, run Snakemake in the copy, and read which rules a dry run would execute."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = [
    "REPO",
    "SNAKEMAKE",
    "copy_repo",
    "copy_run",
    "planned_jobs",
    "pending_rules",
    "run_snakemake",
]

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

# Never copied into a scratch copy of the repository: environments, outputs, metadata, caches.
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "results", ".snakemake", "__pycache__", ".pytest_cache", "*.egg-info", ".gl", ".whl", "build"
)


def copy_repo(dst: Path) -> Path:
    """Copy the source tree (no results, no .snakemake, no venv) to ``dst``, keeping mtimes."""
    shutil.copytree(REPO, dst, ignore=_IGNORE, symlinks=True)
    return dst


def copy_run(src: Path, dst: Path) -> Path:
    """Copy a scratch repository together with its results and .snakemake metadata, keeping mtimes
    (so the copy is exactly as up to date as ``src``)."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "locks", "incomplete"))
    return dst


def snakemake_env(workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Snakemake in a scratch copy: this venv first on PATH, the copy's dfcore first on
    PYTHONPATH (so that jobs run the copy's code, not the installed checkout's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE_")}
    env["PATH"] = f"{SNAKEMAKE.parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{workdir}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(workdir)
    env["PYTHONHASHSEED"] = "0"
    env.setdefault("MPLBACKEND", "Agg")
    env.update(extra or {})
    return env


def run_snakemake(
    workdir: Path, *args: str, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``snakemake ARGS`` in ``workdir``; on failure (with ``check``) raise with the tail of its output."""
    result = subprocess.run(
        [str(SNAKEMAKE), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or snakemake_env(workdir),
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def planned_jobs(workdir: Path, *args: str, timeout: float = 300) -> dict[str, int]:
    """Rules (with job counts) that ``snakemake -n ARGS`` would run; {} when there is nothing to do.

    Read from the dry run's "Job stats" table; the target rule ``all`` is left out."""
    result = run_snakemake(workdir, "-n", "--cores", "1", *args, timeout=timeout)
    text = result.stdout + "\n" + result.stderr
    if "Nothing to be done" in text:
        return {}
    match = re.search(r"Job stats:\njob\s+count\n[- ]+\n((?:.+\n)+?)total\s+(\d+)", text)
    if match is None:
        raise AssertionError(f"no job table in the dry run:\n{text[-4000:]}")
    jobs = {}
    for line in match.group(1).strip().splitlines():
        name, count = line.split()
        jobs[name] = int(count)
    assert sum(jobs.values()) == int(match.group(2))
    jobs.pop("all", None)
    return jobs


def pending_rules(workdir: Path, *args: str, timeout: float = 300) -> set[str]:
    """Rules with at least one output marked 'update pending' by ``snakemake --summary ARGS``."""
    result = run_snakemake(workdir, "--summary", "--cores", "1", *args, timeout=timeout)
    rules = set()
    for line in result.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) >= 6 and fields[0] != "output_file" and fields[-1] == "update pending":
            rules.add(fields[2])
    return rules


# Columns of a table that hold wall-clock times (different in every run).
TIMING_COLUMNS = ("second", "time_", "timing", "wall", "speedup", "_ms", "per_s", "it_s")


def timing_columns(frame) -> list[str]:
    return [c for c in frame.columns if any(word in c.lower() for word in TIMING_COLUMNS)]


def _same_object(x, y) -> bool:
    import torch

    if isinstance(x, dict):
        return (
            isinstance(y, dict)
            and x.keys() == y.keys()
            and all(any(w in str(k).lower() for w in TIMING_COLUMNS) or _same_object(x[k], y[k]) for k in x)
        )
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(map(_same_object, x, y))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
    return x == y


def same_content(a: Path, b: Path) -> bool:
    """Bit-identical content: Zarr variable values, checkpoint tensors (the bytes of a torch.save archive name
    its temporary file, so they are compared loaded), table values except wall-clock columns, other bytes."""
    import pandas as pd

    from dfcore.experiments.summary import output_digest
    from dfcore.io import load_checkpoint

    if a.suffix == ".csv":
        x, y = pd.read_csv(a), pd.read_csv(b)
        return x.drop(columns=timing_columns(x)).equals(y.drop(columns=timing_columns(y)))
    if a.suffix in (".pt", ".ckpt"):
        return _same_object(load_checkpoint(a), load_checkpoint(b))
    return output_digest(a) == output_digest(b)
