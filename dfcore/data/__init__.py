"""Data sets of the experiments (:mod:`~dfcore.data.datasets`), the mixtures of the OT test
(:mod:`~dfcore.data.ot_mixtures`) and the Zarr stores they are kept in (:mod:`~dfcore.data.store`)."""

from dfcore.data.datasets import *  # noqa: F403
from dfcore.data.datasets import __all__ as _datasets
from dfcore.data.ot_mixtures import *  # noqa: F403
from dfcore.data.ot_mixtures import __all__ as _ot_mixtures
from dfcore.data.store import *  # noqa: F403
from dfcore.data.store import __all__ as _store

__all__ = [*_datasets, *_ot_mixtures, *_store]
