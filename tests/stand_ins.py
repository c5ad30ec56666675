"""Stand-in trace nets for the tests, built on closed forms."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dfcore.models.base import TraceModel

__all__ = ["ScaledPosteriorVariance"]


class ScaledPosteriorVariance(TraceModel):
    """A stand-in trace net whose posterior variance is a mixture's exact one times a factor along the path,
    ``factor(t)``."""

    def __init__(self, mixture, schedule, factor: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.mixture, self.schedule, self.factor = mixture, schedule, factor

    def posterior_variance(self, x, t, denoiser=None):
        v = self.mixture.posterior_variance(x.flatten(1).to(torch.float64), t.to(torch.float64), self.schedule)
        return self.factor(t) * v

    def mean_sq_norm(self, x, t):
        raise NotImplementedError
