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
    load_config,
    load_yaml,
    schema_markdown,
    validate_config,
)

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
ESTIMATOR_WORDS = {"analytic", "dftm", "vjp", "hutchinson", "dfea"}
SCHEDULE_NAMES = {"VE", "VP", "subVP", "EDM"}

SCHEMA = load_yaml(SCHEMA_PATH)


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
    assert "\n" not in message, f"not one line: {message!r}"
    return message


ESTIMATOR_KEYS = [
    p for p, s in _walk(SCHEMA)
    if isinstance(s.get("enum"), list) and ESTIMATOR_WORDS & set(map(str, s["enum"]))
]
SCHEDULE_KEYS = [
    p for p, s in _walk(SCHEMA)
    if isinstance(s.get("enum"), list) and set(map(str, s["enum"])) <= SCHEDULE_NAMES and s["enum"]
]
STEP_KEYS = [
    p for p, s in _walk(SCHEMA)
    if p and "step" in str(p[-1]).lower() and s.get("type") == "integer"
]
NUMBER_KEYS = [p for p, s in _walk(SCHEMA) if p and s.get("type") in ("integer", "number") and 0 not in p]


# --------------------------------------------------------------------------------------------- #
# the shipped configs are valid, and defaults are filled in


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "config" / name)
    assert config["seed"] >= 0 and config["results"]


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


def test_the_key_table_describes_every_key():
    rows = [line.split(" | ") for line in schema_markdown().splitlines()[2:]]
    assert all(len(row) == 4 for row in rows), "a '|' inside a cell breaks the table"
    undescribed = [row[0].strip("| `") for row in rows if not row[3].strip(" |")]
    assert not undescribed, f"keys without a description in the schema: {undescribed}"


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml", "paper.yaml"])
def test_dataset_section_merges_overrides_as_training_does(name):
    """The training rules' params (dataset_section) are exactly what run_training reads (dataset_section)."""
    from dfcore.config import dataset_section

    config = load_config(REPO / "config" / name)
    for section in ("denoiser", "trace_net"):
        for dataset in [*config["datasets"], "absent"]:
            merged = dataset_section(config[section], dataset)
            assert merged == dataset_section(config[section], dataset)
            assert dataset_section(merged, dataset) == merged  # run_training merging again changes nothing
    overridden = dataset_section({"steps": 5, "mlp": {"hidden": 8, "layers": 2}, "overrides": {"a": {"steps": 7, "mlp": {"hidden": 4}}}}, "a")
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
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"seed": -4}, "config key 'seed': -4 is less than the minimum of 0"),
        ({"schedules": {"EDM": {"sigma_max": "large"}}}, "config key 'schedules.EDM.sigma_max': 'large' is not of type 'number'"),
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
