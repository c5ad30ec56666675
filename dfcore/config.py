"""Workflow configuration: YAML loading and JSON-schema validation with defaults.

The schema (``workflow/schemas/config.schema.yaml``, shipped inside the package as
``dfcore/schemas/config.schema.yaml``) is the single description of every key;
:func:`validate_config` fills in its ``default`` values and turns the first violation into one
line that names the offending key and what is allowed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

__all__ = ["ConfigError", "load_yaml", "validate_config", "load_config", "dataset_section", "schema_markdown", "config_readme",
           "SCHEMA_PATH"]

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _fill_defaults(validator_class: type) -> type:
    """A validator that sets each property's ``default`` before validating it."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: dict, instance: Any, schema: dict) -> Any:
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _fill_defaults(jsonschema.Draft202012Validator)


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = key if key != "<top level>" else "the top level"
        return f"config: unknown key(s) {extra} under {where}; allowed keys: {allowed}"
    if error.validator == "enum":
        return f"config key '{key}': {error.instance!r} is not allowed; choose one of {error.validator_value}"
    return f"config key '{key}': {error.message}"


def validate_config(config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate ``config`` in place against the schema, filling defaults; raise :class:`ConfigError`."""
    schema = load_yaml(schema_path)
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(_describe(errors[0]))
    return config


def load_config(path: str | Path, schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Load a YAML config and validate it (with defaults)."""
    return validate_config(load_yaml(path), schema_path)


def dataset_section(section: dict[str, Any], dataset: str) -> dict[str, Any]:
    """A config section (``denoiser``, ``trace_net``) as dataset ``dataset`` sees it: ``overrides[dataset]``
    merged in (one level deep for nested dicts), ``overrides`` itself left out.

    It imports no torch: the workflow's training rules declare its result as their params, so a key of
    another dataset's override, or a base key that this dataset overrides, retrains nothing here.
    """
    merged = copy.deepcopy({k: v for k, v in section.items() if k != "overrides"})
    for key, value in (section.get("overrides") or {}).get(dataset, {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _schema_rows(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        kind = sub.get("type", "")
        if "enum" in sub:
            kind = " \\| ".join(map(str, sub["enum"]))
        default = sub.get("default", {})
        shown = "" if "default" not in sub or default == {} else f"`{json.dumps(default)}`"
        rows.append((key, str(kind), shown, " ".join(str(sub.get("description", "")).split())))
        if sub.get("type") == "object":
            rows.extend(_schema_rows(sub, key + "."))
            if isinstance(sub.get("additionalProperties"), dict):
                rows.extend(_schema_rows(sub["additionalProperties"], key + ".<name>."))
    return rows


def schema_markdown(schema_path: str | Path = SCHEMA_PATH) -> str:
    """A markdown table of every config key, its type, default and description."""
    rows = _schema_rows(load_yaml(schema_path))
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {t} | {_cell(d)} | {_cell(desc)} |" for k, t, d, desc in rows]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text for a markdown table cell: a literal ``|`` would end the cell."""
    return text.replace("|", "\\|")


README_INTRO = """\
# Configuration

Every key of the workflow configuration, its type, default and meaning. The single source of these is the
JSON schema `workflow/schemas/config.schema.yaml`: Snakemake and every `dfcore` command line validate a
config against it and fill in the defaults, and a bad value is reported in one line that names the key.
This file is generated from the schema (`make config-docs`, i.e.
`python -m dfcore.config --readme > config/README.md`); do not edit it by hand.

## Passing a config

```bash
snakemake --cores all                                      # config/config.yaml (small scale)
snakemake --cores all --configfile config/paper.yaml       # paper scale
snakemake --cores all --config seed=1 device=cpu           # single top-level keys on the command line
python -m dfcore.config --check my.yaml                    # validate a config file without running anything
```

A config file needs only the keys it changes; every other key keeps its default. Shipped configs:

- `config/config.yaml`: the default, small scale; runs end to end on 2 CPU cores.
- `config/test.yaml`: tiny; every stage at the smallest useful size, for CI and the workflow tests.
- `config/paper.yaml`: paper scale (longer training, more test points, tighter tolerances); hours on a CPU.

## What reruns when a key changes

Each rule declares as Snakemake `params` exactly the config values its job reads, so a changed key reruns
the jobs that read it and the jobs downstream of them, nothing else (rerun trigger `params`, on in
`profiles/default` and `profiles/slurm`). For example `ot.convergence.steps` reruns `ot_convergence` only,
`nll.num_steps` the `nll` jobs, and `denoiser.steps` the denoisers (not those of a dataset whose
`denoiser.overrides` entry sets its own `steps`), the trace nets trained on them and their evaluations.
Keys that only choose which jobs exist (`nll.runs`, `adjoint.mixture.schedules`, `sd.enabled`, ...) add
or remove jobs and leave the others alone. The global `seed` and `device` are params of every job that
reads them, so changing either reruns those jobs (on another device a result may differ in its last
bits); thread counts are not params, so `--cores` or a profile's threads never rerun anything.

## Keys

`<name>` stands for any name chosen in the config (a dataset name, for instance).

"""


def config_readme(schema_path: str | Path = SCHEMA_PATH) -> str:
    """The text of ``config/README.md``: how to pass a config, and the table of every key (from the schema)."""
    return README_INTRO + schema_markdown(schema_path)


def main(argv: list[str] | None = None) -> None:
    """``python -m dfcore.config [--check FILE] [--markdown] [--readme]``: validate a config or print the key table."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m dfcore.config", description=main.__doc__)
    parser.add_argument("--check", metavar="FILE", help="validate a YAML config against the schema")
    parser.add_argument("--markdown", action="store_true", help="print the table of keys")
    parser.add_argument("--readme", action="store_true", help="print config/README.md (introduction and table of keys)")
    args = parser.parse_args(argv)
    if args.check:
        try:
            load_config(args.check)
        except ConfigError as err:
            print(err, file=sys.stderr)
            raise SystemExit(2) from None
        print(f"{args.check}: OK")
    if args.markdown:
        print(schema_markdown(), end="")
    if args.readme:
        print(config_readme(), end="")


if __name__ == "__main__":
    main()
