r"""Exact diffused densities of mixtures and their diffusion Fisher.

For a data distribution :math:`q_0` and the kernel :math:`q(x_t|x_0) = \mathcal N(\alpha x_0, \sigma^2 I)`,
the diffused density is :math:`q_t = \int q(x_t|x_0) q_0(x_0) dx_0` and the diffusion Fisher is
:math:`F_t(x) = -\nabla^2 \log q_t(x)` (Wang et al., 2025, Eq. 5).

**Dirac mixture** :math:`q_0 = \frac1N \sum_i \delta(y_i)` (Prop. 1 and Prop. 5). With logits
:math:`\ell_i = -\|x - \alpha y_i\|^2 / 2\sigma^2`, weights :math:`w = \mathrm{softmax}(\ell)` and
:math:`\bar y = \sum_i w_i y_i`:

.. math::
    \log q_t(x) &= \mathrm{logsumexp}(\ell) - \log N - \tfrac d2 \log(2\pi\sigma^2) \\
    \nabla \log q_t(x) &= -(x - \alpha \bar y)/\sigma^2 \\
    F_t &= I/\sigma^2 - (\alpha^2/\sigma^4)\,[\textstyle\sum_i w_i y_i y_i^\top - \bar y \bar y^\top] \\
    \operatorname{tr} F_t &= d/\sigma^2 - (\alpha^2/\sigma^4)\,[\textstyle\sum_i w_i \|y_i\|^2 - \|\bar y\|^2] \\
    F_t v &= v/\sigma^2 - (\alpha^2/\sigma^4)\,[\textstyle\sum_i w_i \langle y_i, v\rangle y_i - \langle \bar y, v\rangle \bar y]

The sums run over chunks of the data with a running log-sum-exp, so no ``B x N x d`` tensor is
ever formed: each chunk costs two ``(B, d) x (d, N_c)`` matrix products (three for ``F v``). The points are
stored centred on their mean (the bracketed posterior covariance is shift invariant), which keeps
the cancellation in the bracket small.

**Gaussian mixture** :math:`q_0 = \sum_k \pi_k \mathcal N(\mu_k, \Sigma_k)` (Prop. 3 in closed form):
:math:`q_t = \sum_k \pi_k \mathcal N(\alpha\mu_k, C_k)`, :math:`C_k = \alpha^2\Sigma_k + \sigma^2 I`.
With responsibilities :math:`\gamma_k`, :math:`s_k = C_k^{-1}(\alpha\mu_k - x)` and :math:`\bar s = \sum_k \gamma_k s_k`,

.. math:: F_t = \textstyle\sum_k \gamma_k C_k^{-1} - \sum_k \gamma_k (s_k - \bar s)(s_k - \bar s)^\top ,

and a single Gaussian has the constant Fisher :math:`C^{-1}`. Each :math:`\Sigma_k = V_k \Lambda_k V_k^\top` is
diagonalised once, so :math:`C_k = V_k(\alpha^2\Lambda_k + \sigma^2 I)V_k^\top` at every t: a solve, the
log-determinant and :math:`\operatorname{tr} C_k^{-1} = \sum_j 1/(\alpha^2\lambda_{kj} + \sigma^2)` cost
:math:`O(B K d^2)` whether the batch shares one t or not.

Shapes: ``x`` is ``(B, d)``; ``t`` is a scalar or ``(B,)`` in (0, 1]; ``v`` is ``(B, d)``.

Precision. Everything runs on the device of ``x``, in its dtype when that is float32 or float64; half-precision
``x`` (float16, bfloat16) is computed in float64 and only the result is rounded to the input's dtype (a result
beyond that dtype's range is a ValueError, not inf). The stored parameters keep the dtype they were built with:
a call in another dtype or on another device uses a cached converted copy, so later calls in the original dtype
give the same numbers. :math:`\alpha_t, \sigma_t` are evaluated in float64 and :math:`\sigma_t` is floored at
:data:`sigma_floor` of the compute dtype (``tiny ** (1/8)``: 3.5e-39 in float64, 1.8e-5 in float32), so that
:math:`1/\sigma^4` and the logits stay finite with many orders of magnitude to spare: every legal t, down to
the smallest positive float, gives finite values, those of the time at which the schedule reaches the floor.
A meta-device ``x`` is refused with a ValueError.
"""

from __future__ import annotations

import functools
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from dfcore.schedules import Schedule, check_time

__all__ = ["Mixture", "DiracMixture", "GaussianMixture", "require_finite", "sigma_floor", "check_count"]

HALF_DTYPES = (torch.float16, torch.bfloat16)
_F = TypeVar("_F", bound=Callable[..., Tensor])


def _concrete_any(mask: Tensor) -> bool | None:
    """``bool(mask.any())``, or None inside ``torch.func.vmap``, where a tensor's values cannot steer Python code."""
    try:
        return bool(mask.any())
    except RuntimeError:
        return None


def require_finite(name: str, value: Tensor) -> None:
    """Raise ValueError when ``value`` (B, ...) holds NaN or Inf, which would otherwise give silent NaN rows
    (not checked inside ``torch.func.vmap``, whose caller holds the whole batch)."""
    finite = torch.isfinite(value)
    if _concrete_any(~finite):
        rows = int((~finite).reshape(value.shape[0], -1).any(1).sum()) if value.ndim else 1
        raise ValueError(f"{name} contains NaN or Inf (in {rows} of {value.shape[0] if value.ndim else 1} rows)")


def sigma_floor(dtype: torch.dtype) -> float:
    r"""The smallest :math:`\sigma_t` used in ``dtype``: ``finfo(dtype).tiny ** (1/8)``, so that :math:`1/\sigma^4`
    is below ``1/sqrt(tiny)`` and products of it with data-sized numbers stay finite."""
    return float(torch.finfo(dtype).tiny ** 0.125)


def check_count(n: Any) -> int:
    """``n`` as a sample count: an integer >= 0 (Python, NumPy or 0-d integer tensor; a bool or a float is
    refused), else ValueError."""
    try:
        count = operator.index(n) if not isinstance(n, bool) else None
    except TypeError:
        count = None
    if count is None or count < 0:
        raise ValueError(f"n must be an integer >= 0; got {n!r}")
    return count


def _check_device(x: Tensor) -> None:
    if x.device.type == "meta":
        raise ValueError("x is on the meta device (it holds no values); move it to a real device first")


def _widened(method: _F) -> _F:
    """Run ``method(self, x, ...)`` in float64 when ``x`` is float16 or bfloat16 and round its result to x's dtype;
    a result that is finite in float64 but beyond the range of x's dtype is a ValueError."""

    @functools.wraps(method)
    def wrapper(self: Any, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if not isinstance(x, Tensor) or x.dtype not in HALF_DTYPES:
            return method(self, x, *args, **kwargs)
        _check_device(x)
        out = method(self, x.to(torch.float64), *args, **kwargs)
        narrow = out.to(x.dtype)
        overflow = torch.isfinite(out) & ~torch.isfinite(narrow)
        if _concrete_any(overflow):
            big = float(out[overflow].abs().max())
            raise ValueError(
                f"{type(self).__name__}.{method.__name__}: the result (|value| up to {big:.3g}) is beyond the range "
                f"of {x.dtype} (computed in float64); pass x in float32 or float64"
            )
        return narrow

    return wrapper  # type: ignore[return-value]


def _batch_coefficients(x: Tensor, t: Tensor | float, schedule: Schedule, dim: int) -> tuple[Tensor, Tensor]:
    """Validate ``x`` (B, d) and ``t`` (scalar or (B,)); return alpha, sigma as (B,) in x's dtype, evaluated in
    float64 and with sigma floored at :func:`sigma_floor` of x's dtype."""
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    _check_device(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"x must have shape (B, {dim}); got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"x must be a floating-point tensor; got {x.dtype}")
    require_finite("x", x)
    wide = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    t = check_time(t).to(dtype=wide, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    elif t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},); got {tuple(t.shape)}")
    alpha, sigma = schedule(t)
    sigma = sigma.clamp_min(sigma_floor(x.dtype))
    return alpha.to(x.dtype), sigma.to(x.dtype)


def _split(a: Tensor) -> tuple[Tensor, Tensor]:
    """Veltkamp's split a = hi + lo, each half of the significand, so products of halves are exact."""
    precision = round(-math.log2(torch.finfo(a.dtype).eps)) + 1  # significand bits: 53 in float64
    factor = 2.0 ** math.ceil(precision / 2) + 1.0
    c = factor * a
    hi = c - (c - a)
    return hi, a - hi


def _two_product(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Dekker's error-free product: a * b = p + e exactly, p the rounded product (broadcasting)."""
    p = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, e


def _two_sum(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Knuth's error-free sum: a + b = s + e exactly, s the rounded sum."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _check_vector(v: Tensor, x: Tensor) -> Tensor:
    if not isinstance(v, Tensor) or v.shape != x.shape:
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"v must have the shape of x {tuple(x.shape)}; got {shape}")
    require_finite("v", v)
    return v.to(dtype=x.dtype)


class Mixture(ABC):
    """A data distribution whose diffused density, score and Fisher are known exactly."""

    dim: int

    @abstractmethod
    def log_prob(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        r""":math:`\log q_t(x)`, shape (B,)."""

    @abstractmethod
    def score(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        r""":math:`\nabla \log q_t(x)`, shape (B, d)."""

    @abstractmethod
    def posterior_mean(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        r"""The ideal denoiser :math:`\bar y = E[x_0 | x_t = x]`, shape (B, d)."""

    @abstractmethod
    def posterior_variance(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        r""":math:`\operatorname{tr}\mathrm{Cov}[x_0 | x_t = x]`, shape (B,): the bracket of Eq. 17."""

    @abstractmethod
    def fisher(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        r""":math:`F_t(x) = -\nabla^2 \log q_t(x)`, shape (B, d, d)."""

    @abstractmethod
    def fisher_trace(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        r""":math:`\operatorname{tr} F_t(x)`, shape (B,)."""

    @abstractmethod
    def fisher_vp(self, x: Tensor, t: Tensor | float, v: Tensor, schedule: Schedule) -> Tensor:
        r""":math:`F_t(x) v` (F is symmetric, so also :math:`F^\top v`), shape (B, d)."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""Draw ``n`` samples of :math:`x_0 \sim q_0`, shape (n, d)."""

    @abstractmethod
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Mixture:
        """Move the stored parameters (in place) and return self. Only this changes them: a call with an ``x`` of
        another dtype or device works on a cached converted copy."""


@dataclass
class _DiracStats:
    """Posterior moments for one batch, relative to a per-row reference point ``ref``.

    ``ref`` is the (centred) data point with the largest logit; moments of ``delta = y - c - ref``
    are accumulated with that point masked out, so a posterior that collapses onto one point
    gives exactly zero covariance instead of a difference of two O(1) numbers.
    """

    log_z: Tensor  # (B,)  logsumexp of the logits
    ref: Tensor  # (B, d) reference point (centred coordinates)
    mean: Tensor  # (B, d) E_w[delta]
    weight_sum: Tensor  # (B,)  sum_i exp(l_i - l_ref) >= 1, the reference point included
    sq_norm: Tensor | None = None  # (B,)  E_w[||delta||^2]
    proj: Tensor | None = None  # (B, d) E_w[<delta, v> delta]
    second: Tensor | None = None  # (B, d, d) E_w[delta delta^T]

    def cov_trace(self) -> Tensor:
        """tr Cov_w[y] (>= 0; the clamp removes round-off below zero). Needs ``sq_norm``."""
        assert self.sq_norm is not None
        return (self.sq_norm - self.mean.pow(2).sum(1)).clamp_min(0.0)

    def cov_vp(self, v: Tensor) -> Tensor:
        """Cov_w[y] v. Needs ``proj``."""
        assert self.proj is not None
        return self.proj - (self.mean * v).sum(1, keepdim=True) * self.mean

    def cov(self) -> Tensor:
        """Cov_w[y]. Needs ``second``."""
        assert self.second is not None
        return self.second - self.mean[:, :, None] * self.mean[:, None, :]


def _chunk_weights(logits: Tensor, new_max: Tensor, arg: Tensor, new_best: Tensor, differentiable: bool) -> Tensor:
    """The chunk's weights ``exp(logit - running max)``, (B, n), with the reference point's entry zeroed.

    The shifted logits are floored at log(tiny)/2 (-43.7 in float32, -354 in float64): exp and the products
    after it then never meet subnormal numbers, which are ~30x slower on CPUs, and a relative weight of 1e-19
    (1e-154) is below the dtype's resolution. The reference point has delta = 0 and weight 1; masking it out
    makes it add exact zeros. Out of place when differentiating, so autograd and torch.func can go through.
    """
    floor = 0.5 * math.log(torch.finfo(logits.dtype).tiny)
    if differentiable:
        p = torch.exp((logits - new_max[:, None]).clamp_min(floor))
    else:
        p = logits.sub_(new_max[:, None]).clamp_min_(floor).exp_()
    at_ref = arg[:, None]
    masked = torch.where(new_best[:, None], 0.0, p.gather(1, at_ref))
    return p.scatter(1, at_ref, masked) if differentiable else p.scatter_(1, at_ref, masked)


@dataclass
class _RunningMoments:
    """Unnormalised weighted moments of ``delta = y - c - ref`` over the chunks seen so far, the weights being
    ``exp(logit - running max)``: ``s0 = sum w``, ``m1 = sum w delta`` and, when asked for, ``m2 = sum w ||delta||^2``,
    ``mv = sum w <delta, v> delta`` and ``mm = sum w delta delta^T``."""

    s0: Tensor
    m1: Tensor
    m2: Tensor | None
    mv: Tensor | None
    mm: Tensor | None

    @classmethod
    def empty(cls, x: Tensor, *, sq_norm: bool, proj: bool, second: bool) -> _RunningMoments:
        batch, d = x.shape

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(batch, *shape, dtype=x.dtype, device=x.device)

        return cls(
            zeros(), zeros(d), zeros() if sq_norm else None, zeros(d) if proj else None, zeros(d, d) if second else None
        )

    def recentre(self, shift: Tensor, v: Tensor | None) -> None:
        """Move the reference point by ``-shift`` (delta' = delta + shift), exactly, in O(B d) work."""
        s0, m1 = self.s0, self.m1
        if self.m2 is not None:
            self.m2 = self.m2 + 2.0 * (shift * m1).sum(1) + s0 * shift.pow(2).sum(1)
        if self.mv is not None:
            assert v is not None  # mv is accumulated only when v is given
            shift_v = (shift * v).sum(1, keepdim=True)
            self.mv = self.mv + shift_v * m1 + (m1 * v).sum(1, keepdim=True) * shift + s0[:, None] * shift_v * shift
        if self.mm is not None:
            outer = m1[:, :, None] * shift[:, None, :]
            self.mm = (
                self.mm + outer + outer.transpose(1, 2) + s0[:, None, None] * shift[:, :, None] * shift[:, None, :]
            )
        self.m1 = m1 + s0[:, None] * shift

    def add_chunk(
        self, p: Tensor, rows: Tensor, ref: Tensor, rescale: Tensor, new_best: Tensor, v: Tensor | None
    ) -> None:
        """Rescale the moments to the new running max and add a chunk's weights ``p`` (B, n) over ``rows``."""
        d = ref.shape[1]
        y = rows[:, :d]
        sums = p @ rows  # [sum p y, sum p ||y||^2, sum p] over the chunk, reference excluded
        p_y, p_ysq, p_sum = sums[:, :d], sums[:, d], sums[:, d + 1 :]
        self.s0 = self.s0 * rescale + p_sum[:, 0] + new_best.to(p.dtype)
        self.m1 = self.m1 * rescale[:, None] + p_y - p_sum * ref
        if self.m2 is not None:
            ref_sq = ref.pow(2).sum(1)
            self.m2 = self.m2 * rescale + p_ysq - 2.0 * (ref * p_y).sum(1) + p_sum[:, 0] * ref_sq
        if self.mv is not None:
            assert v is not None
            pv_sums = (p * (v @ y.T)) @ rows
            pv_y, pv_sum = pv_sums[:, :d], pv_sums[:, d + 1 :]
            ref_v = (ref * v).sum(1, keepdim=True)
            self.mv = self.mv * rescale[:, None] + pv_y - pv_sum * ref - ref_v * p_y + ref_v * p_sum * ref
        if self.mm is not None:
            outer = p_y[:, :, None] * ref[:, None, :]
            chunk_mm = torch.einsum("bn,nd,ne->bde", p, y, y) - outer - outer.transpose(1, 2)
            self.mm = (
                self.mm * rescale[:, None, None] + chunk_mm + p_sum[:, :, None] * ref[:, :, None] * ref[:, None, :]
            )

    def stats(self, log_max: Tensor, ref: Tensor) -> _DiracStats:
        """The normalised moments, with ``log Z = log_max + log s0``."""
        inv = 1.0 / self.s0
        return _DiracStats(
            log_z=log_max + torch.log(self.s0),
            ref=ref,
            mean=self.m1 * inv[:, None],
            sq_norm=None if self.m2 is None else self.m2 * inv,
            proj=None if self.mv is None else self.mv * inv[:, None],
            second=None if self.mm is None else self.mm * inv[:, None, None],
            weight_sum=self.s0,
        )


class DiracMixture(Mixture):
    r"""Uniform mixture of Diracs :math:`q_0 = \frac1N \sum_i \delta(y_i)` (Prop. 1, Prop. 5).

    Args:
        points: data :math:`y`, shape (N, d). Stored centred on their mean, not copied twice.
        chunk_elements: bound on the number of elements of the largest per-chunk temporary
            (``B x N_c`` logits, or ``B x N_c x d`` for the full Fisher). The default, 2**23,
            keeps temporaries near 64 MB in float64.
    """

    def __init__(self, points: Tensor, chunk_elements: int = 2**23) -> None:
        points = torch.as_tensor(points)
        if points.ndim != 2 or points.shape[0] == 0:
            raise ValueError(f"points must have shape (N, d) with N >= 1; got {tuple(points.shape)}")
        if not torch.is_floating_point(points):
            points = points.to(torch.get_default_dtype())
        if chunk_elements < 1:
            raise ValueError(f"chunk_elements must be positive; got {chunk_elements}")
        rows = max(1, int(chunk_elements) // max(points.shape[1], 1))
        # isfinite of the whole array would hold temporaries larger than the data; a block of rows at a time
        if not all(bool(torch.isfinite(points[i : i + rows]).all()) for i in range(0, points.shape[0], rows)):
            raise ValueError("points contain NaN or Inf")
        self.num_points, self.dim = points.shape
        self.center = points.mean(0)
        # One (N, d + 2) table [y - c, ||y - c||^2, 1]: a single product p @ table then yields
        # sum p (y - c), sum p ||y - c||^2 and sum p together.
        # Filled in place, the squared norms a block of rows at a time: no (N, d) temporary beside the table.
        n, d = points.shape
        self._table = torch.empty(n, d + 2, dtype=points.dtype, device=points.device)
        self._table[:, :d].copy_(points).sub_(self.center)
        self._table[:, d + 1] = 1.0
        for start in range(0, n, rows):
            self._table[start : start + rows, d] = self._table[start : start + rows, :d].pow(2).sum(1)
        self.chunk_elements = int(chunk_elements)
        self._converted: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    @property
    def points(self) -> Tensor:
        """The data points, shape (N, d)."""
        return self._table[:, : self.dim] + self.center

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DiracMixture:
        """Move the stored data (in place) and return self."""
        self.center = self.center.to(device=device, dtype=dtype)
        self._table = self._table.to(device=device, dtype=dtype)
        self._converted = {}
        return self

    def _data_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The table and centre in x's dtype and on its device: the stored ones, or a cached converted copy (one
        at a time, so at most one extra table is held); the stored ones never change."""
        key = (x.dtype, x.device)
        if key == (self._table.dtype, self._table.device):
            return self._table, self.center
        if key not in self._converted:
            self._converted = {key: (self._table.to(device=x.device, dtype=x.dtype), self.center.to(x.device, x.dtype))}
        return self._converted[key]

    def _stats(
        self,
        x: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        *,
        sq_norm: bool = False,
        v: Tensor | None = None,
        second: bool = False,
    ) -> _DiracStats:
        """One pass over the data in chunks with a running log-sum-exp (flash-attention style).

        The logits, up to the per-row constant ``-||x - a c||^2 / 2s^2`` (added back to log Z),
        are one product ``[a x_c / s^2, -a^2 / 2s^2, 0] @ table^T``. Moments are kept relative to
        the running best point; when a chunk holds a better one, the accumulated moments are
        re-centred on it (:meth:`_RunningMoments.recentre`).
        """
        table, center = self._data_like(x)
        batch, d = x.shape
        var = sigma.pow(2)[:, None]
        xc = x - alpha[:, None] * center  # x - a y = xc - a (y - c)
        query = torch.cat([xc * (alpha[:, None] / var), -0.5 * alpha[:, None].pow(2) / var, torch.zeros_like(var)], 1)
        per_row = batch * (d if second else 1)
        chunk = max(1, min(self.num_points, self.chunk_elements // max(per_row, 1)))
        differentiable = torch.is_grad_enabled() and (query.requires_grad or (v is not None and v.requires_grad))
        moments = _RunningMoments.empty(x, sq_norm=sq_norm, proj=v is not None, second=second)
        run_max = torch.full((batch,), -math.inf, dtype=x.dtype, device=x.device)
        ref = torch.zeros_like(x)
        for start in range(0, self.num_points, chunk):
            rows = table[start : start + chunk]
            logits = query @ rows.T
            chunk_max, chunk_arg = logits.max(1)
            new_best = chunk_max > run_max
            new_max = torch.where(new_best, chunk_max, run_max)
            new_ref = torch.where(new_best[:, None], rows[chunk_arg, :d], ref)
            moments.recentre(ref - new_ref, v)
            ref = new_ref
            p = _chunk_weights(logits, new_max, chunk_arg, new_best, differentiable)
            moments.add_chunk(p, rows, ref, torch.exp(run_max - new_max), new_best, v)  # exp(-inf) = 0 at first
            run_max = new_max
        # Add back the constant dropped from the logits: -||xc||^2 / 2s^2.
        return moments.stats(run_max - 0.5 * xc.pow(2).sum(1) / var[:, 0], ref)

    @_widened
    def log_prob(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        r""":math:`\log q_t(x) = \log\sum_i e^{\ell_i} - \log N - \tfrac d2 \log(2\pi\sigma^2)`, shape (B,), with the
        log-sum-exp free of the cancellation of the expanded square (see :meth:`_log_z`)."""
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        log_z = self._log_z(x, alpha, sigma, self._stats(x, alpha, sigma))
        return log_z - math.log(self.num_points) - 0.5 * self.dim * torch.log(2 * math.pi * sigma.pow(2))

    def _exact_residual(self, x: Tensor, alpha: Tensor, centered: Tensor) -> Tensor:
        r""":math:`x - \alpha y` for :math:`y = c + (y - c)` (``centered`` holds :math:`y - c`), broadcast over
        leading dimensions, with the products and the first difference kept exact (Dekker's two-product and
        Knuth's two-sum): only the final rounding and that of the stored :math:`y - c` remain, so the error is
        about that of ``x - alpha * y`` in the dtype, not that of the expanded :math:`\|x\|^2 - 2\alpha x\cdot y + \alpha^2\|y\|^2`."""
        center = self._data_like(x)[1]
        p1, e1 = _two_product(alpha, center)
        s1, f1 = _two_sum(x, -p1)  # x - alpha c = s1 + f1
        p2, e2 = _two_product(alpha, centered)
        return (s1 - p2) + ((f1 - e1) - e2)

    def _log_z(self, x: Tensor, alpha: Tensor, sigma: Tensor, stats: _DiracStats) -> Tensor:
        r""":math:`\log Z = \log\sum_i \exp(\ell_i)`, :math:`\ell_i = -\|x - \alpha y_i\|^2 / 2\sigma^2`, shape (B,).

        The pass of :meth:`_stats` forms the logits from matrix products, as sums of terms of size up to
        :math:`(\|x_c\| + \alpha R)^2 / 2\sigma^2` (:math:`x_c = x - \alpha c`, :math:`R = \max_i \|y_i - c\|`), so
        each is off by up to :math:`\delta \approx (d + 2)\,\epsilon` times that (nats at :math:`\sigma \sim 10^{-7}`
        in float64). Here

        .. math:: \log Z = \ell_{ref} + \log\big(1 + \textstyle\sum_{i \ne ref} e^{\ell_i - \ell_{ref}}\big)

        with the best point's :math:`\ell_{ref}` computed from its residual (:meth:`_exact_residual`), so the
        products enter only through the weight sum :math:`s_0 \ge 1`, whose logarithm is off by at most
        :math:`(1 - 1/s_0)\,2\delta`. Rows where that bound exceeds :math:`10^{-2}\sqrt\epsilon` (a posterior spread over
        several points at small sigma) are recomputed by :meth:`_refined_log_z` (not inside ``torch.func.vmap``).
        """
        table, center = self._data_like(x)
        d = self.dim
        var = sigma.pow(2)
        best = -self._exact_residual(x, alpha[:, None], stats.ref).pow(2).sum(1) / (2.0 * var)
        log_z = best + torch.log(stats.weight_sum)
        if x.shape[0] == 0:
            return log_z
        eps = torch.finfo(x.dtype).eps
        radius = table[:, d].max().sqrt()  # column d holds ||y - c||^2
        x_c = x - alpha[:, None] * center
        bound = 2.0 * (d + 2) * eps * (x_c.norm(dim=1) + alpha * radius).pow(2) / (2.0 * var)
        risk = (1.0 - 1.0 / stats.weight_sum) * 2.0 * bound
        refine = risk > 1e-2 * math.sqrt(eps)
        if not _concrete_any(refine):  # also inside torch.func.vmap, which cannot pick rows by value
            return log_z
        rows = torch.nonzero(refine).squeeze(1)
        refined = self._refined_log_z(x[rows], alpha[rows], var[rows], stats.ref[rows], 2.0 * bound[rows])
        return log_z.index_put((rows,), refined)

    def _refined_log_z(self, x: Tensor, alpha: Tensor, var: Tensor, ref: Tensor, slack: Tensor) -> Tensor:
        r"""log Z for rows ``x`` (b, d) with every logit that matters taken from its residual.

        The product logits (off by at most ``slack`` relative to the reference point ``ref``) select the
        candidates, the points within :math:`\log N - \log\epsilon` + ``slack`` nats of the reference; the others
        together weigh less than :math:`\epsilon` relative. Only the candidates' residuals are formed, so the cost
        is that of one more product pass plus O(candidates x d).
        """
        table, center = self._data_like(x)
        d, b = self.dim, x.shape[0]
        x_c = x - alpha[:, None] * center
        query = torch.cat(
            [x_c * (alpha / var)[:, None], (-0.5 * alpha.pow(2) / var)[:, None], torch.zeros_like(var)[:, None]], 1
        )
        ref_row = torch.cat([ref, ref.pow(2).sum(1, keepdim=True), torch.ones_like(ref[:, :1])], 1)
        floor = (query * ref_row).sum(1) - (math.log(self.num_points) - math.log(torch.finfo(x.dtype).eps)) - slack
        run_max = torch.full((b,), -math.inf, dtype=x.dtype, device=x.device)
        run_sum = torch.zeros(b, dtype=x.dtype, device=x.device)
        chunk = max(1, min(self.num_points, self.chunk_elements // max(b, 1)))
        for start in range(0, self.num_points, chunk):
            rows = table[start : start + chunk]
            row_idx, point_idx = torch.nonzero(query @ rows.T > floor[:, None], as_tuple=True)
            if row_idx.numel() == 0:
                continue
            resid = self._exact_residual(x[row_idx], alpha[row_idx, None], rows[point_idx, :d])
            logits = -resid.pow(2).sum(1) / (2.0 * var[row_idx])
            chunk_max = torch.full_like(run_max, -math.inf).scatter_reduce(0, row_idx, logits, "amax")
            new_max = torch.maximum(run_max, chunk_max)
            shift = torch.where(torch.isfinite(new_max), new_max, 0.0)
            run_sum = run_sum * torch.exp(run_max - shift) + torch.zeros_like(run_sum).index_add(
                0, row_idx, torch.exp(logits - shift[row_idx])
            )
            run_max = new_max
        return run_max + torch.log(run_sum)

    @_widened
    def posterior_mean(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        stats = self._stats(x, alpha, sigma)
        return stats.ref + stats.mean + self._data_like(x)[1]

    @_widened
    def posterior_sq_norm(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        r""":math:`E[\|x_0\|^2 | x_t = x] = \sum_i w_i \|y_i\|^2`, shape (B,): d times the optimum of Alg. 1 (Prop. 6)."""
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        stats = self._stats(x, alpha, sigma, sq_norm=True)
        anchor = stats.ref + self._data_like(x)[1]  # y = anchor + delta
        assert stats.sq_norm is not None
        return anchor.pow(2).sum(1) + 2.0 * (anchor * stats.mean).sum(1) + stats.sq_norm

    @_widened
    def posterior_variance(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        r""":math:`\operatorname{tr}\mathrm{Cov}[x_0 | x_t = x] = \sum_i w_i \|y_i\|^2 - \|\bar y\|^2` (the bracket of
        Prop. 5), shape (B,). Accumulated about the most likely point, so where the posterior has collapsed
        onto one point it is ~0 (below 1e-150 in float64: the weight floor), not a difference of two O(1) numbers."""
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        return self._stats(x, alpha, sigma, sq_norm=True).cov_trace()

    @_widened
    def score(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        stats = self._stats(x, alpha, sigma)
        ybar = stats.ref + stats.mean + self._data_like(x)[1]
        return -(x - alpha[:, None] * ybar) / sigma.pow(2)[:, None]

    @_widened
    def fisher(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        stats = self._stats(x, alpha, sigma, second=True)
        cov = stats.cov()
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        var = sigma.pow(2)[:, None, None]
        return eye / var - (alpha.pow(2)[:, None, None] / var.pow(2)) * cov

    @_widened
    def fisher_trace(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        stats = self._stats(x, alpha, sigma, sq_norm=True)
        tr_cov = stats.cov_trace()
        var = sigma.pow(2)
        return self.dim / var - alpha.pow(2) / var.pow(2) * tr_cov

    @_widened
    def fisher_vp(self, x: Tensor, t: Tensor | float, v: Tensor, schedule: Schedule) -> Tensor:
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        v = _check_vector(v, x)
        stats = self._stats(x, alpha, sigma, v=v)
        cov_v = stats.cov_vp(v)
        var = sigma.pow(2)[:, None]
        return v / var - alpha.pow(2)[:, None] / var.pow(2) * cov_v

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        n = check_count(n)
        idx = torch.randint(self.num_points, (n,), generator=generator, device=self._table.device)
        return self._table[idx, : self.dim] + self.center


_GAUSSIAN_FIELDS = ("log_weights", "means", "covs", "evals", "evecs")


@dataclass
class _GaussianParams:
    """A Gaussian mixture's parameters in one dtype and on one device."""

    log_weights: Tensor  # (K,)
    means: Tensor  # (K, d)
    covs: Tensor  # (K, d, d)
    evals: Tensor  # (K, d) eigenvalues of covs
    evecs: Tensor  # (K, d, d) eigenvectors of covs, as columns


class GaussianMixture(Mixture):
    r"""Gaussian mixture :math:`q_0 = \sum_k \pi_k \mathcal N(\mu_k, \Sigma_k)` (Prop. 3, closed form).

    Args:
        weights: mixture weights :math:`\pi`, shape (K,) with K >= 1, positive and finite (normalised here).
        means: :math:`\mu`, shape (K, d), finite.
        covs: :math:`\Sigma`, shape (K, d, d), symmetric positive semi-definite up to round-off, finite
            (:math:`C_k = \alpha^2 \Sigma_k + \sigma^2 I` is then positive definite for t > 0).
            Each of these is checked, with a ValueError that names the argument.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor) -> None:
        weights, means, covs = (torch.as_tensor(a) for a in (weights, means, covs))
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d); got {tuple(means.shape)}")
        k, d = means.shape
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape ({k},); got {tuple(weights.shape)}")
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape ({k}, {d}, {d}); got {tuple(covs.shape)}")
        if k == 0 or d == 0:
            raise ValueError(f"a Gaussian mixture needs K >= 1 components in d >= 1 dimensions; got K = {k}, d = {d}")
        for name, value in (("weights", weights), ("means", means), ("covs", covs)):
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} contain NaN or Inf")
        if not (weights > 0).all():
            raise ValueError("weights must be positive")
        if not torch.allclose(covs, covs.transpose(-1, -2), atol=1e-10, rtol=1e-8):
            raise ValueError("covs must be symmetric")
        # Positive semi-definite up to round-off: an eigenvalue below -16 d eps |lambda|_max is a negative direction.
        evals = torch.linalg.eigvalsh(covs.to(torch.float64))
        eps = torch.finfo(covs.dtype if torch.is_floating_point(covs) else torch.float64).eps
        bad = evals[:, 0] < -16 * d * eps * evals.abs().amax(-1)
        if bad.any():
            first = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"covs must be positive semi-definite; component {first} has eigenvalue {float(evals[first, 0]):.3g}"
            )
        dtype = means.dtype if torch.is_floating_point(means) else torch.get_default_dtype()
        self.num_components, self.dim = k, d
        self.log_weights = torch.log(weights.to(dtype) / weights.to(dtype).sum())
        self.means = means.to(dtype)
        self.covs = covs.to(dtype)
        # Eigendecomposition in float64 (eigh of a PSD matrix can return -1e-17: clamp to 0).
        evals, evecs = torch.linalg.eigh(self.covs.to(torch.float64))
        self.evals, self.evecs = evals.clamp_min(0.0).to(dtype), evecs.to(dtype)
        self._converted: dict[tuple[torch.dtype, torch.device], _GaussianParams] = {}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GaussianMixture:
        """Move the parameters (in place) and return self."""
        for name in _GAUSSIAN_FIELDS:
            setattr(self, name, getattr(self, name).to(device=device, dtype=dtype))
        self._converted = {}
        return self

    def _like(self, x: Tensor) -> _GaussianParams:
        """The parameters in x's dtype and on its device: the stored ones, or a cached converted copy (one at a
        time); the stored ones never change."""
        key = (x.dtype, x.device)
        if key == (self.means.dtype, self.means.device):
            return _GaussianParams(*(getattr(self, name) for name in _GAUSSIAN_FIELDS))
        if key not in self._converted:
            self._converted = {
                key: _GaussianParams(*(getattr(self, name).to(x.device, x.dtype) for name in _GAUSSIAN_FIELDS))
            }
        return self._converted[key]

    @property
    def weights(self) -> Tensor:
        return self.log_weights.exp()

    def _components(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Return (log q_t (B,), responsibilities (B,K), s_k (B,K,d), eigenvalues of C_k (B,K,d)).

        In the eigenbasis of component k, :math:`z = V_k^\top(\alpha\mu_k - x)` and
        :math:`s_k = V_k (z / c_k)` with :math:`c_k = \alpha^2\lambda_k + \sigma^2`.
        """
        p = self._like(x)
        resid = alpha[:, None, None] * p.means - x[:, None, :]  # (B, K, d)
        z = torch.einsum("kdj,bkd->bkj", p.evecs, resid)
        c = alpha[:, None, None].pow(2) * p.evals + sigma[:, None, None].pow(2)  # (B, K, d)
        s_k = torch.einsum("kdj,bkj->bkd", p.evecs, z / c)
        log_comp = -0.5 * (self.dim * math.log(2 * math.pi) + (z.pow(2) / c).sum(-1) + torch.log(c).sum(-1))
        joint = p.log_weights + log_comp
        log_q = torch.logsumexp(joint, dim=1)
        return log_q, torch.exp(joint - log_q[:, None]), s_k, c

    @_widened
    def log_prob(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        return self._components(x, alpha, sigma)[0]

    @_widened
    def score(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        _, gamma, s_k, _ = self._components(x, alpha, sigma)
        return (gamma[:, :, None] * s_k).sum(1)

    @_widened
    def posterior_mean(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        r""":math:`E[x_0|x_t] = \sum_k \gamma_k m_k` with the component posterior means
        :math:`m_k = \mu_k + \alpha\Sigma_k C_k^{-1}(x - \alpha\mu_k) = \mu_k - \alpha\Sigma_k s_k`.

        Equal to Tweedie's :math:`(x + \sigma^2\nabla\log q_t)/\alpha`, but without its division by
        :math:`\alpha`, which cancels two large terms when :math:`\alpha` is small and :math:`\|x\|` large."""
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        _, gamma, s_k, _ = self._components(x, alpha, sigma)
        p = self._like(x)
        m_k = p.means - alpha[:, None, None] * torch.einsum("kde,bke->bkd", p.covs, s_k)
        return (gamma[:, :, None] * m_k).sum(1)

    def _centred_scores(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> tuple[Tensor, Tensor, Tensor]:
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        _, gamma, s_k, c = self._components(x, alpha, sigma)
        s_bar = (gamma[:, :, None] * s_k).sum(1, keepdim=True)
        return gamma, s_k - s_bar, c

    @_widened
    def fisher(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        gamma, dev, c = self._centred_scores(x, t, schedule)
        # sum_k gamma_k C_k^{-1} = sum_k V_k diag(gamma_k / c_k) V_k^T
        evecs = self._like(x).evecs
        prec = torch.einsum("kdj,bkj,kej->bde", evecs, gamma[:, :, None] / c, evecs)
        return prec - torch.einsum("bk,bkd,bke->bde", gamma, dev, dev)

    @_widened
    def fisher_trace(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        gamma, dev, c = self._centred_scores(x, t, schedule)
        return (gamma * (c.reciprocal().sum(-1) - dev.pow(2).sum(-1))).sum(1)

    @_widened
    def posterior_variance(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        r""":math:`\operatorname{tr}\mathrm{Cov}[x_0 | x_t = x]`, shape (B,): the bracket of Eq. 17 for this mixture,
        i.e. the optimum of Alg. 1's regression in the trace network's parameterisation. By Tweedie's
        second-order identity :math:`\mathrm{Cov}[x_0|x_t] = (\sigma^2/\alpha^2)(I - \sigma^2 F_t)`, which per
        component and in its eigenbasis is :math:`\sum_j \lambda_j\sigma^2/c_j` (no cancellation), plus the spread
        of the component means :math:`(\sigma^2/\alpha)^2 \sum_k \gamma_k \|s_k - \bar s\|^2`."""
        alpha, sigma = _batch_coefficients(x, t, schedule, self.dim)
        gamma, dev, c = self._centred_scores(x, t, schedule)
        var = sigma.pow(2)[:, None]
        within = (self._like(x).evals * var[:, :, None] / c).sum(-1)  # tr Cov[x0 | x_t, k] (B, K)
        between = (var / alpha[:, None]).pow(2) * dev.pow(2).sum(-1)
        return (gamma * (within + between)).sum(1)

    @_widened
    def fisher_vp(self, x: Tensor, t: Tensor | float, v: Tensor, schedule: Schedule) -> Tensor:
        v = _check_vector(v, x)
        gamma, dev, c = self._centred_scores(x, t, schedule)
        evecs = self._like(x).evecs
        prec_v = torch.einsum("kdj,bkj->bkd", evecs, torch.einsum("kdj,bd->bkj", evecs, v) / c)
        proj = (dev * v[:, None, :]).sum(-1, keepdim=True)
        return (gamma[:, :, None] * (prec_v - proj * dev)).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        n = check_count(n)
        dev = self.means.device
        if n == 0:
            return torch.empty(0, self.dim, dtype=self.means.dtype, device=dev)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        root = self.evecs * self.evals.sqrt()[:, None, :]
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype, device=dev)
        return self.means[comp] + (root[comp] @ z[:, :, None]).squeeze(-1)
