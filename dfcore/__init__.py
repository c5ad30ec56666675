"""dfcore: the diffusion Fisher F_t(x) = -∇² log q_t(x), exact and learned (Wang et al., ICML 2025)."""

from importlib.metadata import PackageNotFoundError, version

from dfcore.mixtures import DiracMixture, GaussianMixture, Mixture
from dfcore.schedules import Schedule, get_schedule

__all__ = ["DiracMixture", "GaussianMixture", "Mixture", "Schedule", "__version__", "get_schedule"]

try:
    __version__ = version("dfcore")  # set from the git tag when the package is built (setuptools-scm)
except PackageNotFoundError:  # the source tree on sys.path without an installed distribution
    __version__ = "0+unknown"
