"""Every list of names that the config and the workflow choose from, each read from the registry that defines it.

==========================  ===============================================================
``schedules``               :data:`dfcore.schedules.SCHEDULES`
``trace_estimators``        :data:`dfcore.fisher.trace.TRACE_ESTIMATORS`
``fvp_estimators``          :data:`dfcore.fisher.vp.FVP_ESTIMATORS`
``trace_targets``           :data:`dfcore.models.networks.TRACE_TARGETS` that train on data alone
``positive_trace_targets``  :data:`dfcore.integrations.pretrained.POSITIVE_TRACE_TARGETS`
``trace_states``            :data:`dfcore.paths.TRACE_STATES`
``trace_parameterizations`` :data:`dfcore.models.trace_output.TRACE_PARAMETERIZATIONS`
``ode_solvers``             :data:`dfcore.likelihood.ODE_SOLVERS`
``step_controls``           :data:`dfcore.likelihood.STEP_CONTROLS`
``likelihood_methods``      :data:`dfcore.experiments.likelihood_methods.LIKELIHOOD_METHODS`
==========================  ===============================================================

The config schema names a registry where it would list names (``x-registry: trace_estimators``, with
``x-registry-except: [...]`` for a subset) and :func:`fill_registry_enums` turns that into the ``enum``; the
Snakemake rules build their wildcard constraints from :func:`registry_names` too. Adding an estimator, a trace
target or a schedule is therefore one class and one registry line.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["registry_names", "required_dependencies", "fill_registry_enums", "wildcard_pattern"]


def registry_names() -> dict[str, list[str]]:
    """The names of each registry, in registry order."""
    from dfcore.experiments.likelihood_methods import LIKELIHOOD_METHODS
    from dfcore.fisher import FVP_ESTIMATORS, TRACE_ESTIMATORS
    from dfcore.integrations.pretrained import POSITIVE_TRACE_TARGETS
    from dfcore.likelihood import ODE_SOLVERS, STEP_CONTROLS
    from dfcore.models.networks import TRACE_TARGETS
    from dfcore.models.trace_output import TRACE_PARAMETERIZATIONS
    from dfcore.paths import TRACE_STATES
    from dfcore.schedules import SCHEDULES

    return {
        "schedules": list(SCHEDULES),
        "trace_estimators": list(TRACE_ESTIMATORS),
        "fvp_estimators": list(FVP_ESTIMATORS),
        "trace_targets": [name for name, spec in TRACE_TARGETS.items() if spec.reference != "exact_mixture"],
        "positive_trace_targets": list(POSITIVE_TRACE_TARGETS),
        "trace_states": list(TRACE_STATES),
        "trace_parameterizations": list(TRACE_PARAMETERIZATIONS),
        "ode_solvers": list(ODE_SOLVERS),
        "step_controls": list(STEP_CONTROLS),
        "likelihood_methods": list(LIKELIHOOD_METHODS),
    }


def required_dependencies(cls: type) -> tuple[str, ...]:
    """The constructor arguments of ``cls`` without a default: what an estimator cannot be built without."""
    params = inspect.signature(cls).parameters.values()
    return tuple(p.name for p in params if p.default is inspect.Parameter.empty and p.kind != p.VAR_KEYWORD)


def wildcard_pattern(registry: str) -> str:
    """A Snakemake wildcard constraint matching exactly the names of ``registry``."""
    return "|".join(registry_names()[registry])


def fill_registry_enums(schema: Any, names: dict[str, list[str]] | None = None) -> Any:
    """``schema`` with every ``x-registry`` (and ``x-registry-except``) replaced, in place, by the ``enum`` of that
    registry's names (less the exceptions); an unknown registry or exception is a ValueError."""
    names = registry_names() if names is None else names
    if isinstance(schema, list):
        for item in schema:
            fill_registry_enums(item, names)
    elif isinstance(schema, dict):
        if "x-registry" in schema:
            registry = schema.pop("x-registry")
            if registry not in names:
                raise ValueError(f"schema: unknown x-registry {registry!r}; choose one of {sorted(names)}")
            excluded = schema.pop("x-registry-except", [])
            unknown = sorted(set(excluded) - set(names[registry]))
            if unknown:
                raise ValueError(f"schema: x-registry-except {unknown} are not in registry {registry!r}")
            schema["enum"] = [name for name in names[registry] if name not in excluded]
        for value in schema.values():
            fill_registry_enums(value, names)
    return schema
