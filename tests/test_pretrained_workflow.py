"""The workflow's ``pretrained`` stage on tiny diffusers pipeline folders saved with save_pretrained (a UNet2DModel
DDPM and a conditional UNet2DConditionModel) and a folder of three 8x8 PNG images, in a scratch copy of the
repository: the bits/dim table agrees with the command line, and a finished run plans nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_pipelines import T, tiny_conditional_unet, tiny_scheduler, tiny_unet, write_images
from workflow_helpers import copy_repo, planned_jobs, run_snakemake

from dfcore.cli import main

TARGETS = [f"results/pretrained/{name}" for name in ("bpd.csv", "summary.json", "bpd.png")]
TINY = {
    "trace": {"block_out_channels": [8, 16], "norm_num_groups": 4, "steps": 3, "batch_size": 4, "warmup_steps": 0},
    "measure": {"methods": ["vjp", "hutchinson", "dftm"], "solver": "rk4", "num_steps": 4, "dtype": "float64"},
}


def _config(path, results, **pretrained):
    """A config file with the tiny ``pretrained`` section (its keys updated by ``pretrained``)."""
    section = {"enabled": True, **TINY, **pretrained}
    path.write_text(yaml.safe_dump({"device": "cpu", "results": results, "pretrained": section}))
    return str(path)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A scratch copy of the repository with the two pipeline folders and the image folder under resources/."""
    from diffusers import DDPMPipeline

    work = copy_repo(tmp_path_factory.mktemp("pretrained_workflow") / "repo")
    DDPMPipeline(unet=tiny_unet(), scheduler=tiny_scheduler()).save_pretrained(str(work / "resources" / "model"))
    tiny_conditional_unet().save_pretrained(str(work / "resources" / "cond_model" / "unet"))
    tiny_scheduler().save_pretrained(str(work / "resources" / "cond_model" / "scheduler"))
    write_images(work / "resources" / "images")
    write_images(work / "resources" / "train_images", count=4)
    return work


def _cond_targets() -> list[str]:
    return [target.replace("results/", "results_cond/") for target in TARGETS]


@pytest.fixture(scope="module")
def runs(scratch, tmp_path_factory) -> Iterator[dict[str, tuple[str, Future]]]:
    """The stage on the DDPM folder (results/) and on the conditional UNet (results_cond/): the config file of
    each and its Snakemake run, both started at once (one core each; they share no output)."""
    folder = tmp_path_factory.mktemp("pretrained_configs")
    uncond = _config(
        folder / "uncond.yaml",
        "results",
        model="resources/model",
        images="resources/images",
        trace_images="resources/train_images",
    )
    measure = {**TINY["measure"], "methods": ["vjp", "dftm"], "anchors": 2}
    cond = _config(
        folder / "cond.yaml", "results_cond", model="resources/cond_model", images="resources/images", measure=measure
    )
    with ThreadPoolExecutor(max_workers=2) as pool:

        def start(config: str, targets: list[str]) -> tuple[str, Future]:
            args = ("--cores", "1", "--configfile", config, "--", *targets)
            return config, pool.submit(run_snakemake, scratch, *args, timeout=600)

        yield {"uncond": start(uncond, TARGETS), "cond": start(cond, _cond_targets())}


def test_stage_writes_the_bpd_table_of_the_cli(scratch, runs, tmp_path):
    config, run = runs["uncond"]
    run.result()
    table = pd.read_csv(scratch / "results" / "pretrained" / "bpd.csv")
    assert len(table) == 9 and table.groupby("method")["image"].apply(sorted).to_dict() == {
        method: ["img0.png", "img1.png", "img2.png"] for method in ("dftm", "hutchinson", "vjp")
    }
    assert np.isfinite(table["bpd"]).all() and (table["seconds"] > 0).all()
    summary = json.loads((scratch / "results" / "pretrained" / "summary.json").read_text())
    counts = summary["methods"]["dftm"]["trace_counts"]
    assert counts["evaluations"] > 0 and counts["upper"] == 0 and counts["lower"] == 0
    assert summary["num_images"] == 3 and summary["protocol"]["t_min"] == pytest.approx(1 / T)
    assert (scratch / "results" / "pretrained" / "bpd.png").stat().st_size > 0
    assert json.loads((scratch / "results" / "pretrained" / "trace" / "trace.json").read_text())["num_images"] == 4

    # the vjp rows are what the command line gives for the same images and settings
    argv = [
        "likelihood",
        "--model",
        str(scratch / "resources" / "model"),
        "--images",
        str(scratch / "resources" / "images"),
    ]
    out = tmp_path / "vjp.csv"
    settings = ["--num-steps", "4", "--solver", "rk4", "--dtype", "float64", "--seed", "0", "--device", "cpu"]
    assert main([*argv, "--method", "vjp", "--out", str(out), "--quiet", *settings]) == 0
    np.testing.assert_allclose(
        table[table["method"] == "vjp"]["bpd"].to_numpy(), pd.read_csv(out)["bpd"].to_numpy(), rtol=0, atol=1e-6
    )
    assert planned_jobs(scratch, "--configfile", config, "--", *TARGETS) == {}


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_stage_on_a_conditional_unet(scratch, runs):
    runs["cond"][1].result()
    table = pd.read_csv(scratch / "results_cond" / "pretrained" / "bpd.csv")
    methods = {"vjp", "dftm", "dftm_anchored"}  # measure.anchors: 2 adds the anchored rows of the dftm solves
    assert len(table) == 9 and set(table["method"]) == methods and np.isfinite(table["bpd"]).all()
    summary = json.loads((scratch / "results_cond" / "pretrained" / "summary.json").read_text())
    assert set(summary["methods"]) == methods


def test_without_a_model_the_stage_trains_the_in_project_ddpm(scratch, tmp_path):
    config = _config(tmp_path / "c.yaml", "results_digits")
    targets = [target.replace("results/", "results_digits/") for target in TARGETS]
    jobs = planned_jobs(scratch, "--configfile", config, "--", *targets)
    assert jobs == {"pretrained_model": 1, "pretrained_digits": 1, "pretrained_trace": 1, "pretrained_bpd": 1}


def test_config_errors_name_the_key(tmp_path):
    from dfcore.config import ConfigError, validate_config

    def check(section, key):
        with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}'"):
            validate_config({"pretrained": {"enabled": True, **section}})

    images = write_images(tmp_path / "images", count=1)
    check({"images": str(images)}, "pretrained.images")
    check({"model": str(tmp_path / "missing")}, "pretrained.model")
    check({"model": str(images), "cond": str(tmp_path / "cond.pt")}, "pretrained.cond")
    check({"trace": {"norm_num_groups": 3}}, "pretrained.trace.norm_num_groups")
    check({"model": str(images), "trace_images": str(tmp_path / "missing")}, "pretrained.trace_images")
    assert validate_config({"pretrained": {"enabled": True, "model": str(images)}})["pretrained"]["images"] is None


def test_the_experiment_defaults_are_the_schema_defaults():
    from dfcore.config import validate_config
    from dfcore.experiments.pretrained import DEFAULTS

    section = validate_config({})["pretrained"]
    assert DEFAULTS["train"] == section["train"] and DEFAULTS["trace"] == section["trace"]
    shared = DEFAULTS["measure"].keys() & section["measure"].keys() - {"methods"}
    assert shared and all(DEFAULTS["measure"][key] == section["measure"][key] for key in shared)
