r"""Data sets of the experiments, as float64 samples (N, d); :mod:`dfcore.data.store` writes and reads them.

Four kinds (config word ``kind`` of each entry of the ``datasets`` section):

* ``checkerboard`` — the 2-D chessboard of Table 2: uniform on the 8 black squares of a 4x4 board
  over :math:`[-2, 2]^2` (square side 1; a square with integer corner ``(i, j)`` is black when
  ``i + j`` is even).
* ``gaussian_mixture`` — :math:`q_0 = \sum_k \pi_k \mathcal N(\mu_k, s_k^2 I)` with parameters from the
  config, so the exact density (and Fisher) is known: :func:`make_dataset` also returns the
  :class:`~dfcore.mixtures.GaussianMixture`.
* ``gaussian_mixture_lowrank`` — an anisotropic mixture in any dimension d with random parameters:
  :math:`q_0 = \sum_k \pi_k \mathcal N(\mu_k, \Sigma_k)`, :math:`\Sigma_k = U_k U_k^\top + s^2 I`
  (low rank plus isotropic noise; Wang et al., 2025, Prop. 3 gives its diffused density and Fisher in
  closed form). :math:`U_k = Q_k \operatorname{diag}(\lambda_k)` with :math:`Q_k` a random orthonormal
  ``(d, rank)`` frame and :math:`\lambda_{kj} = c\,u_{kj}`, :math:`u \sim U(0.5, 1.5)` (``factor_scale`` c);
  :math:`\mu_k = m\,g_k/\sqrt d`, :math:`g_k \sim \mathcal N(0, I)` (``mean_scale`` m, so
  :math:`\|\mu_k\| \approx m` at every d); :math:`\pi` uniform unless ``weights`` are given. Each
  component stretches along its own ``rank`` directions, so the Fisher changes across space.
* ``digits`` — scikit-learn's bundled 8x8 digit images (1797 of them, no download),
  :math:`d = 64`, pixel values 0..16 mapped affinely to :math:`[-1, 1]` (``x / 8 - 1``); the attrs
  carry ``image_shape`` = ``[1, 8, 8]``. ``holdout`` h > 0 with ``split`` (``train`` or ``test``) keeps
  one side of a seeded random split that holds out a fraction h of the images as the test set.

Every draw uses a ``torch.Generator`` seeded from the config, so a data set is bit-identical across runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dfcore.mixtures import GaussianMixture, Mixture

__all__ = [
    "DATASET_KINDS",
    "make_checkerboard",
    "make_gaussian_mixture",
    "lowrank_gaussian_mixture",
    "make_gaussian_mixture_lowrank",
    "split_digits",
    "make_digits",
    "labelled_digits",
    "make_dataset",
]

DATASET_KINDS = ("checkerboard", "gaussian_mixture", "gaussian_mixture_lowrank", "digits")


def make_checkerboard(num_samples: int, seed: int = 0) -> Tensor:
    """Uniform samples on the black squares of a 4x4 chessboard over [-2, 2]^2, shape (n, 2), float64."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive; got {num_samples}")
    gen = torch.Generator().manual_seed(int(seed))
    corners = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.float64)
    square = torch.randint(len(corners), (num_samples,), generator=gen)
    offset = torch.rand(num_samples, 2, generator=gen, dtype=torch.float64)
    return corners[square] + offset - 2.0


def make_gaussian_mixture(
    num_samples: int,
    weights: list[float],
    means: list[list[float]],
    stds: list[float],
    seed: int = 0,
) -> tuple[Tensor, GaussianMixture]:
    r"""Samples of :math:`\sum_k \pi_k \mathcal N(\mu_k, s_k^2 I)` and the exact mixture object."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive; got {num_samples}")
    means_t = torch.as_tensor(means, dtype=torch.float64)
    if means_t.ndim != 2:
        raise ValueError(f"means must be a list of K vectors of equal length; got shape {tuple(means_t.shape)}")
    k, d = means_t.shape
    if len(weights) != k or len(stds) != k:
        raise ValueError(f"weights ({len(weights)}), means ({k}) and stds ({len(stds)}) must have the same length")
    if any(s <= 0 for s in stds):
        raise ValueError(f"stds must be positive; got {stds}")
    covs = torch.stack([torch.eye(d, dtype=torch.float64) * float(s) ** 2 for s in stds])
    mixture = GaussianMixture(torch.as_tensor(weights, dtype=torch.float64), means_t, covs)
    gen = torch.Generator().manual_seed(int(seed))
    return mixture.sample(num_samples, generator=gen), mixture


def lowrank_gaussian_mixture(
    dim: int,
    components: int,
    rank: int,
    noise: float,
    *,
    factor_scale: float = 1.0,
    mean_scale: float = 2.0,
    weights: list[float] | None = None,
    seed: int = 0,
) -> GaussianMixture:
    r"""The mixture of kind ``gaussian_mixture_lowrank`` (module docstring), parameters in float64.

    The parameters are drawn from their own generator (seed ``seed``), so they do not depend on ``num_samples``.
    """
    if dim < 1 or components < 1:
        raise ValueError(f"dim and components must be positive; got dim={dim}, components={components}")
    if not 0 <= rank <= dim:
        raise ValueError(f"rank must lie in [0, dim={dim}]; got {rank}")
    if not noise > 0:
        raise ValueError(f"noise must be positive (it keeps every covariance full rank); got {noise}")
    if weights is not None and len(weights) != components:
        raise ValueError(f"weights has {len(weights)} entries but components is {components}")
    gen = torch.Generator().manual_seed(int(seed))
    means = mean_scale * torch.randn(components, dim, generator=gen, dtype=torch.float64) / dim**0.5
    frames = torch.linalg.qr(torch.randn(components, dim, max(rank, 1), generator=gen, dtype=torch.float64))[0][
        ..., :rank
    ]
    scales = factor_scale * (0.5 + torch.rand(components, rank, generator=gen, dtype=torch.float64))
    factors = frames * scales[:, None, :]
    covs = factors @ factors.transpose(1, 2) + float(noise) ** 2 * torch.eye(dim, dtype=torch.float64)
    covs = 0.5 * (covs + covs.transpose(1, 2))  # exactly symmetric
    pi = (
        torch.full((components,), 1.0 / components, dtype=torch.float64)
        if weights is None
        else torch.as_tensor(weights, dtype=torch.float64)
    )
    return GaussianMixture(pi, means, covs)


def make_gaussian_mixture_lowrank(
    num_samples: int,
    dim: int,
    components: int,
    rank: int,
    noise: float,
    *,
    factor_scale: float = 1.0,
    mean_scale: float = 2.0,
    weights: list[float] | None = None,
    seed: int = 0,
) -> tuple[Tensor, GaussianMixture]:
    r"""Samples (n, d) of :func:`lowrank_gaussian_mixture` and the exact mixture (samples from a second
    generator, seeded ``seed + 1``)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive; got {num_samples}")
    mixture = lowrank_gaussian_mixture(
        dim, components, rank, noise, factor_scale=factor_scale, mean_scale=mean_scale, weights=weights, seed=seed
    )
    gen = torch.Generator().manual_seed(int(seed) + 1)
    return mixture.sample(num_samples, generator=gen), mixture


def labelled_digits() -> tuple[Tensor, Tensor]:
    """All 1797 of scikit-learn's 8x8 digits, flattened to (N, 64) and scaled from 0..16 to [-1, 1]
    (``x / 8 - 1``, float64), with their labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.images.reshape(-1, 64), dtype=torch.float64) / 8.0 - 1.0
    return x, torch.as_tensor(digits.target, dtype=torch.long)


def make_digits(num_samples: int | None = None, seed: int = 0) -> Tensor:
    """The digits of :func:`labelled_digits` without labels, shape (n, 64).

    With ``num_samples`` below 1797 a random subset (seeded) is kept, in the original order.
    """
    x = labelled_digits()[0]
    if num_samples is not None and num_samples < len(x):
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive; got {num_samples}")
        gen = torch.Generator().manual_seed(int(seed))
        keep = torch.randperm(len(x), generator=gen)[:num_samples].sort().values
        x = x[keep]
    return x


def split_digits(x: Tensor, holdout: float, split: str, seed: int = 0) -> Tensor:
    """One side of a seeded random train/test split of ``x`` (N, d): ``test`` keeps round(holdout N) rows,
    ``train`` the others, both in the original order."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must lie in (0, 1); got {holdout}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(x), generator=gen)
    num_test = max(1, round(holdout * len(x)))
    keep = order[:num_test] if split == "test" else order[num_test:]
    return x[keep.sort().values]


def make_dataset(spec: dict[str, Any]) -> tuple[Tensor, Mixture | None, dict[str, Any]]:
    """Build one dataset from its config entry; return ``(x (N, d), exact mixture or None, attrs)``."""
    kind = spec.get("kind")
    seed = int(spec.get("seed", 0))
    n = spec.get("num_samples")
    if kind == "checkerboard":
        return make_checkerboard(int(n or 1000), seed), None, {"kind": kind}
    if kind == "gaussian_mixture":
        x, mixture = make_gaussian_mixture(int(n or 1000), spec["weights"], spec["means"], spec["stds"], seed)
        return x, mixture, {"kind": kind}
    if kind == "gaussian_mixture_lowrank":
        for key in ("dim", "components", "rank", "noise"):
            if key not in spec:
                raise ValueError(f"dataset kind 'gaussian_mixture_lowrank' needs the key {key!r}")
        x, mixture = make_gaussian_mixture_lowrank(
            int(n or 1000),
            int(spec["dim"]),
            int(spec["components"]),
            int(spec["rank"]),
            float(spec["noise"]),
            factor_scale=float(spec.get("factor_scale", 1.0)),
            mean_scale=float(spec.get("mean_scale", 2.0)),
            weights=spec.get("weights"),
            seed=seed,
        )
        return x, mixture, {"kind": kind}
    if kind == "digits":
        holdout = float(spec.get("holdout", 0.0))
        attrs: dict[str, Any] = {"kind": kind, "image_shape": [1, 8, 8]}
        if holdout > 0:
            split = spec.get("split", "train")
            x = split_digits(labelled_digits()[0], holdout, split, seed)
            if n is not None and int(n) < len(x):
                x = x[: int(n)]
            return x, None, {**attrs, "holdout": holdout, "split": split}
        return make_digits(n, seed), None, attrs
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of {list(DATASET_KINDS)}")
