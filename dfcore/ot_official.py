r"""The authors' published Table 3 procedure (protocol ``official``), batched over start points.

Wang et al. (2025) release one script for Table 3 (``OT/ot.py``). Its procedure, written here from its
description (grid, coefficient table, update order, dtype), for any mixture and for a batch of starts:

**Grid.** A diffusers ``DDIMScheduler`` with :math:`T = 1000` training steps and scaled-linear betas
:math:`\beta_i = (\sqrt{0.00085} + \tfrac{i}{T-1}(\sqrt{0.012} - \sqrt{0.00085}))^2` (float32),
:math:`\bar\alpha_i = \prod_{j \le i} (1 - \beta_j)`, and ``timestep_spacing='linspace'``:
:math:`\tau_k = \mathrm{round}((N-1-k)(T-1)/(N-1))`, :math:`k = 0, \dots, N-1`, so
:math:`\tau_0 = 999 > \dots > \tau_{N-1} = 0` for ``num_steps`` :math:`= N`.

**Loop** (Alg. 2 with a DDIM path). For :math:`k = 0, \dots, N-2` (:math:`N - 1` steps; the last
timestep is reached, never evaluated), with :math:`t = \tau_k/1000`, :math:`s = \tau_{k+1}/1000` and
:math:`\Delta_k = -(\tau_k - \tau_{k+1})/1000 < 0`:

.. math::

    B_k = f_t I - \tfrac12 g_t^2 F_t(x_k), \qquad A \leftarrow A + \Delta_k B_k A, \\
    \hat\varepsilon = (x_k - \alpha_t\, E[x_0 \mid x_k]) / \sigma_t, \qquad
    x_{k+1} = \tfrac{\alpha_s}{\alpha_t} x_k + (\sigma_s - \sigma_t \tfrac{\alpha_s}{\alpha_t})\, \hat\varepsilon,

with :math:`A_0 = I`, :math:`x_0 \sim N(0, I)` for every schedule, all in float32. :math:`F_t` is the exact
Fisher of the data mixture, :math:`F_t = I/\sigma_t^2 - (\alpha_t^2/\sigma_t^4)\,\mathrm{Cov}[x_0 \mid x_t]`
for Diracs, so :math:`B_k` is the script's :math:`(f - g^2/2\sigma^2) I + (\alpha^2 g^2 / 2\sigma^4)\,\mathrm{Cov}`.
The posterior weights are a softmax of :math:`-\|x - \alpha_t y_i\|^2 / 2\sigma_t^2`, equal to the script's
:math:`v_i / \sum_j v_j` wherever those exponentials do not all underflow.

**Coefficient table** (:math:`\tau = 1000 t`, :math:`\beta_\tau` and :math:`\bar\alpha_\tau` from the grid's table):

======  =============================  ====================================  ===================  =====================================================================
        :math:`\alpha_t`               :math:`\sigma_t`                      :math:`f_t`          :math:`g_t^2`
======  =============================  ====================================  ===================  =====================================================================
VP      :math:`\sqrt{\bar\alpha_\tau}`  :math:`\sqrt{1 - \bar\alpha_\tau}`    :math:`-500\beta_\tau`  :math:`1000\beta_\tau`
subVP   :math:`\sqrt{\bar\alpha_\tau}`  :math:`\sqrt{1 - \bar\alpha_\tau}`    :math:`-500\beta_\tau`  :math:`1000\beta_\tau (1 - e^{-2 b_{T-1} t - (b_0 - b_{T-1}) t^2})`, :math:`b_i = 1000\beta_i`
VE      1                              :math:`\sqrt t`                        0                    1
EDM     1                              :math:`t`                              0                    :math:`2t`
======  =============================  ====================================  ===================  =====================================================================

VP, VE and EDM are consistent: :math:`g^2 = d\sigma^2/dt - 2 f \sigma^2` (for VP to :math:`O(1/T)`, the
discrete table). subVP is not: its :math:`\alpha, \sigma` are VP's, so the states follow VP's DDIM path,
while its :math:`g^2` carries sub-VP's discount factor (with :math:`b_{T-1} = 12` and :math:`b_0 = 0.85` in the
places of Song et al.'s :math:`\beta_{min}` and :math:`\beta_{max}`). For the VP path
:math:`d\sigma^2/dt - 2f\sigma^2 = 1000\beta_\tau`, so the subVP row integrates A with a Fisher term
scaled down by the discount factor, which is not the Jacobian flow of the map that moves the states
(:func:`subvp_discount` gives the factor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dfcore.mixtures import Mixture
from dfcore.schedules import Schedule

__all__ = [
    "OFFICIAL_SCHEDULES",
    "NUM_TRAIN_TIMESTEPS",
    "BETA_START",
    "BETA_END",
    "scaled_linear_betas",
    "ddim_timesteps",
    "OfficialSchedule",
    "subvp_discount",
    "official_start",
    "ddim_step",
    "OfficialResult",
    "official_fundamental",
]

OFFICIAL_SCHEDULES = ("VE", "VP", "subVP", "EDM")
OfficialName = Literal["VE", "VP", "subVP", "EDM"]  # the names in OFFICIAL_SCHEDULES
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def scaled_linear_betas(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Tensor:
    r"""diffusers' ``scaled_linear`` betas, float32: :math:`\beta_i = (\sqrt{0.00085} + \tfrac{i}{T-1}(\sqrt{0.012}-\sqrt{0.00085}))^2`."""
    return torch.linspace(BETA_START**0.5, BETA_END**0.5, num_train_timesteps, dtype=torch.float32) ** 2


def ddim_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Tensor:
    r"""The ``DDIMScheduler`` grid with ``timestep_spacing='linspace'``: round(linspace(0, T-1, N)) reversed, int64 (N,)."""
    if not 2 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must lie in [2, {num_train_timesteps}]; got {num_steps}")
    grid = torch.linspace(0.0, num_train_timesteps - 1, num_steps, dtype=torch.float64).round()
    return grid.flip(0).to(torch.int64)


def subvp_discount(t: Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Tensor:
    r"""The subVP row's factor :math:`1 - \exp(-2 b_{T-1} t - (b_0 - b_{T-1}) t^2)`, :math:`b_i = 1000 \beta_i`, in t's dtype."""
    betas = scaled_linear_betas(num_train_timesteps).to(dtype=t.dtype, device=t.device)
    b_first, b_last = betas[0] * 1000, betas[-1] * 1000
    return 1.0 - torch.exp(-2 * b_last * t - (b_first - b_last) * t**2)


class OfficialSchedule(Schedule):
    r"""One row of the published coefficient table (see the module docstring), as a :class:`Schedule`.

    Time is :math:`t = \tau / 1000` for the integer timestep :math:`\tau`; the table entries of VP and
    subVP are looked up at :math:`\tau = \mathrm{round}(1000 t)`, so they are defined on the grid only.
    Values are computed in the dtype of ``t`` from the float32 beta table, as in the script.
    """

    def __init__(self, name: OfficialName) -> None:
        if name not in OFFICIAL_SCHEDULES:
            raise ValueError(f"unknown official schedule {name!r}; choose one of {list(OFFICIAL_SCHEDULES)}")
        self.name = name
        self._betas = scaled_linear_betas()
        self._alphas_cumprod = torch.cumprod(1.0 - self._betas, dim=0)

    def _table(self, table: Tensor, t: Tensor) -> Tensor:
        index = torch.round(t.detach().to(torch.float64) * NUM_TRAIN_TIMESTEPS).to(torch.int64)
        return table.to(device=t.device)[index.cpu()].to(dtype=t.dtype, device=t.device)

    def alpha(self, t: Tensor) -> Tensor:
        if self.name in ("VE", "EDM"):
            return torch.ones_like(t)
        return self._table(self._alphas_cumprod, t) ** 0.5

    def sigma(self, t: Tensor) -> Tensor:
        if self.name == "VE":
            return torch.sqrt(t)
        if self.name == "EDM":
            return t
        return (1.0 - self._table(self._alphas_cumprod, t)) ** 0.5

    def f(self, t: Tensor) -> Tensor:
        if self.name in ("VE", "EDM"):
            return torch.zeros_like(t)
        return -0.5 * self._table(self._betas, t) * NUM_TRAIN_TIMESTEPS

    def g2(self, t: Tensor) -> Tensor:
        if self.name == "VE":
            return torch.ones_like(t)
        if self.name == "EDM":
            return 2 * t
        beta = self._table(self._betas, t) * NUM_TRAIN_TIMESTEPS
        return beta * subvp_discount(t) if self.name == "subVP" else beta

    def params(self) -> dict[str, object]:
        return {
            "name": self.name,
            "beta_start": BETA_START,
            "beta_end": BETA_END,
            "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        }


def official_start(n: int, dim: int, *, seed: int = 0, device: str | torch.device = "cpu") -> Tensor:
    """Start points x ~ N(0, I), (n, dim) float32, drawn on the CPU with a seeded generator (same on every device)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(n, dim, generator=gen, dtype=torch.float32).to(device)


def ddim_step(mixture: Mixture, schedule: OfficialSchedule, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
    r"""Deterministic DDIM step from t to s: :math:`\tfrac{\alpha_s}{\alpha_t} x + (\sigma_s - \sigma_t\tfrac{\alpha_s}{\alpha_t})\hat\varepsilon`,
    :math:`\hat\varepsilon = -\sigma_t \nabla\log q_t(x) = (x - \alpha_t E[x_0|x])/\sigma_t` (differentiable in x)."""
    alpha_t, sigma_t = schedule(t)
    alpha_s, sigma_s = schedule(s)
    eps = -sigma_t * mixture.score(x, t, schedule)
    coef_x = alpha_s / alpha_t
    return coef_x * x + (sigma_s - sigma_t * coef_x) * eps


@dataclass
class OfficialResult:
    """Output of :func:`official_fundamental`.

    Attributes:
        timesteps: the integer grid (N,), decreasing from 999 to 0.
        times: ``timesteps / 1000`` in float64 (N,).
        x_start: start points (B, d).
        x_end: the points after N - 1 DDIM steps (B, d), at timestep 0.
        fundamental: A after N - 1 Euler steps (B, d, d).
        min_step_eigenvalue: per start, the smallest eigenvalue of the DDIM step Jacobians
            :math:`\\tfrac{\\alpha_s}{\\alpha_t} I + (\\sigma_s - \\sigma_t \\tfrac{\\alpha_s}{\\alpha_t}) \\sigma_t F_t` over the path.
        path: positions of the first ``keep`` starts along the grid (keep, N, d).
        fundamental_path: A of the first ``keep`` starts along the grid (keep, N, d, d).
    """

    timesteps: Tensor
    times: Tensor
    x_start: Tensor
    x_end: Tensor
    fundamental: Tensor
    min_step_eigenvalue: Tensor
    path: Tensor
    fundamental_path: Tensor


def official_fundamental(
    mixture: Mixture, schedule: OfficialSchedule, x_start: Tensor, num_steps: int, *, keep: int = 0
) -> OfficialResult:
    r"""The published Table 3 loop (module docstring), vectorised over the starts ``x_start`` (B, d).

    Per step, with :math:`F = F_t(x_k)`: :math:`A \leftarrow A + \Delta_k (f_t I - \tfrac12 g_t^2 F) A`, then the DDIM
    step of :func:`ddim_step`. Runs in the dtype of ``x_start`` (float32 for the protocol); memory O(B d^2).
    """
    if x_start.ndim != 2:
        raise ValueError(f"x_start must have shape (B, d); got {tuple(x_start.shape)}")
    dtype, device = x_start.dtype, x_start.device
    batch, dim = x_start.shape
    keep = max(0, min(int(keep), batch))
    steps = ddim_timesteps(num_steps)
    # t / 1000.0 of an integer timestep, rounded once to the working dtype (as in the script)
    t_grid = (steps.to(dtype) / 1000.0).to(device)
    dt_grid = (-(steps[:-1] - steps[1:]).to(dtype) / 1000.0).to(device)
    eye = torch.eye(dim, dtype=dtype, device=device)
    x = x_start.detach().clone()
    a_mat = eye.expand(batch, dim, dim).clone()
    path, a_path = [x[:keep].clone()], [a_mat[:keep].clone()]
    min_eig = torch.full((batch,), math.inf, dtype=dtype, device=device)
    with torch.no_grad():
        for k in range(num_steps - 1):
            t, s, dt = t_grid[k], t_grid[k + 1], dt_grid[k]
            fisher = mixture.fisher(x, t, schedule)
            b_mat = schedule.f(t) * eye - 0.5 * schedule.g2(t) * fisher
            a_mat = a_mat + (b_mat @ a_mat) * dt
            alpha_t, sigma_t = schedule(t)
            alpha_s, sigma_s = schedule(s)
            coef_x = alpha_s / alpha_t
            step_jac = coef_x * eye + ((sigma_s - sigma_t * coef_x) * sigma_t) * fisher
            min_eig = torch.minimum(min_eig, torch.linalg.eigvalsh(step_jac)[:, 0])
            x = ddim_step(mixture, schedule, x, t, s)
            if keep:
                path.append(x[:keep].clone())
                a_path.append(a_mat[:keep].clone())
    return OfficialResult(
        timesteps=steps,
        times=steps.to(torch.float64) / 1000.0,
        x_start=x_start.detach(),
        x_end=x,
        fundamental=a_mat,
        min_step_eigenvalue=min_eig,
        path=torch.stack(path, 1),
        fundamental_path=torch.stack(a_path, 1),
    )
