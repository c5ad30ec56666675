"""dfcore: the diffusion Fisher F_t(x) = -∇² log q_t(x), exact and learned (Wang et al., ICML 2025)."""

from dfcore.mixtures import DiracMixture, GaussianMixture, Mixture
from dfcore.schedules import Schedule, get_schedule

__all__ = ["DiracMixture", "GaussianMixture", "Mixture", "Schedule", "get_schedule"]
__version__ = "0.1.0"
