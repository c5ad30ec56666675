"""Griffe extension for the API reference: the docstrings' reStructuredText inline markup as Markdown.

The docstrings of ``dfcore`` are written in reStructuredText (Sphinx roles, ``.. math::`` blocks, ``::`` literal
blocks). mkdocstrings renders docstrings as Markdown, so this extension rewrites, on every object that griffe
loads:

* ``:math:`x``` as ``\\(x\\)`` and ``.. math::`` blocks as ``\\[ ... \\]`` (pymdownx.arithmatex picks both up and
  docs/_ext/hooks.py turns them into MathML);
* ``:class:`~a.b.C```, ``:func:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``, ``:exc:`` and ``:obj:`` roles as
  code spans of the name (the short name after ``~``);
* a paragraph ending in ``::`` followed by an indented block as a paragraph ending in ``:`` and a fenced code block.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["RstToMarkdown", "rst_to_markdown"]

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_XREF_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _xref(match: re.Match[str]) -> str:
    short, target = match[1], match[2].strip()
    if "<" in target and target.endswith(">"):  # :func:`title <target>`
        target = target.split("<", 1)[0].strip()
    name = target.rsplit(".", 1)[-1] if short else target
    return f"`{name}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _blocks(lines: list[str]) -> list[str]:
    """``.. math::`` directives and ``::`` literal blocks, line by line."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip(" ")
        base = _indent(line)
        if stripped.startswith(".. math::"):
            body = [stripped[len(".. math::") :].strip()]
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                body.append(lines[i].strip())
                i += 1
            latex = "\n".join(part for part in body if part)
            pad = " " * base
            out += ["", f"{pad}\\[", *(f"{pad}{part}" for part in latex.splitlines()), f"{pad}\\]", ""]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > base:
                text = line[:-2].rstrip()
                out.append(text + ":" if text.strip() else "")
                body = []
                while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
                    body.append(lines[j])
                    j += 1
                while body and not body[-1].strip():
                    body.pop()
                cut = min(_indent(b) for b in body if b.strip())
                pad = " " * base
                out += ["", f"{pad}```text", *(f"{pad}{b[cut:]}" for b in body), f"{pad}```", ""]
                i = j
                continue
        out.append(line)
        i += 1
    return out


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with its reStructuredText constructs in Markdown (see the module docstring)."""
    text = "\n".join(_blocks(text.splitlines()))
    text = _MATH_ROLE.sub(lambda m: f"\\({m[1]}\\)", text)
    return _XREF_ROLE.sub(_xref, text)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring with :func:`rst_to_markdown` as griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
