r"""Mixtures of the optimal-transport test (Table 3), built from their config entries.

Kinds (config word ``kind``): ``gaussian`` (one Gaussian, affine PF-ODE map), ``dirac`` (given points),
``collinear`` (points on one line: affine data), ``random_dirac`` (points drawn from N(0, scale² I)) and
``gaussian_mixture`` (random means and full covariances). Each is returned as a
:class:`~dfcore.mixtures.Mixture`, whose Fisher is exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from dfcore.mixtures import DiracMixture, GaussianMixture, Mixture
from dfcore.schedules import Schedule
from dfcore.sde import sample_marginal

__all__ = ["OT_MIXTURE_KINDS", "make_ot_mixture", "sample_prior"]

OT_MIXTURE_KINDS = ("gaussian", "dirac", "collinear", "random_dirac", "gaussian_mixture")


def _pad(points: Any, dim: int, what: str) -> Tensor:
    pts = torch.as_tensor(points, dtype=torch.float64)
    if pts.ndim == 1:
        pts = pts[None, :]
    if pts.shape[-1] > dim:
        raise ValueError(f"{what}: points have {pts.shape[-1]} coordinates but the dimension is {dim}")
    return torch.nn.functional.pad(pts, (0, dim - pts.shape[-1]))


def _random_covariance(dim: int, scale: float, generator: torch.Generator) -> Tensor:
    """A full (non-diagonal) covariance: random rotation times eigenvalues spread over [0.25, 1] scale²."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    evals = scale**2 * torch.linspace(1.0, 0.25, dim, dtype=torch.float64)
    return (q * evals) @ q.T


def make_ot_mixture(spec: Mapping[str, Any], dim: int, seed: int = 0) -> Mixture:
    """Build one data set of the OT test from its config entry (``kind`` plus parameters).

    ``gaussian``: one Gaussian, ``mean`` (default 0) and full ``covariance`` (default: random
    rotation, eigenvalues in [0.25, 1] ``scale``²). ``dirac``: the given ``points`` (zero-padded to
    ``dim``). ``collinear``: ``num_points`` points ``offset + s u`` on one random line (affine data).
    ``random_dirac``: ``num_points`` points N(0, ``scale``² I). ``gaussian_mixture``:
    ``num_components`` Gaussians with N(0, ``scale``² I) means and random full covariances of size ``cov_scale``.
    """
    kind = spec.get("kind")
    if kind not in OT_MIXTURE_KINDS:
        raise ValueError(f"unknown OT data set kind {kind!r}; choose one of {list(OT_MIXTURE_KINDS)}")
    gen = torch.Generator().manual_seed(int(seed))
    scale = float(spec.get("scale", 1.0))
    if kind == "gaussian":
        mean = (
            _pad(spec["mean"], dim, "gaussian mean")[0]
            if spec.get("mean") is not None
            else torch.zeros(dim, dtype=torch.float64)
        )
        if spec.get("covariance") is not None:
            cov = torch.as_tensor(spec["covariance"], dtype=torch.float64)
            if cov.shape != (dim, dim):
                raise ValueError(f"gaussian covariance must be {dim}x{dim}; got {tuple(cov.shape)}")
        else:
            cov = _random_covariance(dim, scale, gen)
        return GaussianMixture(torch.ones(1, dtype=torch.float64), mean[None], cov[None])
    if kind == "dirac":
        if not spec.get("points"):
            raise ValueError("a 'dirac' data set needs 'points'")
        return DiracMixture(_pad(spec["points"], dim, "dirac"))
    num = int(spec.get("num_points", spec.get("num_components", 3)))
    if kind == "collinear":
        u = torch.randn(dim, generator=gen, dtype=torch.float64)
        u = u / u.norm()
        offset = scale * torch.randn(dim, generator=gen, dtype=torch.float64)
        s = scale * torch.randn(num, 1, generator=gen, dtype=torch.float64)
        return DiracMixture(offset + s * u)
    if kind == "random_dirac":
        return DiracMixture(scale * torch.randn(num, dim, generator=gen, dtype=torch.float64))
    means = scale * torch.randn(num, dim, generator=gen, dtype=torch.float64)
    cov_scale = float(spec.get("cov_scale", 0.3))
    covs = torch.stack([_random_covariance(dim, cov_scale, gen) for _ in range(num)])
    return GaussianMixture(torch.ones(num, dtype=torch.float64), means, covs)


def sample_prior(
    mixture: Mixture, schedule: Schedule, n: int, t: float = 1.0, *, seed: int = 0, device: str | torch.device = "cpu"
) -> Tensor:
    r"""Exact samples of :math:`q_t`: :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` with :math:`x_0 \sim q_0`, (n, d) float64.

    Drawn on the CPU with a seeded CPU generator (the same numbers on every device; the mixture must be
    on the CPU while sampling), then moved to ``device``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    return sample_marginal(mixture.sample(n, generator=gen), schedule, t, generator=gen).to(device)
