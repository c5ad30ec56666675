"""Workflow configuration: YAML loading and JSON-schema validation with defaults.

The schema (``workflow/schemas/config.schema.yaml``, shipped inside the package as
``dfcore/schemas/config.schema.yaml``) is the single description of every key;
:func:`validate_config` fills in its ``default`` values and reports every violation (up to
:data:`MAX_ERRORS`), each on one line that names the offending key and what is allowed; then the checks
between keys (:func:`cross_check`) run, again reporting each failed check with its key. YAML alias expansion
is bounded (:data:`MAX_NODES` nodes once every alias is expanded), in :func:`load_yaml` and again in
:func:`validate_config` for a config built elsewhere (Snakemake's own loader).
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

__all__ = [
    "ConfigError",
    "load_yaml",
    "validate_config",
    "cross_check",
    "full_schema",
    "load_config",
    "dataset_section",
    "target_section",
    "schema_markdown",
    "config_readme",
    "SCHEMA_PATH",
    "ParamDict",
    "canonical_params",
    "check_size",
]

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


MAX_ERRORS = 20  # errors reported at once
MAX_NODES = 100_000  # nodes of a config once every YAML alias is expanded (the shipped configs have < 2000)
MEMORY_LIMIT_BYTES = 16 * 2**30  # the largest single tensor a config may ask for


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range. ``errors`` holds one line per
    problem (each naming its key); the message is that line, or a count followed by the lines."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        self.errors = list(errors) if errors else [message]
        super().__init__(message)

    @classmethod
    def of(cls, errors: list[str]) -> ConfigError:
        """One error for the lines ``errors`` (at most :data:`MAX_ERRORS` of them are shown)."""
        if len(errors) == 1:
            return cls(errors[0])
        shown = errors[:MAX_ERRORS]
        more = f" (the first {MAX_ERRORS} shown)" if len(errors) > MAX_ERRORS else ""
        return cls(f"{len(errors)} config errors{more}:\n" + "\n".join(f"  {e}" for e in shown), errors)


def _expanded_size(root: Any, children: Any, limit: int) -> int:
    """The number of nodes of the tree below ``root`` with every shared node counted each time it is reached
    (as an alias expands), computed once per distinct node and stopped early past ``limit``."""
    sizes: dict[int, int] = {}

    def size(node: Any, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if depth > 1000:
            raise ConfigError("config: nested more than 1000 levels deep")
        sizes[key] = limit + 1  # a node met again while being sized is a cycle: too large
        total = 1
        for child in children(node):
            total += size(child, depth + 1)
            if total > limit:
                break
        sizes[key] = min(total, limit + 1)
        return sizes[key]

    return size(root, 0)


def _yaml_children(node: Any) -> list[Any]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _object_children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return []


def check_size(config: Any, where: str = "config") -> None:
    """Refuse a config whose expanded tree (YAML aliases expanded) has more than :data:`MAX_NODES` nodes."""
    if _expanded_size(config, _object_children, MAX_NODES) > MAX_NODES:
        raise ConfigError(
            f"{where}: more than {MAX_NODES} values once its YAML aliases are expanded (an alias bomb?); refused"
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error.

    Explicit keys are compared before YAML merge keys (``<<``) are expanded, so a key that
    overrides a merged-in one is still allowed, as YAML specifies.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first.line + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong, and where."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing, unreadable or malformed file, or a duplicate key, is one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err.strerror or err}") from None
    try:
        loader = _UniqueKeyLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node, _yaml_children, MAX_NODES) > MAX_NODES:
                raise ConfigError(
                    f"{path}: more than {MAX_NODES} values once its YAML aliases are expanded (an alias bomb?); refused"
                )
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _fill_defaults(validator_class: type[Any]) -> type:
    """A validator that sets each property's ``default`` before validating it."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: dict, instance: Any, schema: dict) -> Any:
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _is_finite_number(checker: Any, instance: Any) -> bool:
    """JSON type 'number' without inf and NaN (YAML's ``.inf`` and ``.nan`` load as floats)."""
    if not jsonschema.Draft202012Validator.TYPE_CHECKER.is_type(instance, "number"):
        return False
    return not isinstance(instance, float) or math.isfinite(instance)


def _finite_numbers(validator_class: type[Any]) -> type:
    """A validator whose type 'number' means a finite number."""
    checker = validator_class.TYPE_CHECKER.redefine("number", _is_finite_number)
    return jsonschema.validators.extend(validator_class, type_checker=checker)


_Validator = _fill_defaults(_finite_numbers(jsonschema.Draft202012Validator))


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "type" and isinstance(error.instance, float) and not math.isfinite(error.instance):
        return f"config key '{key}': {error.instance!r} is not a finite number"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = key if key != "<top level>" else "the top level"
        return f"config: unknown key(s) {extra} under {where}; allowed keys: {allowed}"
    if error.validator == "enum":
        return f"config key '{key}': {error.instance!r} is not allowed; choose one of {error.validator_value}"
    return f"config key '{key}': {error.message}"


def _without_defaults(schema: Any) -> Any:
    """A deep copy of ``schema`` with every ``default`` removed (nothing is filled in under it)."""
    if isinstance(schema, dict):
        return {k: _without_defaults(v) for k, v in schema.items() if k != "default"}
    if isinstance(schema, list):
        return [_without_defaults(v) for v in schema]
    return schema


def _keys_schema(properties: dict[str, Any], description: str) -> dict[str, Any]:
    """An object schema that allows exactly ``properties`` (defaults removed, none required)."""
    return {
        "description": description,
        "type": "object",
        "additionalProperties": False,
        "properties": _without_defaults(properties),
    }


# Sections whose ``overrides.<dataset>`` entries set keys of the section itself (dataset_section merges them).
OVERRIDDEN_SECTIONS = ("denoiser", "trace_net")


def full_schema(schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The schema of ``schema_path`` with the objects whose keys are those of another section filled in.

    ``denoiser.overrides.<dataset>`` and ``trace_net.overrides.<dataset>`` allow the keys of their section
    (less ``overrides``) with the same types and ranges, ``trace_net.targets.<target>`` those of ``trace_net``
    less ``target``, ``overrides`` and ``targets``, and ``trace_net.backbone`` the keys of
    ``denoiser.mlp`` and ``denoiser.unet``; none of them has defaults, so an override sets only what it names.
    """
    from dfcore.registries import fill_registry_enums

    schema = fill_registry_enums(load_yaml(schema_path))  # x-registry: the names of a dfcore registry
    sections = schema["properties"]
    trace_net = sections["trace_net"]["properties"]
    per_target = {key: sub for key, sub in trace_net.items() if key not in ("overrides", "targets", "target")}
    trace_net["targets"]["additionalProperties"] = _keys_schema(per_target, "keys of 'trace_net' for one target")
    for name in OVERRIDDEN_SECTIONS:
        props = sections[name]["properties"]
        own = {key: sub for key, sub in props.items() if key != "overrides"}
        props["overrides"]["additionalProperties"] = _keys_schema(own, f"keys of '{name}' for one data set")
    denoiser = sections["denoiser"]["properties"]
    backbone = {**denoiser["mlp"]["properties"], **denoiser["unet"]["properties"]}
    sections["trace_net"]["properties"]["backbone"].update(
        _keys_schema(backbone, "keys of denoiser.mlp / denoiser.unet for the trace net's own backbone")
    )
    return schema


def validate_config(config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate ``config`` in place against the schema, filling defaults, then check the names and shapes that
    refer to each other (:func:`cross_check`); raise :class:`ConfigError` with every bad key (up to
    :data:`MAX_ERRORS`), each named on its own line. The cross checks run once the schema holds."""
    check_size(config)
    validator = _Validator(full_schema(schema_path))
    errors = sorted(
        validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path)))
    )
    if errors:
        lines = list(dict.fromkeys(_describe(e) for e in errors))
        raise ConfigError.of(lines)
    cross_check(config)
    return config


# --------------------------------------------------------------------------------------------- #
# checks between keys: every name refers to something that exists, every shape agrees


DIGITS_SIZE = 1797  # samples in scikit-learn's digits
IMAGE_KINDS = {"digits"}
DATASET_KEYS = {  # keys of a 'datasets' entry that its kind reads
    "checkerboard": {"kind", "num_samples", "seed"},
    "digits": {"kind", "num_samples", "seed", "holdout", "split"},
    "gaussian_mixture": {"kind", "num_samples", "seed", "weights", "means", "stds"},
    "gaussian_mixture_lowrank": {
        "kind",
        "num_samples",
        "seed",
        "dim",
        "components",
        "rank",
        "noise",
        "factor_scale",
        "mean_scale",
        "weights",
    },
}
OT_DATASET_KEYS = {  # keys of an 'ot.datasets' entry that its kind reads (dfcore.data.ot_mixtures.make_ot_mixture)
    "gaussian": {"kind", "seed", "mean", "covariance", "scale"},
    "dirac": {"kind", "seed", "points"},
    "collinear": {"kind", "seed", "num_points", "scale"},
    "random_dirac": {"kind", "seed", "num_points", "scale"},
    "gaussian_mixture": {"kind", "seed", "num_components", "scale", "cov_scale"},
}


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"config key '{key}': {message}")


def _check_kind_keys(section: str, specs: dict[str, Any], allowed: dict[str, set[str]]) -> None:
    for name, spec in specs.items():
        extra = sorted(set(spec) - allowed[spec["kind"]])
        if extra:
            _fail(
                f"{section}.{name}.{extra[0]}",
                f"not read by kind {spec['kind']!r}, which reads {sorted(allowed[spec['kind']])}",
            )


def _check_name(key: str, name: str, names: Any, what: str) -> None:
    if name not in names:
        _fail(key, f"{name!r} is not a key of {what}; have {sorted(names)}")


def _dataset_dim(spec: dict[str, Any]) -> int:
    """Dimension of a 'datasets' entry (its kind fixes it)."""
    if spec["kind"] == "gaussian_mixture_lowrank":
        return int(spec["dim"])
    return {"checkerboard": 2, "digits": 64}.get(spec["kind"]) or len(spec["means"][0])


def _check_groups(key: str, groups: int, channels: list[int]) -> None:
    bad = [c for c in channels if c % groups]
    if bad:
        _fail(key, f"{groups} GroupNorm groups must divide every channel count; {bad} are not multiples")


def _check_datasets(config: dict[str, Any]) -> None:
    datasets = config["datasets"]
    _check_kind_keys("datasets", datasets, DATASET_KEYS)
    if datasets.get("digits", {}).get("kind") != "digits":
        _fail(
            "datasets.digits",
            "the adjoint digits task (adjoint.digits) trains on the data set 'digits', "
            "which must exist and be of kind 'digits'",
        )
    for name, spec in datasets.items():
        key = f"datasets.{name}"
        if spec["kind"] == "gaussian_mixture":
            k = len(spec["weights"])
            for field in ("means", "stds"):
                if len(spec[field]) != k:
                    _fail(f"{key}.{field}", f"has {len(spec[field])} entries but weights has {k}")
            dims = {len(m) for m in spec["means"]}
            if len(dims) != 1 or 0 in dims:
                _fail(
                    f"{key}.means",
                    f"every mean needs the same number (>= 1) of coordinates; got lengths {sorted(dims)}",
                )
        if spec["kind"] == "digits" and spec.get("num_samples", 0) > DIGITS_SIZE:
            _fail(f"{key}.num_samples", f"{spec['num_samples']} is more than the {DIGITS_SIZE} digits there are")


def _check_ot(config: dict[str, Any]) -> None:
    ot = config["ot"]
    _check_kind_keys("ot.datasets", ot["datasets"], OT_DATASET_KEYS)
    dim = ot["dim"]
    for name, spec in ot["datasets"].items():
        key = f"ot.datasets.{name}"
        for i, point in enumerate(spec.get("points", [])):
            if len(point) > dim:
                _fail(f"{key}.points.{i}", f"has {len(point)} coordinates but ot.dim is {dim}")
        if "mean" in spec and len(spec["mean"]) != dim:
            _fail(f"{key}.mean", f"has {len(spec['mean'])} coordinates but ot.dim is {dim}")
        if "covariance" in spec:
            cov = spec["covariance"]
            if len(cov) != dim or any(len(row) != dim for row in cov):
                _fail(f"{key}.covariance", f"must be {dim} x {dim} (ot.dim)")
            import numpy as np

            mat = np.asarray(cov, dtype=float)
            scale = max(float(np.abs(mat).max()), 1e-300)
            if not np.allclose(mat, mat.T, rtol=0, atol=1e-12 * scale) or np.linalg.eigvalsh(mat).min() <= 0:
                _fail(f"{key}.covariance", "must be symmetric positive definite")
    for i, name in enumerate(ot["convergence"]["datasets"]):
        _check_name(f"ot.convergence.datasets.{i}", name, ot["datasets"], "ot.datasets")


def _check_training(config: dict[str, Any]) -> None:
    datasets = config["datasets"]
    for section in OVERRIDDEN_SECTIONS:
        for name in config[section].get("overrides") or {}:
            _check_name(f"{section}.overrides.{name}", name, datasets, "datasets")
    for name, spec in datasets.items():
        merged = dataset_section(config["denoiser"], name)
        where = (
            f"denoiser.overrides.{name}.arch"
            if "arch" in config["denoiser"]["overrides"].get(name, {})
            else "denoiser.arch"
        )
        # a backbone stated at the level that also makes the trace net share the trunk would be ignored
        override = config["trace_net"]["overrides"].get(name, {})
        if dataset_section(config["trace_net"], name)["share_trunk"]:
            key = None
            if override.get("backbone"):
                key = f"trace_net.overrides.{name}.backbone"
            elif config["trace_net"].get("backbone") and "share_trunk" not in override:
                key = "trace_net.backbone"
            if key:
                _fail(key, f"is read only with share_trunk false, and the trace net of {name!r} shares the trunk")
        _check_target_backbones(config["trace_net"], name)
        image = spec["kind"] in IMAGE_KINDS
        if merged["arch"] == "unet" and not image:
            _fail(where, f"unet needs an image data set, and {name!r} is of kind {spec['kind']!r}")
        if image and merged["arch"] != "mlp":
            unet = merged["unet"]
            _check_groups("denoiser.unet.norm_num_groups", unet["norm_num_groups"], unet["block_out_channels"])


def _check_target_backbones(trace_net: dict[str, Any], name: str) -> None:
    """A ``targets`` entry's ``backbone`` is read only when the nets of that target on data set ``name`` have
    their own backbone (share_trunk false)."""
    section = dataset_section(trace_net, name)
    own = (trace_net.get("overrides") or {}).get(name, {}).get("targets") or {}
    for target, entry in (section.get("targets") or {}).items():
        if entry.get("backbone") and target_section(section, target)["share_trunk"]:
            where = f"trace_net.overrides.{name}.targets" if target in own else "trace_net.targets"
            _fail(
                f"{where}.{target}.backbone",
                f"is read only with share_trunk false, and the {target} nets of {name!r} share the trunk",
            )


def _check_references(config: dict[str, Any]) -> None:
    datasets = config["datasets"]
    for i, run in enumerate(config["nll"]["runs"]):
        _check_name(f"nll.runs.{i}.dataset", run["dataset"], datasets, "datasets")
    _check_name("trace_error.dataset", config["trace_error"]["dataset"], datasets, "datasets")
    adjoint = config["adjoint"]
    mixture = adjoint["mixture"]
    _check_name("adjoint.mixture.dataset", mixture["dataset"], datasets, "datasets")
    dim = _dataset_dim(datasets[mixture["dataset"]])
    if len(mixture["target"]) != dim:
        _fail(
            "adjoint.mixture.target",
            f"has {len(mixture['target'])} coordinates but data set {mixture['dataset']!r} has d = {dim}",
        )
    for key, section in (("adjoint", adjoint), ("sd.adjoint", config["sd"]["adjoint"])):
        late = [k for k in section["update_steps"] if k > section["num_steps"]]
        if late:
            _fail(f"{key}.update_steps", f"{late} exceed {key}.num_steps = {section['num_steps']} (steps still to go)")


def _check_likelihood(config: dict[str, Any]) -> None:
    datasets = config["datasets"]
    section = config["likelihood"]
    for i, name in enumerate(section["datasets"]):
        _check_name(f"likelihood.datasets.{i}", name, datasets, "datasets")
        if datasets[name]["kind"] not in ("gaussian_mixture", "gaussian_mixture_lowrank"):
            _fail(f"likelihood.datasets.{i}", f"{name!r} has no closed-form density (kind {datasets[name]['kind']!r})")
    for i, name in enumerate(section["table2"]["datasets"]):
        _check_name(f"likelihood.table2.datasets.{i}", name, section["datasets"], "likelihood.datasets")
    heldout = section["heldout"]
    if not heldout["train"]:
        return
    specs = {}
    for side in ("train", "test"):
        key, name = f"likelihood.heldout.{side}", heldout[side]
        _check_name(key, name, datasets, "datasets")
        spec = specs[side] = datasets[name]
        if spec["kind"] != "digits" or not spec.get("holdout"):
            _fail(key, f"{name!r} must be a digits data set with a holdout fraction (one side of a split)")
        if spec.get("split", "train") != side:
            _fail(f"datasets.{name}.split", f"{name!r} is likelihood.heldout.{side}, so its split must be {side!r}")
    for field in ("seed", "holdout"):
        train, test = (specs[side].get(field, 0) for side in ("train", "test"))
        if train != test:
            _fail(
                f"datasets.{heldout['test']}.{field}",
                f"{test} differs from {train} of {heldout['train']!r}: the test images would not be held out",
            )


def _check_schedules(config: dict[str, Any]) -> None:
    """Each schedule's ordered pair of parameters (:attr:`dfcore.schedules.Schedule.ordered_params`) is in order."""
    from dfcore.schedules import SCHEDULES

    for name, cls in SCHEDULES.items():
        if cls.ordered_params is None:
            continue
        low, high, strict = cls.ordered_params
        params = config["schedules"][name]
        if params[low] > params[high] or (strict and params[low] == params[high]):
            _fail(f"schedules.{name}.{low}", f"{params[low]} must be below {high} = {params[high]}")


def _check_sd(config: dict[str, Any]) -> None:
    sd = config["sd"]
    net = sd["trace_net"]
    _check_groups("sd.trace_net.norm_num_groups", net["norm_num_groups"], net["block_out_channels"])
    if not sd["enabled"]:
        return
    adjoint = sd["adjoint"]
    if adjoint["reward"] == "module" and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", adjoint["reward_module"]):
        _fail(
            "sd.adjoint.reward_module", f"reward 'module' needs 'package.module:Name'; got {adjoint['reward_module']!r}"
        )
    if sd["tiny"]:
        return
    needed = {"sd.pipeline": sd["pipeline"], "sd.trace_net.image_dir": net["image_dir"]}
    if adjoint["reward"] == "clip":
        needed["sd.adjoint.clip_path"] = adjoint["clip_path"]
    for key, value in needed.items():
        if not value or not Path(value).is_dir():
            _fail(
                key,
                f"a local folder is needed when sd.enabled is true and sd.tiny is false; {value!r} is not one "
                "(resources/README.md says what goes there)",
            )


def _check_pretrained(config: dict[str, Any]) -> None:
    pre = config["pretrained"]
    for name in ("train", "trace"):
        net = pre[name]
        _check_groups(f"pretrained.{name}.norm_num_groups", net["norm_num_groups"], net["block_out_channels"])
    trace = pre["trace"]
    if trace["states"] == "ode" and trace["target"] != "divergence":
        _fail(
            "pretrained.trace.states",
            f"'ode' needs pretrained.trace.target 'divergence' (the ODE states carry no clean x0); got {trace['target']!r}",
        )
    if not pre["enabled"]:
        return
    if pre["model"] is None:
        for key in ("images", "trace_images", "cond"):
            if pre[key] is not None:
                _fail(
                    f"pretrained.{key}",
                    f"{pre[key]!r} is given with pretrained.model null; the in-project DDPM takes the 8x8 digits "
                    "only and no conditioning (set pretrained.model to your pipeline folder, or this key to null)",
                )
    needed = {"pretrained.model": (pre["model"], "folder"), "pretrained.images": (pre["images"], "folder")}
    needed |= {"pretrained.trace_images": (pre["trace_images"], "folder"), "pretrained.cond": (pre["cond"], "file")}
    for key, (value, kind) in needed.items():
        if value is None:
            continue
        if not (Path(value).is_dir() if kind == "folder" else Path(value).is_file()):
            _fail(key, f"{value!r} is not a local {kind} (resources/README.md says what goes there)")


def _check_results(config: dict[str, Any]) -> None:
    results = str(config["results"])
    if not results.strip():
        _fail("results", "is empty; outputs would be written under the file-system root")
    path = Path(results).expanduser()
    if path.resolve() == Path(path.resolve().anchor):
        _fail("results", f"{results!r} is the file-system root")
    if path.exists() and not path.is_dir():
        _fail("results", f"{results!r} is an existing file, not a folder")


def _check_lengths(config: dict[str, Any]) -> None:
    protocols = config["ot"]["protocols"]
    if len(protocols["num_starts"]) != len(protocols["steps"]):
        _fail(
            "ot.protocols.num_starts",
            f"has {len(protocols['num_starts'])} entries but ot.protocols.steps has {len(protocols['steps'])} "
            "(one start count per step count)",
        )


def _check_ot_names(config: dict[str, Any]) -> None:
    ot = config["ot"]
    for i, name in enumerate(ot["protocols"]["datasets"]):
        _check_name(f"ot.protocols.datasets.{i}", name, ot["datasets"], "ot.datasets")


def _check_table2(config: dict[str, Any]) -> None:
    """Table 2 on mixtures: 'analytic' needs the exact mixture, which every data set of the stage has."""
    table2 = config["likelihood"]["table2"]
    if table2["datasets"] and not table2["methods"]:
        _fail("likelihood.table2.methods", "is empty, so Table 2 would have no rows")


def _check_lowrank(config: dict[str, Any]) -> None:
    for name, spec in config["datasets"].items():
        if spec["kind"] == "gaussian_mixture_lowrank" and "rank" in spec and "dim" in spec:
            if spec["rank"] > spec["dim"]:
                _fail(f"datasets.{name}.rank", f"{spec['rank']} is above the dimension dim = {spec['dim']}")
        if spec["kind"] == "gaussian_mixture_lowrank":
            missing = [k for k in ("dim", "components", "rank", "noise") if k not in spec]
            if missing:
                _fail(f"datasets.{name}.{missing[0]}", "is required by kind 'gaussian_mixture_lowrank'")
        if spec["kind"] == "digits" and spec.get("holdout") and "num_samples" in spec:
            test = max(1, round(spec["holdout"] * DIGITS_SIZE))
            side = spec.get("split", "train")
            size = test if side == "test" else DIGITS_SIZE - test
            if spec["num_samples"] > size:
                _fail(
                    f"datasets.{name}.num_samples",
                    f"{spec['num_samples']} is more than the {size} images of the {side} side of the split",
                )


def _check_unet_depth(config: dict[str, Any]) -> None:
    """Each UNet level but the last halves the image: 8x8 digits allow at most 4 levels."""
    for name, spec in config["datasets"].items():
        if spec["kind"] not in IMAGE_KINDS:
            continue
        merged = dataset_section(config["denoiser"], name)
        if merged["arch"] == "mlp":
            continue
        channels = merged["unet"]["block_out_channels"]
        if not channels:
            _fail("denoiser.unet.block_out_channels", "needs at least one level")
        if 2 ** (len(channels) - 1) > 8:
            _fail(
                "denoiser.unet.block_out_channels",
                f"has {len(channels)} levels, but the 8x8 images of {name!r} allow at most 4 (each level but the "
                "last halves the image)",
            )


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def _memory_estimates(config: dict[str, Any]) -> list[tuple[str, float]]:
    """(key, bytes of the largest tensor that key sizes), float64 data and float32 activations."""
    out: list[tuple[str, float]] = []
    datasets = config["datasets"]
    for name, spec in datasets.items():
        dim = _dataset_dim(spec)
        n = spec.get("num_samples", 1000)
        out.append((f"datasets.{name}.num_samples", 8.0 * n * dim))
        if spec["kind"] == "gaussian_mixture_lowrank":
            out.append((f"datasets.{name}.dim", 8.0 * spec.get("components", 1) * dim * dim))
        for section in OVERRIDDEN_SECTIONS:
            merged = dataset_section(config[section], name)
            width = max(merged.get("mlp", {}).get("hidden", 0), merged.get("head_hidden", 0), dim)
            out.append((f"{section}.batch_size", 4.0 * merged["batch_size"] * width))
        merged = dataset_section(config["denoiser"], name)
        hidden = merged["mlp"]["hidden"]
        out.append(("denoiser.mlp.hidden", 4.0 * hidden * hidden))
        if spec["kind"] in IMAGE_KINDS and merged["arch"] != "mlp":
            widest = max(merged["unet"]["block_out_channels"] or [1])
            out.append(("denoiser.batch_size", 4.0 * merged["batch_size"] * widest * 64))
    ot = config["ot"]
    out.append(("ot.num_starts", 8.0 * ot["num_starts"] * ot["num_steps"] * ot["dim"]))
    out.append(("ot.dim", 8.0 * ot["num_starts"] * ot["dim"] * ot["dim"]))
    for i, (steps, starts) in enumerate(zip(ot["protocols"]["steps"], ot["protocols"]["num_starts"])):
        out.append((f"ot.protocols.num_starts.{i}", 8.0 * starts * steps * ot["dim"]))
    conv = ot["convergence"]
    out.append(("ot.convergence.num_starts", 8.0 * conv["num_starts"] * max(conv["steps"]) * ot["dim"]))
    trace_dim = (
        _dataset_dim(datasets[config["trace_error"]["dataset"]]) if config["trace_error"]["dataset"] in datasets else 1
    )
    out.append(("trace_error.num_points", 8.0 * config["trace_error"]["num_points"] * trace_dim * trace_dim))
    widest = max((_dataset_dim(spec) for spec in datasets.values()), default=1)
    likelihood = config["likelihood"]
    for key, points in (
        ("nll.num_points", config["nll"]["num_points"]),
        ("likelihood.num_points", likelihood["num_points"]),
        ("likelihood.table2.num_points", likelihood["table2"]["num_points"]),
    ):
        out.append((key, 8.0 * points * widest * widest))
    adjoint = config["adjoint"]
    steps = adjoint["num_steps"] + 1
    mixture_dim = (
        _dataset_dim(datasets[adjoint["mixture"]["dataset"]]) if adjoint["mixture"]["dataset"] in datasets else 1
    )
    out.append(("adjoint.mixture.num_samples", 8.0 * adjoint["mixture"]["num_samples"] * steps * mixture_dim))
    out.append(("adjoint.digits.num_samples", 8.0 * adjoint["digits"]["num_samples"] * steps * 64))
    return out


def _check_memory(config: dict[str, Any]) -> None:
    """Refuse every key whose largest tensor (estimated by :func:`_memory_estimates`) is above the limit."""
    errors = [
        f"config key '{key}': makes a tensor of about {_gib(nbytes)}, above the limit of "
        f"{_gib(MEMORY_LIMIT_BYTES)} (dfcore.config.MEMORY_LIMIT_BYTES)"
        for key, nbytes in _memory_estimates(config)
        if nbytes > MEMORY_LIMIT_BYTES
    ]
    if errors:
        raise ConfigError.of(list(dict.fromkeys(errors)))


def cross_check(config: dict[str, Any]) -> None:
    """Checks between keys of a schema-valid config (defaults filled in), so that nothing that validation can
    see fails once jobs run: every data set named in nll.runs, trace_error, adjoint.mixture, ot.convergence and
    the overrides exists; the keys of each data set are those its kind reads and their lengths agree; ordered
    schedule parameters are ordered; update steps fit their samplers; GroupNorm groups divide the UNet channels;
    the likelihood stage's data sets have a closed-form density, and its held-out images are the other side of
    its training set's split; the pretrained stage's folders exist (an image folder or conditioning only with a
    model folder); lists that go in pairs have equal lengths; a low-rank data set's rank is at most its
    dimension; a UNet has as many levels as its images allow; no key asks for a tensor above
    :data:`MEMORY_LIMIT_BYTES`; ``results`` is a folder other than the root. Each check runs, and every one that
    fails is reported (:class:`ConfigError` with one line per failed check, up to :data:`MAX_ERRORS`)."""
    errors: list[str] = []
    groups = [_check_results, _check_schedules, _check_datasets, _check_lowrank, _check_lengths, _check_ot]
    groups += [_check_ot_names, _check_training, _check_unet_depth, _check_references, _check_likelihood]
    groups += [_check_table2, _check_sd, _check_pretrained]
    for check in groups:
        try:
            check(config)
        except ConfigError as err:
            errors.extend(err.errors)
        except (KeyError, TypeError, IndexError, ValueError) as err:  # an earlier failed check left this one blind
            if not errors:
                raise ConfigError(f"config: cannot check ({check.__name__}): {err}") from None
    if errors:
        raise ConfigError.of(errors)
    _check_memory(config)


def load_config(path: str | Path, schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Load a YAML config and validate it (with defaults)."""
    return validate_config(load_yaml(path), schema_path)


class ParamDict(dict):
    """A dict whose ``repr`` lists its keys sorted (its iteration order is kept): Snakemake compares a job's
    params by their ``repr``, so two mappings with the same items in another order are the same params."""

    def __repr__(self) -> str:
        items = sorted(self.items(), key=lambda item: repr(item[0]))
        return "{" + ", ".join(f"{key!r}: {value!r}" for key, value in items) + "}"


def canonical_params(value: Any) -> Any:
    """``value`` with every mapping at any depth a :class:`ParamDict` (same items, same order), lists and tuples
    rebuilt around their canonical items: its ``repr`` does not depend on the order of any mapping's keys."""
    if isinstance(value, dict):
        return ParamDict((key, canonical_params(item)) for key, item in value.items())
    if isinstance(value, list):
        return [canonical_params(item) for item in value]
    if isinstance(value, tuple):
        return tuple(canonical_params(item) for item in value)
    return value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in key by key, nested dicts merged the same way, other values replaced."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def dataset_section(section: dict[str, Any], dataset: str) -> dict[str, Any]:
    """A config section (``denoiser``, ``trace_net``) as dataset ``dataset`` sees it: ``overrides[dataset]``
    merged in key by key (nested dicts such as ``mlp`` or a ``targets`` entry too), ``overrides`` itself left out.

    It imports no torch: the workflow's training rules declare its result as their params, so a key of
    another dataset's override, or a base key that this dataset overrides, retrains nothing here.
    """
    base = {k: v for k, v in section.items() if k != "overrides"}
    return _merge(base, (section.get("overrides") or {}).get(dataset, {}))


def target_section(section: dict[str, Any], target: str) -> dict[str, Any]:
    """A ``trace_net`` section as the nets of regression target ``target`` see it: ``section`` (as a data set
    sees it, :func:`dataset_section`) with ``targets[target]`` merged in, ``targets`` itself left out and
    ``target`` set. Like :func:`dataset_section` it imports no torch, so a key of another target's entry retrains
    nothing here."""
    merged = copy.deepcopy({k: v for k, v in section.items() if k != "targets"})
    merged.update(copy.deepcopy((section.get("targets") or {}).get(target, {})))
    merged["target"] = target
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
    from dfcore.registries import fill_registry_enums

    rows = _schema_rows(fill_registry_enums(load_yaml(schema_path)))
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
config against it and fill in the defaults, and every bad value is reported (up to 20 at once), each in one line
that names the key. Checks between keys run too: names that refer to other sections, list lengths that must
agree, ranges that depend on other keys, a rough memory estimate of the largest tensor, and the `results`
folder; a YAML file whose aliases expand to more than 100,000 values is refused.
This file is generated from the schema (`make config-docs`, i.e.
`python -m dfcore.config --readme > config/README.md`); do not edit it by hand.

## Passing a config

```bash
snakemake --cores all                                      # config/config.yaml (small scale)
snakemake --cores all --configfile config/paper.yaml       # paper scale
snakemake --cores all --config seed=1 device=cpu           # single top-level keys on the command line
python -m dfcore config --configfile my.yaml              # validate a config file without running anything
```

A config file needs only the keys it changes; every other key keeps its default. Shipped configs:

- `config/config.yaml`: the default, small scale; runs end to end on 2 CPU cores.
- `config/test.yaml`: tiny; every stage at the smallest useful size, for CI and the workflow tests.
- `config/paper.yaml`: paper scale (longer training, more test points, tighter tolerances); hours on a CPU.
- `config/likelihood_cpu.yaml`: the likelihood benchmark's Gaussian mixtures with training sized for a 2-core CPU
  (the command that runs only that stage is at the top of the file).
- `config/trace_budget.yaml`: the trace-net training-budget study (`trace_budget`) at 0.25 to 4 times `trace_net.steps`
  (the command that runs only the study is at the top of the file).

## What reruns when a key changes

Each rule declares as Snakemake `params` exactly the config values its job reads, so a changed key reruns
the jobs that read it and the jobs downstream of them, nothing else (rerun trigger `params`, on in
`profiles/default` and `profiles/slurm`). For example `ot.convergence.steps` reruns `ot_convergence` only,
`nll.num_steps` the `nll` jobs, and `denoiser.steps` the denoisers (not those of a dataset whose
`denoiser.overrides` entry sets its own `steps`), the trace nets trained on them and their evaluations.
Keys that only choose which jobs exist (`nll.runs`, `adjoint.mixture.schedules`, `sd.enabled`, ...) add
or remove jobs and leave the others alone. The global `seed` and `device` are params of every job that
reads them, so changing either reruns those jobs (on another device a result may differ in its last
bits); thread counts are not params, so `--cores` or a profile's threads never rerun anything. Params are compared by a
canonical form (the keys of every mapping sorted), so reordering the keys of a config mapping reruns nothing.

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
