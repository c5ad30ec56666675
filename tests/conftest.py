"""Fixtures shared by every test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread in the test process, module fixtures included: the tests' tensors are tiny, and on a
    machine whose cores are busy a second thread only spins (a test can take ten times as long). Processes the
    tests start (Snakemake jobs, command lines) choose their own thread counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
