"""Configuration validation: every bad value gives one line that names the key and what is allowed.

The checks go through :func:`dfcore.config.validate_config` and through ``snakemake -n`` with a bad
config file, so that a user sees the same single line either way. Keys added by every section of
the schema are covered by walking the schema: each estimator enum, each ``*steps*`` count, each
schedule name.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dfcore.config import (
    SCHEMA_PATH,
    ConfigError,
    config_readme,
    dataset_section,
    load_config,
    load_yaml,
    schema_markdown,
    validate_config,
)
from dfcore.registries import fill_registry_enums

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
ESTIMATOR_WORDS = {"analytic", "dftm", "vjp", "hutchinson", "dfea"}
SCHEDULE_NAMES = {"VE", "VP", "subVP", "EDM"}

SCHEMA = fill_registry_enums(load_yaml(SCHEMA_PATH))  # the schema's x-registry names filled in


def _walk(schema: dict[str, Any], path: tuple[str | int, ...] = ()):
    """Yield (path, subschema) for every property of the schema; an array item is path element 0."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        if isinstance(sub, dict):
            yield from _walk(sub, path + (name,))
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _walk(items, path + (0,))


def _with_value(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A minimal config that sets ``value`` at ``path`` (lists of one element where the path says 0)."""

    def build(rest: tuple[str | int, ...]) -> Any:
        if not rest:
            return value
        head, tail = rest[0], rest[1:]
        return [build(tail)] if head == 0 else {head: build(tail)}

    return build(path)


def _key(path: tuple[str | int, ...]) -> str:
    return ".".join(map(str, path))


def _one_line_error(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    message = str(info.value)
    lines = message.splitlines()
    if len(lines) > 1:  # several errors: a count, then one line per error, each naming its key
        assert lines[0].endswith("config errors:") or "config errors (the first" in lines[0], message
        assert all(line.strip().startswith("config") for line in lines[1:]), message
    return message


ESTIMATOR_KEYS = [
    p for p, s in _walk(SCHEMA) if isinstance(s.get("enum"), list) and ESTIMATOR_WORDS & set(map(str, s["enum"]))
]
SCHEDULE_KEYS = [
    p
    for p, s in _walk(SCHEMA)
    if isinstance(s.get("enum"), list) and set(map(str, s["enum"])) <= SCHEDULE_NAMES and s["enum"]
]
STEP_KEYS = [p for p, s in _walk(SCHEMA) if p and "step" in str(p[-1]).lower() and s.get("type") == "integer"]
NUMBER_KEYS = [p for p, s in _walk(SCHEMA) if p and s.get("type") in ("integer", "number") and 0 not in p]


# --------------------------------------------------------------------------------------------- #
# the shipped configs are valid, and defaults are filled in


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "config" / name)
    assert config["seed"] >= 0 and config["results"]


@pytest.mark.parametrize(
    ("files", "section", "dataset", "expected"),
    [
        (
            ["config.yaml", "likelihood_cpu.yaml", "likelihood_dftm.yaml"],
            "trace_net",
            "lowrank64",
            {"share_trunk": True},
        ),
        (["config.yaml", "likelihood_cpu.yaml"], "likelihood", "lowrank64", {"step_control": "all"}),
        (
            ["config.yaml", "test.yaml"],
            "trace_net",
            "digits",
            {
                "steps": 5,
                "share_trunk": True,
                "targets": {
                    "divergence": {
                        "states": "ode",
                        "steps": 4000,
                        "parameterization": "fisher",
                        "calibration_images": 256,
                    }
                },
            },
        ),
    ],
)
def test_overlays_stack_as_snakemake_merges_them_and_stay_valid(files, section, dataset, expected):
    """An overlay config (--configfile A B) is deep-merged into the ones before it by Snakemake's own
    update_config; the result validates and reaches the keys the overlay sets."""
    from snakemake.utils import update_config

    merged: dict[str, Any] = {}
    for name in files:
        update_config(merged, load_yaml(REPO / "config" / name))
    config = validate_config(merged)
    seen = dataset_section(config[section], dataset)
    assert {key: seen[key] for key in expected} == expected


def test_defaults_are_filled_in_every_section():
    config = validate_config({})
    for path, sub in _walk(SCHEMA):
        if path and "default" in sub and 0 not in path:
            node: Any = config
            for part in path:
                node = node[part]
            if not isinstance(sub["default"], dict):
                assert node == sub["default"], _key(path)


def test_every_section_is_described():
    undocumented = [name for name, sub in SCHEMA["properties"].items() if not sub.get("description")]
    assert not undocumented, f"top-level sections without a description: {undocumented}"


def test_config_readme_is_up_to_date_with_the_schema():
    readme = REPO / "config" / "README.md"
    assert readme.exists() and readme.read_text() == config_readme(), (
        "config/README.md is out of date with workflow/schemas/config.schema.yaml; regenerate it with "
        "`make config-docs` (python -m dfcore.config --readme > config/README.md)"
    )


def test_the_packaged_schemas_are_those_of_the_workflow():
    """dfcore/schemas/ (what the package validates with) holds the same files, byte for byte, as workflow/schemas/
    (where the schema is edited)."""
    workflow = {p.name: p.read_bytes() for p in (REPO / "workflow" / "schemas").iterdir() if p.is_file()}
    packaged = {p.name: p.read_bytes() for p in (REPO / "dfcore" / "schemas").iterdir() if p.is_file()}
    assert "config.schema.yaml" in workflow
    assert workflow.keys() == packaged.keys(), (sorted(workflow), sorted(packaged))
    differing = [name for name in workflow if workflow[name] != packaged[name]]
    assert not differing, f"workflow/schemas and dfcore/schemas differ in {differing}; copy workflow/schemas/ over"


def test_the_key_table_describes_every_key():
    rows = [line.split(" | ") for line in schema_markdown().splitlines()[2:]]
    assert all(len(row) == 4 for row in rows), "a '|' inside a cell breaks the table"
    undescribed = [row[0].strip("| `") for row in rows if not row[3].strip(" |")]
    assert not undescribed, f"keys without a description in the schema: {undescribed}"


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml", "paper.yaml", "likelihood_cpu.yaml", "trace_budget.yaml"])
def test_dataset_section_merges_overrides_as_training_does(name):
    """The training rules' params (dataset_section) are exactly what run_training reads (dataset_section)."""
    from dfcore.config import dataset_section

    config = load_config(REPO / "config" / name)
    for section in ("denoiser", "trace_net"):
        for dataset in [*config["datasets"], "absent"]:
            merged = dataset_section(config[section], dataset)
            assert merged == dataset_section(config[section], dataset)
            assert dataset_section(merged, dataset) == merged  # run_training merging again changes nothing
    overridden = dataset_section(
        {"steps": 5, "mlp": {"hidden": 8, "layers": 2}, "overrides": {"a": {"steps": 7, "mlp": {"hidden": 4}}}}, "a"
    )
    assert overridden == {"steps": 7, "mlp": {"hidden": 4, "layers": 2}}


def test_validation_does_not_mutate_a_valid_value():
    config = load_yaml(REPO / "config" / "config.yaml")
    before = copy.deepcopy(config)
    validated = validate_config(config)
    for key, value in before.items():
        assert validated[key] == value or isinstance(value, dict)


# --------------------------------------------------------------------------------------------- #
# wrong types, unknown names, negative counts: one line naming the key and what is allowed


@pytest.mark.parametrize(
    "config, key, allowed",
    [
        ({"seed": "zero"}, "seed", "integer"),
        ({"seed": 1.5}, "seed", "integer"),
        ({"seed": -1}, "seed", "minimum"),
        ({"device": "gpu0"}, "device", "does not match"),
        ({"results": 3}, "results", "string"),
        ({"schedules": {"VE": {"sigma_min": "small"}}}, "schedules.VE.sigma_min", "number"),
        ({"schedules": {"VP": {"beta_max": -2.0}}}, "schedules.VP.beta_max", "0"),
        ({"schedules": []}, "schedules", "object"),
    ],
)
def test_wrong_value_names_the_key(config, key, allowed):
    message = _one_line_error(config)
    assert f"'{key}'" in message and allowed in message, message


def test_unknown_top_level_key_is_named_with_the_allowed_keys():
    message = _one_line_error({"sede": 1})
    assert "'sede'" in message and "'seed'" in message and "'results'" in message, message


def test_unknown_schedule_name_in_the_schedule_section():
    message = _one_line_error({"schedules": {"VX": {"sigma_min": 0.1}}})
    assert "'VX'" in message and "schedules" in message, message
    for name in SCHEDULE_NAMES:
        assert f"'{name}'" in message, message


def test_unknown_schedule_parameter():
    message = _one_line_error({"schedules": {"VE": {"sigma": 0.1}}})
    assert "'sigma'" in message and "'sigma_min'" in message and "schedules.VE" in message, message


@pytest.mark.parametrize("path", SCHEDULE_KEYS, ids=_key)
def test_unknown_schedule_choice(path):
    message = _one_line_error(_with_value(path, "cosine"))
    assert "'cosine'" in message and "choose one of" in message, message
    assert _key(path) in message, message


def test_the_schema_names_estimators():
    assert ESTIMATOR_KEYS, "no config key chooses an estimator (enum with analytic/dftm/vjp/hutchinson/dfea)"


@pytest.mark.parametrize("path", ESTIMATOR_KEYS, ids=_key)
def test_unknown_estimator_name(path):
    message = _one_line_error(_with_value(path, "magic"))
    assert "'magic'" in message and "choose one of" in message and _key(path) in message, message
    enum = dict(_walk(SCHEMA))[path]["enum"]
    for word in enum:
        assert repr(word) in message, message


@pytest.mark.parametrize("path", STEP_KEYS, ids=_key)
def test_negative_steps(path):
    message = _one_line_error(_with_value(path, -5))
    assert _key(path) in message and "-5" in message and "minimum" in message, message


@pytest.mark.parametrize("path", NUMBER_KEYS, ids=_key)
def test_a_string_where_a_number_belongs(path):
    message = _one_line_error(_with_value(path, "many"))
    assert _key(path) in message and "'many'" in message, message


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- seed\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)


# --------------------------------------------------------------------------------------------- #
# the same line reaches the user of `snakemake -n`


def _snakemake_dry_run(configfile: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{SNAKEMAKE.parent}:{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(SNAKEMAKE), "-n", "--cores", "1", "--workflow-profile", "none", "--configfile", str(configfile)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"seed": -4}, "config key 'seed': -4 is less than the minimum of 0"),
        (
            {"schedules": {"EDM": {"sigma_max": "large"}}},
            "config key 'schedules.EDM.sigma_max': 'large' is not of type 'number'",
        ),
        ({"schedulez": {}}, "unknown key(s) ['schedulez']"),
    ],
    ids=["negative-seed", "wrong-type", "unknown-key"],
)
def test_snakemake_dry_run_reports_the_bad_key(tmp_path, patch, expected):
    config = load_yaml(REPO / "config" / "test.yaml")
    config.update(patch)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _snakemake_dry_run(path)
    assert result.returncode != 0
    assert expected in result.stderr + result.stdout, result.stderr[-2000:]


# --------------------------------------------------------------------------------------------- #
# configs that the schema alone would accept but that fail once jobs run, or are silently ignored:
# each is refused by validation, in one line that names the key


DEFAULT_DATASETS = SCHEMA["properties"]["datasets"]["default"]
INF, NAN = float("inf"), float("nan")


def _datasets(**entries: Any) -> dict[str, Any]:
    """The default data sets, with ``entries`` added or replaced."""
    return {"datasets": {**copy.deepcopy(DEFAULT_DATASETS), **entries}}


def _gmm(**changes: Any) -> dict[str, Any]:
    return _datasets(gmm={**copy.deepcopy(DEFAULT_DATASETS["gmm"]), **changes})


BAD_CONFIGS = [
    # overrides and the trace net's backbone: the keys and ranges of the section they override
    ("override-typo", {"denoiser": {"overrides": {"digits": {"stepz": 5}}}}, "denoiser.overrides.digits", "'stepz'"),
    (
        "override-negative-steps",
        {"denoiser": {"overrides": {"digits": {"steps": -5}}}},
        "denoiser.overrides.digits.steps",
        "minimum",
    ),
    (
        "override-nested-typo",
        {"denoiser": {"overrides": {"digits": {"mlp": {"hiddn": 8}}}}},
        "denoiser.overrides.digits.mlp",
        "'hiddn'",
    ),
    (
        "override-wrong-type",
        {"denoiser": {"overrides": {"digits": {"lr": "fast"}}}},
        "denoiser.overrides.digits.lr",
        "number",
    ),
    (
        "target-backbone-with-shared-trunk",
        {"trace_net": {"targets": {"divergence": {"backbone": {"hidden": 64}}}}},
        "trace_net.targets.divergence.backbone",
        "share the trunk",
    ),
    (
        "dataset-target-backbone-with-shared-trunk",
        {"trace_net": {"overrides": {"digits": {"targets": {"residual": {"backbone": {"layers": 2}}}}}}},
        "trace_net.overrides.digits.targets.residual.backbone",
        "share the trunk",
    ),
    (
        "trace-override-typo",
        {"trace_net": {"overrides": {"digits": {"batchsize": 16}}}},
        "trace_net.overrides.digits",
        "'batchsize'",
    ),
    (
        "trace-override-enum",
        {"trace_net": {"overrides": {"digits": {"target": "magic"}}}},
        "trace_net.overrides.digits.target",
        "'magic'",
    ),
    (
        "trace-override-range",
        {"trace_net": {"overrides": {"digits": {"time_power": -1.0}}}},
        "trace_net.overrides.digits.time_power",
        "-1.0",
    ),
    (
        "override-unknown-dataset",
        {"denoiser": {"overrides": {"digts": {"steps": 5}}}},
        "denoiser.overrides.digts",
        "'digts'",
    ),
    (
        "trace-override-unknown-dataset",
        {"trace_net": {"overrides": {"gmmm": {"steps": 5}}}},
        "trace_net.overrides.gmmm",
        "'gmmm'",
    ),
    ("backbone-typo", {"trace_net": {"backbone": {"hiddn": 512}}}, "trace_net.backbone", "'hiddn'"),
    ("backbone-range", {"trace_net": {"backbone": {"hidden": 0}}}, "trace_net.backbone.hidden", "minimum"),
    # names with a fixed set of values
    ("digits-schedule-enum", {"adjoint": {"digits": {"schedule": "FOO"}}}, "adjoint.digits.schedule", "'FOO'"),
    ("dataset-name-not-a-wildcard", _datasets(my_data={"kind": "checkerboard"}), "datasets", "'my_data'"),
    # names that refer to other keys
    (
        "nll-unknown-dataset",
        {"nll": {"runs": [{"dataset": "gmm"}, {"dataset": "moons"}]}},
        "nll.runs.1.dataset",
        "'moons'",
    ),
    ("trace-error-unknown-dataset", {"trace_error": {"dataset": "moons"}}, "trace_error.dataset", "'moons'"),
    (
        "adjoint-mixture-unknown-dataset",
        {"adjoint": {"mixture": {"dataset": "moons"}}},
        "adjoint.mixture.dataset",
        "'moons'",
    ),
    (
        "convergence-unknown-dataset",
        {"ot": {"convergence": {"datasets": ["non_affine", "spiral"]}}},
        "ot.convergence.datasets.1",
        "'spiral'",
    ),
    ("no-digits-dataset", {"datasets": {"checkerboard": {"kind": "checkerboard"}}}, "datasets.digits", "adjoint"),
    ("digits-of-another-kind", _datasets(digits={"kind": "checkerboard"}), "datasets.digits", "kind"),
    # shapes that must agree
    ("gmm-means-length", _gmm(means=[[0.0, 0.0]]), "datasets.gmm.means", "weights"),
    ("gmm-stds-length", _gmm(stds=[0.3, 0.5, 0.7]), "datasets.gmm.stds", "weights"),
    ("gmm-ragged-means", _gmm(means=[[0.0, 0.0], [1.0]]), "datasets.gmm.means", "coordinates"),
    (
        "gmm-missing-stds",
        _datasets(gmm={"kind": "gaussian_mixture", "weights": [1.0], "means": [[0.0]]}),
        "datasets.gmm",
        "'stds'",
    ),
    ("gmm-nan-mean", _gmm(means=[[NAN, 0.0], [1.0, 1.0]]), "datasets.gmm.means.0.0", "finite"),
    (
        "key-of-another-kind",
        _datasets(checkerboard={"kind": "checkerboard", "weights": [1.0]}),
        "datasets.checkerboard.weights",
        "checkerboard",
    ),
    (
        "too-many-digits",
        _datasets(digits={"kind": "digits", "num_samples": 5000}),
        "datasets.digits.num_samples",
        "1797",
    ),
    (
        "mixture-target-dimension",
        {"adjoint": {"mixture": {"target": [1.0, 1.0, 1.0]}}},
        "adjoint.mixture.target",
        "d = 2",
    ),
    (
        "ot-dirac-without-points",
        {"ot": {"datasets": {"d": {"kind": "dirac"}}, "convergence": {"datasets": ["d"]}}},
        "ot.datasets.d",
        "'points'",
    ),
    (
        "ot-point-too-long",
        {"ot": {"datasets": {"d": {"kind": "dirac", "points": [[0.0, 0.0, 1.0]]}}, "convergence": {"datasets": ["d"]}}},
        "ot.datasets.d.points.0",
        "ot.dim",
    ),
    (
        "ot-covariance-shape",
        {"ot": {"datasets": {"non_affine": {"kind": "gaussian", "covariance": [[1.0]]}}}},
        "ot.datasets.non_affine.covariance",
        "2 x 2",
    ),
    (
        "ot-covariance-not-pd",
        {"ot": {"datasets": {"non_affine": {"kind": "gaussian", "covariance": [[1.0, 2.0], [2.0, 1.0]]}}}},
        "ot.datasets.non_affine.covariance",
        "positive definite",
    ),
    (
        "ot-mean-length",
        {"ot": {"datasets": {"non_affine": {"kind": "gaussian", "mean": [0.0]}}}},
        "ot.datasets.non_affine.mean",
        "ot.dim",
    ),
    (
        "ot-key-of-another-kind",
        {"ot": {"datasets": {"non_affine": {"kind": "dirac", "points": [[0.0]], "scale": 2.0}}}},
        "ot.datasets.non_affine.scale",
        "dirac",
    ),
    # values that are in range one by one but not together
    ("ve-sigma-order", {"schedules": {"VE": {"sigma_min": 60.0}}}, "schedules.VE.sigma_min", "sigma_max"),
    ("vp-beta-order", {"schedules": {"VP": {"beta_min": 30.0}}}, "schedules.VP.beta_min", "beta_max"),
    ("edm-sigma-order", {"schedules": {"EDM": {"sigma_min": 80.0}}}, "schedules.EDM.sigma_min", "sigma_max"),
    ("update-steps-beyond-sampler", {"adjoint": {"num_steps": 8}}, "adjoint.update_steps", "num_steps"),
    ("sd-update-steps-beyond-sampler", {"sd": {"adjoint": {"num_steps": 4}}}, "sd.adjoint.update_steps", "num_steps"),
    ("unet-groups", {"denoiser": {"unet": {"norm_num_groups": 3}}}, "denoiser.unet.norm_num_groups", "divide"),
    ("sd-unet-groups", {"sd": {"trace_net": {"norm_num_groups": 5}}}, "sd.trace_net.norm_num_groups", "divide"),
    ("unet-on-points", {"denoiser": {"arch": "unet"}}, "denoiser.arch", "image"),
    (
        "override-unet-on-points",
        {"denoiser": {"overrides": {"gmm": {"arch": "unet"}}}},
        "denoiser.overrides.gmm.arch",
        "image",
    ),
    ("sd-without-pipeline", {"sd": {"enabled": True}}, "sd.pipeline", "local folder"),
    (
        "sd-bad-reward-module",
        {"sd": {"enabled": True, "tiny": True, "adjoint": {"reward": "module", "reward_module": "nope"}}},
        "sd.adjoint.reward_module",
        "package.module:Name",
    ),
    (
        "backbone-with-shared-trunk",
        {"trace_net": {"share_trunk": True, "backbone": {"hidden": 64}}},
        "trace_net.backbone",
        "share_trunk false",
    ),
    (
        "override-backbone-with-shared-trunk",
        {
            "trace_net": {
                "share_trunk": False,
                "overrides": {"digits": {"share_trunk": True, "backbone": {"hidden": 64}}},
            }
        },
        "trace_net.overrides.digits.backbone",
        "share_trunk false",
    ),
    # the likelihood stage: closed-form densities, and held-out images from the other side of the training split
    ("likelihood-unknown-dataset", {"likelihood": {"datasets": ["nope"]}}, "likelihood.datasets.0", "'nope'"),
    ("likelihood-no-density", {"likelihood": {"datasets": ["checkerboard"]}}, "likelihood.datasets.0", "closed-form"),
    (
        "likelihood-table2-elsewhere",
        {"likelihood": {"datasets": ["gmm"], "table2": {"datasets": ["checkerboard"]}}},
        "likelihood.table2.datasets.0",
        "likelihood.datasets",
    ),
    (
        "heldout-without-split",
        {"likelihood": {"heldout": {"train": "digits", "test": "digits"}}},
        "likelihood.heldout.train",
        "holdout",
    ),
    (
        "heldout-other-seed",
        {
            **_datasets(
                digits={"kind": "digits", "seed": 3, "holdout": 0.1},
                dt={"kind": "digits", "seed": 4, "holdout": 0.1, "split": "test"},
            ),
            "likelihood": {"heldout": {"train": "digits", "test": "dt"}},
        },
        "datasets.dt.seed",
        "not be held out",
    ),
    (
        "heldout-other-fraction",
        {
            **_datasets(
                digits={"kind": "digits", "seed": 3, "holdout": 0.1},
                dt={"kind": "digits", "seed": 3, "holdout": 0.2, "split": "test"},
            ),
            "likelihood": {"heldout": {"train": "digits", "test": "dt"}},
        },
        "datasets.dt.holdout",
        "not be held out",
    ),
    (
        "heldout-test-is-train-side",
        {
            **_datasets(
                digits={"kind": "digits", "seed": 3, "holdout": 0.1},
                dt={"kind": "digits", "seed": 3, "holdout": 0.1},
            ),
            "likelihood": {"heldout": {"train": "digits", "test": "dt"}},
        },
        "datasets.dt.split",
        "'test'",
    ),
    # infinite or undefined numbers
    ("ve-infinite-sigma", {"schedules": {"VE": {"sigma_max": INF}}}, "schedules.VE.sigma_max", "finite"),
    ("vp-nan-beta", {"schedules": {"VP": {"beta_max": NAN}}}, "schedules.VP.beta_max", "finite"),
    ("infinite-target", {"adjoint": {"mixture": {"target": [INF, 0.0]}}}, "adjoint.mixture.target.0", "finite"),
    ("infinite-lr", {"denoiser": {"lr": INF}}, "denoiser.lr", "finite"),
    (
        "ode-states-without-divergence",
        {"pretrained": {"trace": {"states": "ode", "target": "residual"}}},
        "pretrained.trace.states",
        "needs pretrained.trace.target 'divergence'",
    ),
]


def test_the_table_of_bad_configs_is_large():
    assert len(BAD_CONFIGS) >= 30
    assert len({name for name, *_ in BAD_CONFIGS}) == len(BAD_CONFIGS)


@pytest.mark.parametrize("config, key, fragment", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_a_config_that_would_fail_late_is_refused_with_the_key_named(config, key, fragment):
    message = _one_line_error(copy.deepcopy(config))
    assert key in message and fragment in message, message


CHECKED_FILES = {"override-typo", "nll-unknown-dataset", "ve-infinite-sigma", "gmm-means-length"}


@pytest.mark.parametrize(
    "config, key, fragment",
    [c[1:] for c in BAD_CONFIGS if c[0] in CHECKED_FILES],
    ids=[c[0] for c in BAD_CONFIGS if c[0] in CHECKED_FILES],
)
def test_check_on_a_bad_file_prints_one_line_naming_the_key(tmp_path, capsys, config, key, fragment):
    from dfcore.config import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as info:
        main(["--check", str(path)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and key in err and fragment in err, err


def test_the_overrides_and_backbone_accept_the_keys_they_override():
    config = validate_config(
        {
            "denoiser": {
                "overrides": {
                    "digits": {"steps": 5, "arch": "unet", "unet": {"layers_per_block": 2}},
                    "gmm": {"mlp": {"hidden": 8}},
                }
            },
            "trace_net": {
                "share_trunk": False,
                "backbone": {"hidden": 512, "layers": 2},
                "overrides": {"digits": {"share_trunk": True, "steps": 3}},
            },
        }
    )
    # an override states only its own keys: no defaults are filled in under it
    assert config["denoiser"]["overrides"]["gmm"] == {"mlp": {"hidden": 8}}
    assert config["trace_net"]["backbone"] == {"hidden": 512, "layers": 2}
    assert dataset_section(config["denoiser"], "gmm")["mlp"] == {**config["denoiser"]["mlp"], "hidden": 8}


def test_a_targets_entry_sets_the_keys_of_its_targets_nets_only():
    """trace_net.targets.<target> accepts the section's keys (no defaults filled in under it); target_section
    merges it after the data set's overrides, and a data set's own targets entry is merged key by key into the
    base one."""
    from dfcore.config import target_section

    config = validate_config(
        {
            "trace_net": {
                "steps": 100,
                "targets": {"divergence": {"steps": 400, "calibration_images": 8}, "residual": {"lr": 0.01, "seed": 4}},
                "overrides": {"digits": {"steps": 50, "targets": {"residual": {"steps": 60}}}},
            }
        }
    )
    assert config["trace_net"]["targets"]["divergence"] == {"steps": 400, "calibration_images": 8}
    section = dataset_section(config["trace_net"], "digits")
    divergence = target_section(section, "divergence")
    assert (divergence["target"], divergence["steps"], divergence["calibration_images"]) == ("divergence", 400, 8)
    assert "targets" not in divergence
    residual = target_section(section, "residual")
    # the data set's entry sets steps; the base entry's lr and seed stay
    assert (residual["steps"], residual["lr"], residual["seed"]) == (60, 0.01, 4)
    plain = target_section(section, "sq_norm")
    assert plain == {**{k: v for k, v in section.items() if k != "targets"}, "target": "sq_norm"}


@pytest.mark.parametrize(
    "targets, key, fragment",
    [
        ({"ghost": {"steps": 3}}, "trace_net.targets", "ghost"),
        ({"divergence": {"stepz": 3}}, "trace_net.targets.divergence", "stepz"),
        ({"divergence": {"steps": 0}}, "trace_net.targets.divergence.steps", "minimum"),
        ({"divergence": {"target": "residual"}}, "trace_net.targets.divergence", "target"),
    ],
)
def test_a_bad_targets_entry_names_its_key(targets, key, fragment):
    message = _one_line_error({"trace_net": {"targets": targets}})
    assert key in message and fragment in message, message


# --------------------------------------------------------------------------------------------- #
# files that cannot be read, and duplicate keys


@pytest.mark.parametrize("kind", ["directory", "not-utf8", "duplicate-top", "duplicate-nested"])
def test_check_on_an_unreadable_file_prints_one_line(tmp_path, capsys, kind):
    from dfcore.config import main

    path = tmp_path / "config.yaml"
    expected = {
        "directory": "not a file",
        "not-utf8": "not UTF-8",
        "duplicate-top": "duplicate key 'seed'",
        "duplicate-nested": "duplicate key 'sigma_max'",
    }[kind]
    if kind == "directory":
        path.mkdir()
    elif kind == "not-utf8":
        path.write_bytes(b"seed: 1\nresults: r\xe9sultats\n")
    elif kind == "duplicate-top":
        path.write_text("seed: 1\nresults: out\nseed: 2\n")
    else:
        path.write_text("schedules:\n  VE:\n    sigma_max: 50.0\n    sigma_min: 0.01\n    sigma_max: 80.0\n")
    with pytest.raises(SystemExit) as info:
        main(["--check", str(path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and expected in err and "Traceback" not in err, err
    if kind.startswith("duplicate"):
        assert "line" in err, err


def test_a_key_that_overrides_a_yaml_merge_key_is_not_a_duplicate(tmp_path):
    path = tmp_path / "merge.yaml"
    text = "schedules:\n  VE: &ve {sigma_min: 0.01, sigma_max: 50.0}\n  EDM:\n    <<: *ve\n    sigma_max: 80.0\n"
    path.write_text(text)
    assert load_yaml(path)["schedules"]["EDM"] == {"sigma_min": 0.01, "sigma_max": 80.0}


def test_snakemake_dry_run_refuses_a_duplicate_key(tmp_path):
    text = (REPO / "config" / "test.yaml").read_text() + "seed: 5\n"
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    result = _snakemake_dry_run(path)
    assert result.returncode != 0
    assert "duplicate key 'seed'" in result.stderr + result.stdout, result.stderr[-2000:]


def test_snakemake_dry_run_refuses_an_unknown_dataset_name(tmp_path):
    config = load_yaml(REPO / "config" / "test.yaml")
    config["trace_error"]["dataset"] = "moons"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _snakemake_dry_run(path)
    assert result.returncode != 0
    assert "config key 'trace_error.dataset': 'moons' is not a key of datasets" in result.stderr + result.stdout, (
        result.stderr[-2000:]
    )


def test_make_data_reports_a_missing_entry_truthfully(tmp_path):
    """The make_data script passes its own entry (None when absent), never a made-up empty 'datasets' section."""
    import runpy
    from types import SimpleNamespace

    fake = SimpleNamespace(
        log=[str(tmp_path / "make_data.log")],
        wildcards=SimpleNamespace(dataset="moons"),
        params=SimpleNamespace(spec=None),
        output=[str(tmp_path / "moons.zarr")],
    )
    with pytest.raises(ValueError) as info:
        runpy.run_path(str(REPO / "workflow" / "scripts" / "make_data.py"), init_globals={"snakemake": fake})
    message = str(info.value)
    assert "'moons' is not defined in the config's 'datasets' section" in message and "have []" not in message, message


# --------------------------------------------------------------------------------------------- #
# configs that passed validation and failed later, or succeeded with nothing: lengths that must agree,
# names of things that do not exist, empty lists, integers out of range, structural minimums, sizes
# that cannot fit in memory, and a results folder that is no folder

BIG_SEED = 2**64
MAX_SEED = 2**62 - 1


def _lowrank(**changes: Any) -> dict[str, Any]:
    spec = {"kind": "gaussian_mixture_lowrank", "dim": 4, "components": 2, "rank": 2, "noise": 0.1, **changes}
    return _datasets(lr={k: v for k, v in spec.items() if v is not None})


MORE_BAD_CONFIGS = [
    # lists whose lengths must agree
    (
        "protocols-lengths",
        {"ot": {"protocols": {"steps": [20, 50], "num_starts": [100]}}},
        "ot.protocols.num_starts",
        "has 1 entries but ot.protocols.steps has 2",
    ),
    (
        "protocols-lengths-long",
        {"ot": {"protocols": {"steps": [20], "num_starts": [100, 200, 300]}}},
        "ot.protocols.num_starts",
        "has 3 entries",
    ),
    ("gmm-weights-vs-means", _gmm(weights=[0.2, 0.3, 0.5]), "datasets.gmm.means", "has 2 entries but weights has 3"),
    # names in lists that refer to things that do not exist
    (
        "protocols-unknown-dataset",
        {"ot": {"protocols": {"datasets": ["affine", "ghost"]}}},
        "ot.protocols.datasets.1",
        "'ghost' is not a key of ot.datasets",
    ),
    ("trace-targets-unknown", {"trace_error": {"trace_targets": ["magic"]}}, "trace_error.trace_targets.0", "'magic'"),
    (
        "table2-unknown-dataset",
        {"likelihood": {"datasets": [], "table2": {"datasets": ["gmm"]}}},
        "likelihood.table2.datasets.0",
        "'gmm' is not a key of likelihood.datasets",
    ),
    (
        "heldout-unknown-method",
        {"likelihood": {"heldout": {"methods": ["analytic"]}}},
        "likelihood.heldout.methods.0",
        "'analytic'",
    ),
    (
        "adjoint-unknown-dataset",
        {"adjoint": {"mixture": {"dataset": "nowhere"}}},
        "adjoint.mixture.dataset",
        "'nowhere'",
    ),
    ("trace-error-unknown-method", {"trace_error": {"methods": ["vjp", "magic"]}}, "trace_error.methods.1", "'magic'"),
    ("likelihood-unknown-method", {"likelihood": {"methods": ["exact"]}}, "likelihood.methods.0", "'exact'"),
    # empty method or time lists
    ("trace-error-no-methods", {"trace_error": {"methods": []}}, "trace_error.methods", "should be non-empty"),
    ("trace-error-no-times", {"trace_error": {"times": []}}, "trace_error.times", "should be non-empty"),
    ("likelihood-no-methods", {"likelihood": {"methods": []}}, "likelihood.methods", "should be non-empty"),
    (
        "table2-no-methods",
        {"likelihood": {"table2": {"methods": []}}},
        "likelihood.table2.methods",
        "should be non-empty",
    ),
    ("table2-no-times", {"likelihood": {"table2": {"times": []}}}, "likelihood.table2.times", "should be non-empty"),
    (
        "heldout-no-methods",
        {"likelihood": {"heldout": {"methods": []}}},
        "likelihood.heldout.methods",
        "should be non-empty",
    ),
    ("trace-error-time-above-one", {"trace_error": {"times": [1.5]}}, "trace_error.times.0", "maximum of 1"),
    # integers out of range
    ("seed-beyond-64-bits", {"seed": BIG_SEED}, "seed", "maximum"),
    ("seed-just-above", {"seed": MAX_SEED + 1}, "seed", "maximum"),
    ("dataset-seed-beyond-64-bits", _gmm(seed=BIG_SEED), "datasets.gmm.seed", "maximum"),
    ("denoiser-seed-beyond", {"denoiser": {"seed": BIG_SEED}}, "denoiser.seed", "maximum"),
    ("nll-seed-beyond", {"nll": {"seed": BIG_SEED}}, "nll.seed", "maximum"),
    ("sd-seeds-beyond", {"sd": {"nll": {"seeds": [0, BIG_SEED]}}}, "sd.nll.seeds.1", "maximum"),
    ("lowrank-rank-above-dim", _lowrank(rank=5), "datasets.lr.rank", "5 is above the dimension dim = 4"),
    ("lowrank-missing-noise", _lowrank(noise=None), "datasets.lr.noise", "required by kind 'gaussian_mixture_lowrank'"),
    ("target-class-ten", {"adjoint": {"digits": {"target_class": 10}}}, "adjoint.digits.target_class", "maximum of 9"),
    # structural minimums
    (
        "unet-no-channels",
        {"denoiser": {"arch": "auto", "unet": {"block_out_channels": []}}},
        "denoiser.unet.block_out_channels",
        "should be non-empty",
    ),
    (
        "unet-too-deep",
        {"denoiser": {"unet": {"block_out_channels": [8, 8, 8, 8, 8], "norm_num_groups": 8}}},
        "denoiser.unet.block_out_channels",
        "allow at most 4",
    ),
    (
        "sd-trace-no-channels",
        {"sd": {"trace_net": {"block_out_channels": []}}},
        "sd.trace_net.block_out_channels",
        "should be non-empty",
    ),
    # sizes that cannot fit in memory
    ("huge-dataset", _gmm(num_samples=2**40), "datasets.gmm.num_samples", "GiB, above the limit"),
    ("huge-lowrank-dim", _lowrank(dim=2**20, rank=2), "datasets.lr.dim", "GiB, above the limit"),
    ("huge-batch", {"denoiser": {"batch_size": 2**34}}, "denoiser.batch_size", "GiB, above the limit"),
    ("huge-mlp", {"denoiser": {"mlp": {"hidden": 2**20}}}, "denoiser.mlp.hidden", "GiB, above the limit"),
    ("huge-ot-paths", {"ot": {"num_starts": 10**9, "num_steps": 1000}}, "ot.num_starts", "GiB, above the limit"),
    ("huge-trace-error", {"trace_error": {"dataset": "digits", "num_points": 10**8}}, "trace_error.num_points", "GiB"),
    ("huge-nll-points", {"nll": {"num_points": 10**9}}, "nll.num_points", "GiB, above the limit"),
    ("huge-adjoint-samples", {"adjoint": {"mixture": {"num_samples": 10**10}}}, "adjoint.mixture.num_samples", "GiB"),
    (
        "heldout-side-too-small",
        _datasets(dt={"kind": "digits", "holdout": 0.1, "split": "test", "num_samples": 500}),
        "datasets.dt.num_samples",
        "500 is more than the 180 images of the test side of the split",
    ),
    # the results folder
    ("results-empty", {"results": ""}, "results", "is empty"),
    ("results-blank", {"results": "  "}, "results", "is empty"),
    ("results-root", {"results": "/"}, "results", "is the file-system root"),
    ("results-root-dots", {"results": "/tmp/../"}, "results", "is the file-system root"),
    ("results-a-file", {"results": "pyproject.toml"}, "results", "is an existing file"),
]


def test_the_new_table_of_bad_configs_is_large_and_new():
    assert len(MORE_BAD_CONFIGS) >= 30
    names = [name for name, *_ in BAD_CONFIGS + MORE_BAD_CONFIGS]
    assert len(set(names)) == len(names)
    old = [c[1] for c in BAD_CONFIGS]
    assert not [name for name, config, *_ in MORE_BAD_CONFIGS if config in old]


@pytest.mark.parametrize(
    "config, key, fragment", [c[1:] for c in MORE_BAD_CONFIGS], ids=[c[0] for c in MORE_BAD_CONFIGS]
)
def test_a_config_that_fails_late_or_does_nothing_is_refused_with_the_key_named(config, key, fragment, monkeypatch):
    monkeypatch.chdir(REPO)  # results: pyproject.toml is an existing file there
    message = _one_line_error(copy.deepcopy(config))
    assert f"'{key}'" in message and fragment in message, message


def test_every_error_is_reported_at_once_each_with_its_key():
    message = _one_line_error({"seed": -1, "nll": {"num_points": 0}, "denoiser": {"lr": "fast"}})
    assert message.startswith("3 config errors:")
    for key in ("seed", "nll.num_points", "denoiser.lr"):
        assert f"config key '{key}'" in message
    cross = _one_line_error(
        {"results": "", "ot": {"protocols": {"steps": [20, 50], "num_starts": [100]}}, **_lowrank(rank=9)}
    )
    assert cross.startswith("3 config errors:")
    for key in ("results", "ot.protocols.num_starts", "datasets.lr.rank"):
        assert f"config key '{key}'" in cross


def test_at_most_twenty_errors_are_shown():
    from dfcore.config import MAX_ERRORS

    config = {"datasets": {f"d{i}": {"kind": "checkerboard", "num_samples": -1} for i in range(30)}}
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert len(info.value.errors) >= 30
    assert len(str(info.value).splitlines()) == MAX_ERRORS + 1
    assert "(the first 20 shown)" in str(info.value)


def _alias_bomb(levels: int = 12) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    return "\n".join(lines) + f"\nsd: {{reward_kwargs: {{bomb: *a{levels - 1}}}}}\n"


def test_an_alias_bomb_is_refused_by_the_loader(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    with pytest.raises(ConfigError, match=r"bomb.yaml: more than 100000 values once its YAML aliases are expanded"):
        load_yaml(path)


def test_an_alias_bomb_built_elsewhere_is_refused_by_the_validator():
    shared: list[Any] = ["x"] * 10
    for _ in range(8):
        shared = [shared] * 10
    with pytest.raises(ConfigError, match="more than 100000 values"):
        validate_config({"sd": {"adjoint": {"reward_kwargs": {"bomb": shared}}}})


def test_a_few_shared_aliases_are_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {steps: 5}\ndenoiser: {overrides: {digits: *b, gmm: *b}}\n")
    assert load_yaml(path)["denoiser"]["overrides"]["gmm"] == {"steps": 5}


@pytest.mark.parametrize(
    "name", ["protocols-lengths", "results-empty", "trace-error-no-methods", "seed-beyond-64-bits", "huge-dataset"]
)
def test_check_refuses_the_new_bad_configs(tmp_path, capsys, name):
    from dfcore.config import main

    config, key, fragment = next(c[1:] for c in MORE_BAD_CONFIGS if c[0] == name)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as info:
        main(["--check", str(path)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and f"'{key}'" in err and fragment in err, err


def test_snakemake_dry_run_refuses_the_new_bad_configs_and_an_alias_bomb(tmp_path):
    """One dry run with several bad keys (each named) and one with an alias bomb (refused before it grows)."""
    config = load_yaml(REPO / "config" / "test.yaml")
    config["results"] = ""
    config["trace_error"]["methods"] = []
    config["ot"]["protocols"] = {**config["ot"].get("protocols", {}), "steps": [20, 50], "num_starts": [10]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _snakemake_dry_run(path)
    out = result.stderr + result.stdout
    assert result.returncode != 0
    assert "config key 'trace_error.methods'" in out and "should be non-empty" in out, out[-2000:]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text((REPO / "config" / "test.yaml").read_text() + _alias_bomb(7))
    result = _snakemake_dry_run(bomb)
    assert result.returncode != 0
    assert "once its YAML aliases are expanded" in result.stderr + result.stdout, result.stderr[-2000:]
