"""Workflow configuration: YAML loading and JSON-schema validation with defaults.

The schema (``workflow/schemas/config.schema.yaml``) is the single description of every key;
:func:`validate_config` fills in its ``default`` values and turns the first violation into one
line that names the offending key and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

__all__ = ["ConfigError", "load_yaml", "validate_config", "load_config", "SCHEMA_PATH"]

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


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
