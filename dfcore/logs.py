"""One way for a workflow rule's script to send its output to the rule's log file, tracebacks included.

``workflow/scripts/*.py`` run their whole body inside :func:`rule_log`, given the log path as a plain
argument (this module does not depend on Snakemake). :func:`drop_log_messages` silences one known-harmless
message of a third-party logger where that library is used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO, cast

__all__ = ["LOG_FORMAT", "MessageFilter", "drop_log_messages", "rule_log"]

LOG_FORMAT = "%(asctime)s %(name)s %(message)s"


@contextlib.contextmanager
def rule_log(
    path: str | os.PathLike[str], *, mode: str = "w", level: int = logging.INFO, fmt: str = LOG_FORMAT
) -> Iterator[TextIO]:
    """Inside the block, ``sys.stdout``, ``sys.stderr`` (print, warnings, progress bars) and the root
    logger (at ``level``, formatted with ``fmt``) write to the file ``path``, opened line-buffered
    with ``mode`` (``"w"`` truncates, ``"a"`` appends).

    An exception leaving the block has its traceback written to the file, which is then flushed and
    closed, and the exception propagates (so the job still fails); a ``SystemExit`` with status 0 or
    None writes nothing. On exit the previous ``sys.stdout``, ``sys.stderr``, root handlers and root
    level are restored, so nothing is left pointing at the closed file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = cast(TextIO, open(path, mode, buffering=1, encoding="utf-8"))  # text mode: an encoding is given
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(fmt))
    saved = sys.stdout, sys.stderr, root.level
    root.addHandler(handler)
    root.setLevel(level)
    sys.stdout = sys.stderr = stream
    try:
        yield stream
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            traceback.print_exc(file=stream)
        raise
    except BaseException:
        traceback.print_exc(file=stream)
        raise
    finally:
        sys.stdout, sys.stderr, level_before = saved
        root.removeHandler(handler)
        root.setLevel(level_before)
        handler.close()
        stream.close()


class MessageFilter(logging.Filter):
    """Drops every record whose formatted message contains one of ``fragments``."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def drop_log_messages(logger: str, *fragments: str) -> MessageFilter:
    """Attach a :class:`MessageFilter` for ``fragments`` to the logger named ``logger`` (the one the library
    logs the message with: a logger's filters see only its own records), once; returns the filter."""
    target = logging.getLogger(logger)
    for existing in target.filters:
        if isinstance(existing, MessageFilter) and existing.fragments == fragments:
            return existing
    message_filter = MessageFilter(*fragments)
    target.addFilter(message_filter)
    return message_filter
