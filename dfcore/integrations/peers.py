r"""Thin adapters that hand one trained denoiser to other libraries' likelihood code.

Both peers integrate the same probability-flow ODE as :func:`dfcore.likelihood.log_likelihood`
(Wang et al., 2025, Eq. 14; Song et al., 2021, Eq. 39), each in its own coordinates:

* **k-diffusion** (``k_diffusion.sampling.log_likelihood``; Karras et al., 2022) works in the VE variables
  :math:`\tilde x = x/\alpha_t`, :math:`\tilde\sigma = \sigma_t/\alpha_t` with a denoiser
  :math:`D(\tilde x, \tilde\sigma) = E[x_0 | \tilde x]`, the ODE :math:`d\tilde x/d\tilde\sigma = (\tilde x - D)/\tilde\sigma`,
  a single Rademacher Hutchinson probe held fixed along the solve, dopri5, and the prior
  :math:`\mathcal N(0, \tilde\sigma_{max}^2 I)`. The adapter gives it
  :math:`D(\tilde x, \tilde\sigma) = \bar y_\theta(\alpha_t\tilde x, t)` with :math:`t = r^{-1}(\tilde\sigma)` and
  maps back: :math:`\log q_{t_{min}}(x) = \log \tilde p_{\tilde\sigma_{min}}(x/\alpha_{t_{min}}) - d\log\alpha_{t_{min}}`.
* **flow_matching** (``flow_matching.solver.ODESolver.compute_likelihood``; Lipman et al., 2024) integrates
  :math:`dx/ds = u(x, s)` from data (s = 1) to source (s = 0) and adds :math:`\int \nabla\!\cdot u\,ds`, with the
  exact divergence (d backward passes, one per coordinate) or a fixed Rademacher Hutchinson probe. The adapter
  sets :math:`\tau(s) = t_{max} - s(t_{max} - t_{min})` and :math:`u(x, s) = -(t_{max} - t_{min})\,h(x, \tau(s))`
  with the PF-ODE velocity :math:`h = f x - \tfrac12 g^2 \nabla\log q_\tau` of the denoiser, and passes our own prior
  (:func:`dfcore.likelihood.prior_log_prob`), so its exact-divergence result is the same quantity as our ``vjp``.

Neither library is a dependency: each is imported when its adapter is called, and :class:`PeerUnavailable`
(an ``ImportError``) says which package is missing. Nothing of theirs is copied here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from dfcore.models.base import Denoiser
from dfcore.sde import noise_ratio, pf_ode_velocity, time_at_noise_ratio

__all__ = ["PEERS", "PeerUnavailable", "peer_available", "kdiffusion_log_likelihood", "flow_matching_log_likelihood"]

# method name in the benchmark -> (python package, pip requirement)
PEERS = {
    "kdiffusion_hutchinson": ("k_diffusion", "k-diffusion==0.1.1.post1"),
    "flow_matching_exact": ("flow_matching", "flow-matching==1.0.10"),
    "flow_matching_hutchinson": ("flow_matching", "flow-matching==1.0.10"),
}


class PeerUnavailable(ImportError):
    """A peer library is not installed (or does not import) in this environment."""


def _import_peer(method: str) -> Any:
    package, requirement = PEERS[method]
    try:
        if package == "k_diffusion":
            import k_diffusion.sampling as module
        else:
            import flow_matching.solver as module
    except Exception as err:  # ImportError, or a broken install (e.g. a torchvision built for another torch)
        raise PeerUnavailable(
            f"{method}: the peer package {package!r} does not import here ({type(err).__name__}: "
            f"{err}); install it with `pip install '{requirement}'` (see README, 'Peers')"
        ) from None
    return module


def peer_available(method: str) -> str | None:
    """None when the peer of ``method`` imports, else the one-line reason it does not."""
    try:
        _import_peer(method)
    except PeerUnavailable as err:
        return str(err)
    return None


def kdiffusion_log_likelihood(
    x: Tensor,
    denoiser: Denoiser,
    *,
    t_min: float,
    t_max: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    seed: int = 0,
) -> dict[str, Any]:
    r"""``k_diffusion.sampling.log_likelihood`` (Hutchinson, dopri5) of ``x`` (B, d) under ``denoiser``; returns
    ``log_q`` (:math:`\log q_{t_{min}}(x)`, (B,), nats), ``nfe`` and ``seconds``. Its probe is drawn from torch's
    global generator, seeded here with ``seed``."""
    sampling = _import_peer("kdiffusion_hutchinson")
    schedule = denoiser.schedule
    x = x.to(torch.float64)
    dim = x[0].numel()
    t_lo, t_hi = torch.tensor(t_min, dtype=torch.float64), torch.tensor(t_max, dtype=torch.float64)
    alpha_min = float(schedule.alpha(t_lo))
    s_min, s_max = float(noise_ratio(schedule, t_lo)), float(noise_ratio(schedule, t_hi))

    def model(x_tilde: Tensor, s: Tensor) -> Tensor:
        t = time_at_noise_ratio(schedule, s.to(torch.float64), t_min * (1 - 1e-9), t_max)
        return denoiser.posterior_mean(schedule.alpha(t)[:, None] * x_tilde, t)

    torch.manual_seed(int(seed))
    start = time.perf_counter()
    log_p, info = sampling.log_likelihood(model, x / alpha_min, s_min, s_max, atol=atol, rtol=rtol)
    seconds = time.perf_counter() - start
    return {"log_q": log_p.detach() - dim * math.log(alpha_min), "nfe": int(info["fevals"]), "seconds": seconds}


class _PFVelocity(nn.Module):
    """The PF-ODE velocity of a denoiser in flow_matching's time s (data at s = 1, prior at s = 0)."""

    def __init__(self, denoiser: Denoiser, t_min: float, t_max: float) -> None:
        super().__init__()
        self.denoiser, self.t_min, self.t_max = denoiser, float(t_min), float(t_max)
        self.nfe = 0

    def forward(self, x: Tensor, t: Tensor, **extras: Any) -> Tensor:
        self.nfe += 1
        span = self.t_max - self.t_min
        # dopri5's first-step heuristic probes one s beyond the grid (flow_matching passes no first_step):
        # the clamp keeps that probe inside the schedule's (0, 1]; accepted steps never leave [0, 1].
        tau = (self.t_max - span * t.to(torch.float64)).clamp(self.t_min, self.t_max).expand(x.shape[0])
        score = self.denoiser.score(x, tau)
        return -span * pf_ode_velocity(x, tau, score, self.denoiser.schedule)


def flow_matching_log_likelihood(
    x: Tensor,
    denoiser: Denoiser,
    *,
    log_prior: Callable[[Tensor], Tensor],
    t_min: float,
    t_max: float = 1.0,
    exact: bool,
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    r"""``flow_matching.solver.ODESolver.compute_likelihood`` of ``x`` (B, d) under ``denoiser`` with the prior
    ``log_prior`` at ``t_max`` (exact divergence when ``exact``, else a Rademacher probe drawn from torch's global
    generator seeded with ``seed``); returns ``log_q`` (:math:`\log q_{t_{min}}(x)`, (B,)), ``nfe``, ``seconds``."""
    solver_mod = _import_peer("flow_matching_exact" if exact else "flow_matching_hutchinson")
    velocity = _PFVelocity(denoiser, t_min, t_max)
    ode = solver_mod.ODESolver(velocity_model=velocity)
    x = x.to(torch.float64)
    grid = torch.tensor([1.0, 0.0], dtype=torch.float64, device=x.device)
    step = None if solver == "dopri5" else 1.0 / num_steps
    torch.manual_seed(int(seed))
    # compute_likelihood makes its probe and its log-det accumulator in the default dtype: float64 here,
    # so they match the float64 state (and the sum is not kept in float32).
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        start = time.perf_counter()
        _, log_q = ode.compute_likelihood(
            x_1=x,
            log_p0=log_prior,
            step_size=step,
            method=solver,
            atol=atol,
            rtol=rtol,
            time_grid=grid,
            exact_divergence=exact,
        )
        seconds = time.perf_counter() - start
    finally:
        torch.set_default_dtype(previous)
    return {"log_q": log_q.detach().to(torch.float64), "nfe": velocity.nfe, "seconds": seconds}
