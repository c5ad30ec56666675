r"""DF-TM rescaled per sample by the exact trace at a few states of its own solve (this project's extension, not
the paper's).

With Eq. 17 the log-density increment of Eq. 14 splits into a part that is the same for every sample and the
learned part:

.. math:: \Delta = J - I,\qquad J = \int \big(f d + \tfrac{g^2 d}{2\sigma^2}\big)\,dt,\qquad
          I = \int \tfrac{g^2}{2}\,\tfrac{\alpha^2}{\sigma^4}\,V_\theta(x_t, t)\,dt,

with :math:`V_\theta` the trace net's posterior variance. At K anchors, the first evaluations of K evenly spaced
solver steps, the exact trace of the model (:class:`~dfcore.fisher.trace.VJPTrace`) gives the model's own posterior
variance :math:`V = (d/\sigma^2 - \operatorname{tr}F)\,\sigma^4/\alpha^2`, and the ratio

.. math:: c = \frac{\sum_k u_k V(x_k, t_k)}{\sum_k u_k V_\theta(x_k, t_k)},\qquad u_k = \tfrac{g^2}{2}\tfrac{\alpha^2}{\sigma^4}(t_k),

estimates by how much the net's :math:`I` is off for this sample (a ratio estimator: a net that is off by a
constant factor along a sample's path is corrected exactly). Since :math:`u_k V = \tfrac{g^2}{2}(d/\sigma^2 -
\operatorname{tr}F)` at :math:`t_k`, it is computed from the two traces directly. The anchored increment is :math:`J - cI`, with
:math:`c \ge 0`, so the trace stays below :math:`d/\sigma^2`. The anchors cost K exact traces (d VJPs each) per
sample, against one per solver evaluation for ``vjp``.

Fixed-step solvers only (``euler``, ``rk4``): the grid is then the same for every sample, so :math:`J` is the same
quadrature of a function of t alone, computed once, and :math:`I = J - \Delta`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from dfcore.fisher.trace import DFTMTrace, TraceEstimator
from dfcore.likelihood import LikelihoodResult, LogPrior, bits_per_dim, log_likelihood, solver_options
from dfcore.schedules import Schedule

__all__ = [
    "EVALUATIONS_PER_STEP",
    "AnchoredLikelihood",
    "anchor_steps",
    "anchored_log_likelihood",
]

# drift evaluations per step of torchdiffeq's fixed-grid solvers (its rk4 is the 3/8 rule: 4 stages, no FSAL)
EVALUATIONS_PER_STEP = {"euler": 1, "rk4": 4}


@dataclass
class AnchoredLikelihood:
    """What :func:`anchored_log_likelihood` returns: the plain DF-TM solve, the same solve rescaled per sample,
    the scale c (B,), the times of the anchors (K,) and the seconds spent on the anchors' exact traces."""

    plain: LikelihoodResult
    anchored: LikelihoodResult
    scale: Tensor
    anchor_times: Tensor
    anchor_seconds: float


def anchor_steps(num_steps: int, anchors: int) -> list[int]:
    """The K = ``anchors`` solver steps whose first evaluation is an anchor, evenly spaced from step 0."""
    if not 1 <= anchors <= num_steps:
        raise ValueError(f"anchors must be between 1 and num_steps = {num_steps}; got {anchors}")
    return sorted({(j * num_steps) // anchors for j in range(anchors)})


class _AnchorRecorder(TraceEstimator):
    """DF-TM's evaluations, unchanged; at the anchors also the exact trace, recorded with DF-TM's."""

    name = "dftm_anchor_recorder"
    label = "DF-TM (anchors recorded)"

    def __init__(self, dftm: DFTMTrace, exact: TraceEstimator, evaluations: set[int]) -> None:
        self.dftm, self.exact, self.evaluations = dftm, exact, evaluations
        self.schedule, self.denoiser, self.trace_model = dftm.schedule, dftm.denoiser, dftm.trace_model
        self.count = 0
        self.records: list[tuple[Tensor, Tensor, Tensor]] = []  # (t, exact trace, DF-TM's trace) per anchor
        self.seconds = 0.0

    def trace(self, x: Tensor, t: Tensor) -> Tensor:
        return self.dftm.trace(x, t)

    def eps_and_trace(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        eps, trace = self.dftm.eps_and_trace(x, t)
        if self.count in self.evaluations:
            start = time.perf_counter()
            tt = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
            self.records.append((tt, self.exact(x, tt), trace))
            self.seconds += time.perf_counter() - start
        self.count += 1
        return eps, trace


def _sample_free_part(schedule: Schedule, dim: int, t_min: float, t_max: float, solver: str, num_steps: int) -> Tensor:
    r""":math:`J`, the solver's quadrature of :math:`f d + g^2 d/(2\sigma^2)` on the solve's own grid (a scalar)."""
    times = torch.tensor([t_min, t_max], dtype=torch.float64)

    def integrand(t: Tensor, _: Tensor) -> Tensor:
        tt = t.to(torch.float64).reshape(1)
        return (schedule.f(tt) * dim + 0.5 * schedule.g2(tt) * dim / schedule.sigma(tt) ** 2).reshape(())

    return odeint(
        integrand, torch.zeros((), dtype=torch.float64), times, **solver_options(solver, times, 0.0, 0.0, num_steps)
    )[-1]


def anchored_log_likelihood(
    x: Tensor,
    trace: DFTMTrace,
    exact: TraceEstimator,
    *,
    anchors: int,
    log_prior: LogPrior,
    t_min: float,
    t_max: float = 1.0,
    solver: str = "rk4",
    num_steps: int = 20,
) -> AnchoredLikelihood:
    """:func:`~dfcore.likelihood.log_likelihood` with DF-TM ``trace``, and the same solve rescaled per sample by
    ``exact`` (the model's exact trace, e.g. :class:`~dfcore.fisher.trace.VJPTrace` of ``trace.denoiser``) at
    ``anchors`` evenly spaced steps (module docstring)."""
    if solver not in EVALUATIONS_PER_STEP:
        raise ValueError(f"anchors need a fixed-step solver ({list(EVALUATIONS_PER_STEP)}); got {solver!r}")
    per_step = EVALUATIONS_PER_STEP[solver]
    steps = anchor_steps(num_steps, anchors)
    recorder = _AnchorRecorder(trace, exact, {n * per_step for n in steps})
    start = time.perf_counter()
    plain = log_likelihood(
        x, recorder, log_prior=log_prior, t_min=t_min, t_max=t_max, solver=solver, num_steps=num_steps
    )
    dim = x[0].numel()
    j = _sample_free_part(trace.schedule, dim, t_min, t_max, solver, num_steps).to(plain.delta)
    t_k = torch.stack([r[0][0] for r in recorder.records])
    bound = (dim / trace.schedule.sigma(t_k) ** 2)[:, None]
    half_g2 = (0.5 * trace.schedule.g2(t_k))[:, None]
    exact_part = (half_g2 * (bound - torch.stack([r[1] for r in recorder.records]))).sum(0)  # sum_k u_k V
    net_part = (half_g2 * (bound - torch.stack([r[2] for r in recorder.records]))).sum(0)  # sum_k u_k V_theta
    scale = (exact_part / net_part).clamp(min=0.0)
    delta = j - scale * (j - plain.delta)
    log_q = plain.prior + delta
    seconds = time.perf_counter() - start
    anchored = LikelihoodResult(log_q, bits_per_dim(log_q, dim), plain.prior, delta, plain.x_T, plain.nfe, seconds)
    return AnchoredLikelihood(plain, anchored, scale, t_k, recorder.seconds)
