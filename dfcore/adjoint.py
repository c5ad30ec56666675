r"""The discrete adjoint of the PF-ODE sampler and adjoint guidance (Wang et al., 2025, Eq. 19-20).

The sampler (:mod:`dfcore.sampling`) takes DDIM steps (Euler in :math:`(\bar\sigma, \bar x)`) or Heun steps.

**Discrete adjoint.** For a loss :math:`L(x_0)`, :math:`\lambda_t = \partial L/\partial x_t` obeys
:math:`\lambda_t = (\partial x_s/\partial x_t)^\top \lambda_s` with :math:`\lambda_0 = \nabla L(x_0)`. Since
:math:`\partial\varepsilon/\partial x = \sigma_t F_t` (since :math:`\varepsilon = -\sigma_t\nabla\log q_t`), for DDIM

.. math:: \lambda_t = \frac{\alpha_s}{\alpha_t}\lambda_s + \Big(\sigma_s - \frac{\alpha_s\sigma_t}{\alpha_t}\Big)\sigma_t F_t^\top\lambda_s ,

the discretisation of :math:`d\lambda/dt = -(f I + \tfrac12 g^2 F_t)^\top\lambda` (Wang et al., 2025, Eq. 19).
For Heun, with :math:`\mu = \alpha_s\lambda_s` and :math:`\nu = \tfrac h2\alpha_s\sigma_s F_s(x'_s)^\top\mu`:
:math:`\lambda_t = (\mu + \nu)/\alpha_t + h\,\sigma_t F_t^\top(\tfrac12\mu + \nu)`.
Only Fisher-vector products are needed; they come from a
:class:`dfcore.fisher.FisherVectorProduct` (``analytic``, ``dfea`` (Eq. 20) or ``vjp``). :func:`autograd_adjoint` is the ground truth:
reverse-mode autograd through the whole discrete sampler, with activation checkpointing per step.

**Stability of DF-EA.** In terms of the posterior mean the DDIM step is
:math:`x_s = (\sigma_s/\sigma_t) x_t + (\alpha_s - \sigma_s\alpha_t/\sigma_t)\bar y(x_t)` with
:math:`\partial\bar y/\partial x = (\alpha_t/\sigma_t^2) C`, so the adjoint step is
:math:`\lambda_t = (\sigma_s/\sigma_t)\lambda_s + \kappa\, C\lambda_s`,
:math:`\kappa = (\alpha_s\alpha_t/\sigma_t^2)(1 - \bar\sigma_s/\bar\sigma_t) \ge 0`. Eq. 20 sets
:math:`C \approx x_0x_0^\top - \bar y\bar y^\top`: zero off the plane of :math:`x_0` and :math:`\bar y` (there
:math:`\lambda` only shrinks by :math:`\sigma_s/\sigma_t`, so DF-EA's adjoint carries the factor
:math:`\sigma(t_{min})/\sigma_t`), and in that plane eigenvalues of about
:math:`\langle\bar y, d\rangle \pm \|\bar y\|\|d\|`, :math:`d = x_0 - \bar y`, which grow :math:`\lambda` by
about :math:`1 + \kappa\|\bar y\|\|d\|` per step when the data are far from the origin (digits: 2-10x per step).
The error therefore compounds with the number of propagated steps; see the ``adjoint.update_steps`` and
``adjoint.t_min`` entries of the config schema for the measured effect and the defaults chosen from it.

**Guidance** (BELM-style, as in the authors' SD-1.5 code): at the steps listed in ``update_steps``
(counted as the number of sampling steps still to go: 10 and 5 of 20 by default, as in BELM)
the sampler looks ahead to :math:`x_0`, runs the adjoint back to the current state and moves it,
:math:`x_t \leftarrow x_t - \eta\lambda_t`, then carries on sampling. A non-finite adjoint is never applied:
the sample keeps its state and is reported as diverged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from dfcore.fisher.vp import fvp_estimator_from
from dfcore.mixtures import Mixture
from dfcore.models.base import Denoiser
from dfcore.sampling import Trajectory, ode_step, sample_trajectory, schedule_at
from dfcore.schedules import Schedule
from dfcore.sde import expand_like

__all__ = ["GuidedSample", "discrete_adjoint", "autograd_adjoint", "guided_sample", "cosine_and_relative_error"]

LossFn = Callable[[Tensor], Tensor]


def discrete_adjoint(
    traj: Trajectory,
    lam_final: Tensor,
    method: str,
    *,
    schedule: Schedule,
    denoiser: Denoiser | None = None,
    mixture: Mixture | None = None,
    stop: int = 0,
    dfea_endpoint: str = "denoised",
) -> list[Tensor]:
    r"""Run :math:`\lambda_t = (\partial x_s/\partial x_t)^\top\lambda_s` back along ``traj`` (module docstring).

    Returns ``lams`` with ``lams[k]`` the adjoint at ``traj.xs[k]`` for k = stop..K (entries before
    ``stop`` are None). ``method`` picks the Fisher-vector product (``analytic``, ``dfea``, ``vjp``);
    ``dfea`` uses the cached :math:`\bar y_\theta` and the endpoint ``traj.ybar_final``
    (``dfea_endpoint="denoised"``) or the raw state ``traj.x_final`` (``"state"``), so it calls no network.
    With the raw state, the :math:`\sigma_{min}\varepsilon` it still holds enters Eq. 20 multiplied by
    :math:`\alpha^2/\sigma^4`, which swamps the late steps.
    """
    if dfea_endpoint not in ("denoised", "state"):
        raise ValueError(f"dfea_endpoint must be 'denoised' or 'state'; got {dfea_endpoint!r}")
    num = len(traj.xs) - 1
    lams: list[Tensor | None] = [None] * (num + 1)
    lam = lam_final.detach()
    lams[num] = lam
    x0 = traj.ybar_final if dfea_endpoint == "denoised" else traj.x_final
    product = fvp_estimator_from(method, {"schedule": schedule, "mixture": mixture, "denoiser": denoiser, "x0": x0})

    def fvp(point: Tensor, time: Tensor, vec: Tensor, ybar: Tensor) -> Tensor:
        # the estimators refuse non-finite vectors; a non-finite adjoint row stays NaN (guided_sample flags it)
        bad = expand_like(~torch.isfinite(vec).flatten(1).all(1), vec)
        out = product(point, time, torch.where(bad, 0.0, vec), ybar=ybar)
        return torch.where(bad, math.nan, out)

    for k in range(num - 1, stop - 1, -1):
        x, cache = traj.xs[k], traj.caches[k]
        t, s = traj.times[k], traj.times[k + 1]
        tb, a_t, s_t = schedule_at(schedule, t, x)
        sb, a_s, s_s = schedule_at(schedule, s, x)
        if traj.sampler == "ddim":
            lam = a_s / a_t * lam + (s_s - a_s * s_t / a_t) * s_t * fvp(x, tb, lam, cache.ybar)
        else:
            assert cache.x_pred is not None and cache.ybar_pred is not None  # every Heun step records them
            h = s_s / a_s - s_t / a_t
            mu = a_s * lam
            nu = 0.5 * h * a_s * s_s * fvp(cache.x_pred, sb, mu, cache.ybar_pred)
            lam = (mu + nu) / a_t + h * s_t * fvp(x, tb, 0.5 * mu + nu, cache.ybar)
        lams[k] = lam
    return lams  # type: ignore[return-value]


def autograd_adjoint(
    denoiser: Denoiser,
    x: Tensor,
    times: Tensor,
    loss_fn: LossFn,
    sampler: str = "ddim",
    use_checkpoint: bool = True,
) -> tuple[list[Tensor], Tensor]:
    """Ground truth: :math:`\\partial L/\\partial x_k` at every state by autograd through the sampler.

    Each step is wrapped in ``torch.utils.checkpoint`` (non-reentrant), so only the K+1 states are kept
    and each step's activations are recomputed in the backward pass. Returns (grads per state, loss (B,)).
    """
    with torch.enable_grad():
        xs = [x.detach().requires_grad_(True)]
        for k in range(len(times) - 1):
            t, s = times[k], times[k + 1]
            if use_checkpoint:
                nxt = checkpoint(ode_step, denoiser, xs[-1], t, s, sampler, use_reentrant=False)
            else:
                nxt = ode_step(denoiser, xs[-1], t, s, sampler)
            nxt.retain_grad()
            xs.append(nxt)
        loss = loss_fn(xs[-1])
        loss.sum().backward()
    return [cast(Tensor, xi.grad).detach() for xi in xs], loss.detach()  # backward() filled every grad


def cosine_and_relative_error(est: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample cosine similarity and relative error ``||est - ref|| / ||ref||``, each shape (B,)."""
    e, r = est.flatten(1).double(), ref.flatten(1).double()
    cos = torch.nn.functional.cosine_similarity(e, r, dim=1, eps=1e-300)
    rel = (e - r).norm(dim=1) / r.norm(dim=1).clamp_min(1e-300)
    return cos, rel


@dataclass
class GuidedSample:
    """Result of :func:`guided_sample`."""

    x_final: Tensor  # final guided sample
    xs: list[Tensor]  # the guided trajectory on the grid (states after each update)
    loss_history: list[tuple[float, float]] = field(default_factory=list)  # (seconds, mean loss of look-ahead x0)
    final_loss: Tensor | None = None  # (B,)
    fvp_calls: int = 0
    lams: list[Tensor] = field(default_factory=list)  # the adjoint used at each update
    diverged: Tensor | None = (
        None  # (B,) bool: an update was rejected (non-finite lambda) or the final loss is not finite
    )


def guided_sample(
    denoiser: Denoiser,
    x: Tensor,
    times: Tensor,
    loss_fn: LossFn,
    *,
    method: str,
    update_steps: Sequence[int] = (10, 5),
    step_size: float = 0.1,
    iterations: int = 1,
    sampler: str = "ddim",
    mixture: Mixture | None = None,
    dfea_endpoint: str = "denoised",
    normalize: str,
) -> GuidedSample:
    r"""Adjoint-guided sampling (BELM-style schedule): at each step count in ``update_steps`` (steps still
    to go), ``iterations`` times: look ahead to :math:`x_0`, take :math:`\lambda_t` by :func:`discrete_adjoint`
    with ``method``, and set :math:`x_t \leftarrow x_t - \eta\lambda_t`. ``loss_fn`` maps (B, ...) to (B,).

    ``normalize`` sets the length of the update: ``none`` (:math:`\eta\lambda_t` as is), ``grad`` (:math:`\lambda_t` rescaled per sample to the norm of
    :math:`\nabla L(x_0)` of the look-ahead, the same for every method) or ``rms`` (rescaled to unit RMS per
    coordinate); the last two compare only the directions of the methods' adjoints.

    Divergence is never silent: a sample whose :math:`\lambda_t` is not finite keeps its state (the update
    is rejected) and is flagged in ``GuidedSample.diverged``, as is a sample whose final loss is not finite."""
    num = len(times) - 1
    out_of_range = [k for k in update_steps if not 1 <= k <= num]
    if out_of_range:
        raise ValueError(f"update_steps must lie in [1, {num}]; got {out_of_range}")
    if normalize not in ("none", "grad", "rms"):
        raise ValueError(f"normalize must be 'none', 'grad' or 'rms'; got {normalize!r}")
    update_at = {num - k for k in update_steps}
    start = time.perf_counter()
    history: list[tuple[float, float]] = []
    xs, fvp_calls, used = [x], 0, []
    diverged = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for k in range(num):
        if k in update_at:
            for _ in range(iterations):
                traj = sample_trajectory(denoiser, x, times[k:], sampler)
                with torch.enable_grad():
                    x0 = traj.x_final.detach().requires_grad_(True)
                    loss = loss_fn(x0)
                    (lam_final,) = torch.autograd.grad(loss.sum(), x0)
                history.append((time.perf_counter() - start, loss.mean().item()))
                lams = discrete_adjoint(
                    traj,
                    lam_final,
                    method,
                    schedule=denoiser.schedule,
                    denoiser=denoiser,
                    mixture=mixture,
                    dfea_endpoint=dfea_endpoint,
                )
                fvp_calls += (len(times) - 1 - k) * (2 if sampler == "heun" else 1)
                lam = lams[0]
                bad = ~torch.isfinite(lam).flatten(1).all(1)
                if bad.any():
                    diverged |= bad
                    lam = torch.where(expand_like(bad, lam), torch.zeros((), dtype=lam.dtype, device=lam.device), lam)
                if normalize != "none":  # same step length for every method: only the direction of lambda counts
                    lam = lam.double()
                    length = lam.flatten(1).norm(dim=1)
                    # rms: eta per coordinate (RMS); grad: eta * ||grad L(x_0)|| of the look-ahead
                    target = (
                        math.sqrt(lam[0].numel()) if normalize == "rms" else lam_final.flatten(1).double().norm(dim=1)
                    )
                    scale = torch.where(length > 0, target / length.clamp_min(1e-300), torch.zeros_like(length))
                    lam = lam * expand_like(scale, lam)
                x = x - step_size * lam.to(x.dtype)
                used.append(lams[0])
            xs[-1] = x
        with torch.no_grad():
            x = ode_step(denoiser, x, times[k], times[k + 1], sampler)
        xs.append(x)
    with torch.no_grad():
        final = loss_fn(x)
    diverged |= ~torch.isfinite(final)
    history.append((time.perf_counter() - start, final.mean().item()))
    return GuidedSample(x, xs, history, final, fvp_calls, used, diverged)
