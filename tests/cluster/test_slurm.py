"""Jobs of the tiny test config through a real single-node SLURM cluster with ``--profile profiles/slurm``.

Run by ``make test-cluster`` (which installs Debian's slurm and munge packages first); skipped
unless ``DFCORE_TEST_CLUSTER=1``, since it starts daemons as root. The cluster runs the targets that
the local comparison uses (:data:`LOCAL_TARGETS`: two data stores, a denoiser's training, the
classifier's training, Alg. 2; five jobs), not the whole workflow. It asserts that

- every job went through ``sbatch`` (a SLURM job id per job in the Snakemake log, and the SLURM log
  files that the executor keeps for them), a data job and a training job among them, and SLURM saw
  each one complete;
- the outputs are the same as those of a local run: the seeded jobs are run again locally in a copy
  of the cluster's run and give the same content (Zarr values, checkpoint bytes, table values except
  wall-clock columns);
- the daemons are gone afterwards.

The cluster has no GPUs (no GRES), so the CI profile is ``profiles/slurm`` with the GPU requests and
partition/account placeholders replaced (see :func:`ci_profile`); everything else, the per-rule memory
and runtime requests included, is the user's profile as shipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for workflow_helpers

from minicluster import PARTITION, missing_daemons, slurm_cluster  # noqa: E402
from workflow_helpers import REPO, copy_repo, copy_run, run_snakemake, same_content, snakemake_env  # noqa: E402

# Opt-in (it starts daemons as root). Once asked for, a missing package or user is a failure, not a skip,
# so that CI cannot pass without having run it.
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        os.environ.get("DFCORE_TEST_CLUSTER") != "1", reason="set DFCORE_TEST_CLUSTER=1 (make test-cluster)"
    ),
]


def test_prerequisites():
    assert not missing_daemons(), f"not installed: {missing_daemons()} (make test-cluster installs them)"
    assert os.geteuid() == 0, "the test cluster runs its daemons as root"


CONFIG = "config/test.yaml"
TIMEOUT = 900  # seconds for the jobs on the cluster
GPU_KEYS = ("gpu", "gpu_model", "gres", "slurm_partition", "slurm_account")


def _node_limits() -> tuple[int, int]:
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return int(fields["CPUs"]), int(fields["RealMemory"]) - 512


def ci_profile(dst: Path) -> Path:
    """profiles/slurm/config.yaml, adapted to the CI cluster: no GPU requests (no GRES here), the CI
    partition, no account, requests capped to the node, quick status checks, SLURM logs kept."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    cpus, mem_mb = _node_limits()

    def adapt(resources: dict) -> dict:
        res = {k: v for k, v in resources.items() if k not in GPU_KEYS}
        if "cpus_per_task" in res:
            res["cpus_per_task"] = min(int(res["cpus_per_task"]), cpus)
        if "mem_mb" in res:
            res["mem_mb"] = min(int(res["mem_mb"]), mem_mb)
        return res

    profile["default-resources"] = {**adapt(profile.get("default-resources", {})), "slurm_partition": PARTITION}
    profile["set-resources"] = {rule: adapt(res) for rule, res in profile.get("set-resources", {}).items()}
    profile.update(
        {
            "jobs": 4,
            "retries": 0,
            "latency-wait": 10,
            "slurm-no-account": True,
            "slurm-init-seconds-before-status-checks": 2,
            "seconds-between-status-checks": 3,
            "slurm-keep-successful-logs": True,
        }
    )
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dst


# The targets of the SLURM run (with the data store the denoiser trains on, five jobs). The seeded jobs that write
# them are run again locally (``--force``, only these jobs) in a copy of the cluster's run: data, a denoiser's
# training, the classifier's training, Alg. 2; their outputs must equal the cluster's.
LOCAL_TARGETS = [
    "results/data/gmm.zarr",
    "results/models/checkerboard_VE_denoiser.pt",
    "results/adjoint/classifier.csv",
    "results/ot/table3.csv",
]


def test_workflow_on_slurm_matches_a_local_run(tmp_path):
    remote = copy_repo(tmp_path / "remote")
    profile = ci_profile(tmp_path / "profile")
    with slurm_cluster(tmp_path / "cluster") as cluster:
        env = snakemake_env(remote, {"SLURM_CONF": cluster.env["SLURM_CONF"]})
        env["PATH"] = f"{cluster.bin}{os.pathsep}{env['PATH']}"
        started = time.monotonic()
        result = run_snakemake(
            remote,
            "--profile",
            str(profile),
            "--workflow-profile",
            "none",
            "--configfile",
            CONFIG,
            "--",
            *LOCAL_TARGETS,
            timeout=TIMEOUT,
            env=env,
            check=False,
        )
        log = result.stdout + result.stderr
        elapsed = time.monotonic() - started
        squeue = subprocess.run(
            ["squeue", "-h", "-t", "all", "-o", "%i %T %j"], env=cluster.env, capture_output=True, text=True, timeout=30
        ).stdout
        if result.returncode != 0:
            slurm_logs = "\n".join(
                p.read_text(errors="replace")[-1500:] for p in (remote / ".snakemake" / "slurm_logs").rglob("*.log")
            )
            pytest.fail(
                f"workflow failed on SLURM ({result.returncode}):\n{log[-6000:]}\n--- slurm logs:\n{slurm_logs[-6000:]}\n"
                f"--- slurmctld:\n{cluster.log('slurmctld')[-3000:]}"
            )
    print(f"jobs on SLURM: {elapsed:.0f} s", file=sys.stderr)

    # every job went through sbatch (the targets need no local rule), and SLURM saw each one complete
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))
    assert submitted, f"no job went through sbatch:\n{log[-4000:]}"
    states = dict(line.split()[:2] for line in squeue.splitlines() if line.strip())
    # squeue forgets a job MinJobAge seconds after it ended; those still listed must have completed
    assert all(states.get(jobid, "COMPLETED") == "COMPLETED" for jobid in submitted.values()), (submitted, squeue)
    assert states.get(max(submitted.values(), key=int)) == "COMPLETED", squeue
    assert len(list((remote / ".snakemake" / "slurm_logs").rglob("*.log"))) >= len(submitted)
    done = re.search(r"(\d+) of (\d+) steps \(100%\) done", log)
    assert done, log[-3000:]
    local_rules = set(re.findall(r"^localrule (\w+):", log, re.MULTILINE))
    assert not local_rules, f"rules that did not go through sbatch: {local_rules}"
    assert len(submitted) == int(done.group(2)), f"{len(submitted)} of {done.group(2)} jobs went through sbatch"
    rules = set(re.findall(r"^rule (\w+):", log, re.MULTILINE))
    assert {"make_data", "train_denoiser"} <= rules, f"no data or no training job on SLURM: {rules}"

    # the seeded jobs again, locally: the same outputs as on the cluster
    local = copy_run(remote, tmp_path / "local")
    run_snakemake(local, "--cores", "2", "--configfile", CONFIG, "--force", *LOCAL_TARGETS, timeout=TIMEOUT)
    rewritten = sorted(
        {
            Path(
                *rel.parts[
                    : next((i + 1 for i, part in enumerate(rel.parts) if part.endswith(".zarr")), len(rel.parts))
                ]
            )
            for rel in (p.relative_to(local) for p in (local / "results").rglob("*") if p.is_file())
            if "logs" not in rel.parts
            and (remote / rel).exists()
            and (local / rel).stat().st_mtime_ns != (remote / rel).stat().st_mtime_ns
        }
    )
    for target in LOCAL_TARGETS:
        assert Path(target) in rewritten, f"{target} was not written again locally"
    compared = 0
    for rel in rewritten:
        if rel.suffix in (".md",):
            continue  # a rendering of the CSV beside it, timings included
        assert same_content(local / rel, remote / rel), f"{rel}: the local run differs from the SLURM run"
        compared += 1
    assert compared >= len(LOCAL_TARGETS)


def test_daemons_are_stopped(tmp_path):
    with slurm_cluster(tmp_path / "cluster") as cluster:
        pids = {name: proc.pid for name, proc in cluster.procs.items()}
        assert set(pids) == {"munged", "slurmctld", "slurmd"}
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), name
