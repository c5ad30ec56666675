r"""Data sets of the experiments, as float64 samples (N, d); :mod:`dfcore.data.store` writes and reads them.

Three kinds (config word ``kind`` of each entry of the ``datasets`` section):

* ``checkerboard`` — the 2-D chessboard of Table 2: uniform on the 8 black squares of a 4x4 board
  over :math:`[-2, 2]^2` (square side 1; a square with integer corner ``(i, j)`` is black when
  ``i + j`` is even).
* ``gaussian_mixture`` — :math:`q_0 = \sum_k \pi_k \mathcal N(\mu_k, s_k^2 I)` with parameters from the
  config, so the exact density (and Fisher) is known: :func:`make_dataset` also returns the
  :class:`~dfcore.mixtures.GaussianMixture`.
* ``digits`` — scikit-learn's bundled 8x8 digit images (1797 of them, no download),
  :math:`d = 64`, pixel values 0..16 mapped affinely to :math:`[-1, 1]` (``x / 8 - 1``); the attrs
  carry ``image_shape`` = ``[1, 8, 8]``.

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
    "make_digits",
    "labelled_digits",
    "make_dataset",
]

DATASET_KINDS = ("checkerboard", "gaussian_mixture", "digits")


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
    if kind == "digits":
        return make_digits(n, seed), None, {"kind": kind, "image_shape": [1, 8, 8]}
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of {list(DATASET_KINDS)}")
