"""Peak-memory measurement of a block of code, on CUDA or on the CPU, and a fresh process to measure it in."""

from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import torch

__all__ = ["PeakMemory", "max_rss_bytes", "run_isolated"]

_T = TypeVar("_T")


def max_rss_bytes() -> int:
    """The largest resident set size this process has had (``getrusage(RUSAGE_SELF).ru_maxrss``, in bytes; Linux
    reports KiB, macOS bytes)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def run_isolated(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a fresh interpreter (``python -m dfcore.profiling``, with this process's ``sys.path``), its
    result or its exception sent back. A CPU :class:`PeakMemory` inside ``fn`` then counts pages from zero: no
    buffer the caller freed, and no earlier high-water mark, is there to hide the block's own allocations. ``fn``
    (a module-level function) and ``args`` must pickle. Unlike ``multiprocessing``'s spawn, the child never
    re-runs the caller's main script (a Snakemake ``script:`` has no ``__main__`` guard)."""
    with tempfile.TemporaryDirectory(prefix="dfcore-isolated-") as tmp:
        result_path = Path(tmp) / "result.pickle"
        payload = pickle.dumps(list(sys.path)) + pickle.dumps((fn, args))
        proc = subprocess.run([sys.executable, "-m", "dfcore.profiling", str(result_path)], input=payload, check=False)
        if not result_path.exists():
            raise RuntimeError(
                f"run_isolated: the child process running {fn.__qualname__} died (exit {proc.returncode})"
            )
        ok, value = pickle.loads(result_path.read_bytes())
    if not ok:
        raise value
    return cast(_T, value)


def _child_main(result_path: str) -> None:
    """The child of :func:`run_isolated`: the parent's ``sys.path``, then ``(fn, args)`` from stdin; ``(True,
    result)`` or ``(False, exception)`` pickled to ``result_path``."""
    sys.path[:] = pickle.load(sys.stdin.buffer)
    try:
        fn, args = pickle.load(sys.stdin.buffer)
        out: tuple[bool, Any] = (True, fn(*args))
    except Exception as err:  # sent back to the caller, which raises it
        out = (False, err)
    try:
        data = pickle.dumps(out)
    except Exception:  # an exception that does not pickle: its text
        data = pickle.dumps((False, RuntimeError("".join(traceback.format_exception(out[1])))))
    Path(result_path).write_bytes(data)


class PeakMemory:
    """Peak memory of a block (bytes): CUDA ``max_memory_allocated`` above the allocation at entry, or on CPU the
    peak resident set size above the level at entry, the larger of the level sampled every few milliseconds by a
    background thread and the process's ``ru_maxrss`` when the block raised it. On the CPU, pages that an earlier
    block freed and the allocator kept are reused without raising the resident set; run the block in its own
    process (:func:`run_isolated`) for a figure that counts them."""

    _base: int
    _max: int
    _maxrss: int

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except OSError:  # not Linux: fall back to the lifetime maximum
            return max_rss_bytes()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._max = self._rss()
            self._maxrss = max_rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, self._rss())
            maxrss = max_rss_bytes()
            if maxrss > self._maxrss:  # the block set a new high-water mark: exact, where the sampling may miss it
                self._max = max(self._max, maxrss)
            self.peak_bytes = self._max - self._base


if __name__ == "__main__":
    _child_main(sys.argv[1])
