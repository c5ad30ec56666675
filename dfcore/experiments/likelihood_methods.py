r"""The methods of the likelihood stage by name: each of ours is a trace estimator of
:data:`~dfcore.fisher.trace.TRACE_ESTIMATORS` with its settings (probes, the target of its trace net) and its role
in the tables; each peer is an adapter of :data:`~dfcore.integrations.peers.PEERS`. The settings are looked up
here by name, never parsed from it, and the config schema and the workflow read the names from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dfcore.fisher.common import build_estimator
from dfcore.fisher.trace import TRACE_ESTIMATORS, TraceEstimator, ZeroTrace
from dfcore.integrations.peers import PEERS

__all__ = [
    "OwnMethod",
    "OWN_METHODS",
    "FLOOR_METHOD",
    "HUTCHINSON_PROBES",
    "PEER_METHODS",
    "PEER_REFERENCE",
    "LIKELIHOOD_METHODS",
    "OWN_ESTIMATORS",
    "own_estimator",
    "method_role",
    "trace_target",
]


@dataclass(frozen=True)
class OwnMethod:
    """A method of ours: the trace estimator (a key of ``TRACE_ESTIMATORS``, or ``zero`` for
    :class:`~dfcore.fisher.trace.ZeroTrace`), its Rademacher probes, the target of its trace net (a key of
    :data:`~dfcore.models.networks.TRACE_TARGETS`; dftm only) and its role: ``sanity`` (the exact mixture's own
    trace), ``ours``, ``ablation`` (a trace net that saw the exact mixture) or ``floor`` (no trace: the cost of the
    ODE solve alone, the time every other method is divided by)."""

    estimator: str
    num_probes: int = 1
    trace_target: str = ""
    role: str = "ours"


OWN_METHODS: dict[str, OwnMethod] = {
    "analytic": OwnMethod("analytic", role="sanity"),
    "vjp": OwnMethod("vjp"),
    "hutchinson1": OwnMethod("hutchinson", num_probes=1),
    "hutchinson4": OwnMethod("hutchinson", num_probes=4),
    "hutchinson16": OwnMethod("hutchinson", num_probes=16),
    "dftm": OwnMethod("dftm", trace_target="sq_norm"),  # the headline: Alg. 1's target
    "dftm_residual": OwnMethod("dftm", trace_target="residual"),
    "dftm_divergence": OwnMethod("dftm", trace_target="divergence"),
    "dftm_mixture_posterior": OwnMethod("dftm", trace_target="mixture_posterior", role="ablation"),
    "floor": OwnMethod("zero", role="floor"),
}
# the row whose seconds every row's time_vs_floor divides by
FLOOR_METHOD = "floor"
# the Hutchinson rows by probe count, drawn as one connected line in the Pareto figure
HUTCHINSON_PROBES = {name: spec.num_probes for name, spec in OWN_METHODS.items() if spec.estimator == "hutchinson"}
# the estimators an OwnMethod names: the trace estimators, and the floor's zero trace
OWN_ESTIMATORS: dict[str, type[TraceEstimator]] = {**TRACE_ESTIMATORS, "zero": ZeroTrace}
PEER_METHODS = tuple(PEERS)
LIKELIHOOD_METHODS = (*OWN_METHODS, *PEER_METHODS)
# the method of ours that computes the same quantity as each peer (their agreement is reported against it)
PEER_REFERENCE = {
    "kdiffusion_hutchinson": "hutchinson1",
    "flow_matching_exact": "vjp",
    "flow_matching_hutchinson": "hutchinson1",
}


def method_role(method: str) -> str:
    """``sanity``, ``ours``, ``ablation``, ``floor`` (see :class:`OwnMethod`) or ``peer``."""
    return "peer" if method in PEER_METHODS else OWN_METHODS[method].role


def trace_target(method: str) -> str:
    """The target of the trace net ``method`` evaluates, or "" when it uses none."""
    return OWN_METHODS[method].trace_target if method in OWN_METHODS else ""


def own_estimator(method: str, pool: Mapping[str, Any]) -> TraceEstimator:
    """The estimator of our ``method`` (a key of :data:`OWN_METHODS`), built from those of the dependencies in
    ``pool`` (``denoiser``, ``schedule``, ``mixture``, ``trace_model``, ``generator``) its constructor takes, with the
    method's own ``num_probes``."""
    spec = OWN_METHODS[method]
    return build_estimator(
        OWN_ESTIMATORS, "trace", spec.estimator, {**pool, "num_probes": spec.num_probes}, strict=False
    )
