"""Fenced code blocks of the Markdown documentation, for the tests that run them (tests/test_docs.py and the
wheel check in tests/test_packaging.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PIPELINE_TAG", "CodeBlock", "code_blocks"]

# A python block tagged with this word (```python your-model) reads a user's pipeline folder: the docs test and the
# wheel check leave it out, and tests/test_pretrained_api.py runs it on a tiny pipeline.
PIPELINE_TAG = "your-model"

# An opening fence (up to 3 spaces of indent, or more inside a list item), its info string, the body, and a
# closing fence with the same indent and at least as many backticks.
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`\n]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)`*[ \t]*$", re.M | re.S
)


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block: the file, the 1-based line of its opening fence, its language, its dedented code, and the
    words of its info string after the language (``tags``)."""

    path: Path
    line: int
    language: str
    code: str
    tags: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.path.name}:{self.line}"


def code_blocks(path: Path, language: str | None = None) -> list[CodeBlock]:
    """Every fenced block of ``path`` (of one ``language`` when given), in order."""
    text = path.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        lang, *tags = match["info"].strip().split(" ")
        lang = lang.lower()
        if language is not None and lang != language:
            continue
        indent = len(match["indent"])
        lines = [line[indent:] if line[:indent].strip() == "" else line for line in match["body"].splitlines()]
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(CodeBlock(path, line, lang, "\n".join(lines) + "\n", tuple(tag for tag in tags if tag)))
    return blocks
