"""Device and dtype selection from config words (``device: auto``, ``dtype: float64``)."""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "resolve_dtype"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` are taken as given."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: {err}") from None


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map ``float32``/``float64``/... to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(_DTYPES)}") from None
