"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks``).

* ``--8<-- "path"`` on a line of its own includes a repository file (config/README.md, resources/README.md,
  CHANGELOG.md), and links from the pages to files outside docs/ (written for readers of the repository) point
  to the site pages that include those files.
* Math: pymdownx.arithmatex marks ``\\(...\\)`` and ``\\[...\\]`` (from the pages and from the docstrings, see
  docs/_ext/rst_docstrings.py); each is converted here to MathML, which browsers render without JavaScript
  or fonts from the network. A formula that latex2mathml cannot convert stays as its LaTeX source in code.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

from latex2mathml.converter import convert

# Repository files outside docs/ -> the site page that shows them (each of these pages includes its file).
OUTSIDE_PAGES = {
    "README.md": "getting-started.md",
    "config/README.md": "config.md",
    "resources/README.md": "resources.md",
    "CHANGELOG.md": "changelog.md",
}
REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
_LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)#\s]+)(#[^)\s]*)?\)")
_INCLUDE = re.compile(r'^--8<-- "([^"]+)"[ \t]*$', re.M)
_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)


def _rewrite_links(markdown: str, source_dir: Path, page_dir: Path) -> str:
    """Relative links of ``markdown`` (written in ``source_dir``) as seen from the page in ``page_dir``: a target
    inside docs/ keeps pointing to it, a repository file of OUTSIDE_PAGES points to its page."""

    def repl(match: re.Match[str]) -> str:
        target = (source_dir / match[1]).resolve()
        if target.is_relative_to(REPO) and (page := OUTSIDE_PAGES.get(target.relative_to(REPO).as_posix())):
            target = DOCS / page
        if not target.is_relative_to(DOCS):
            return match[0]
        return f"]({os.path.relpath(target, page_dir).replace(os.sep, '/')}{match[2] or ''})"

    return _LINK.sub(repl, markdown)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Links out of docs/ rewritten, and each ``--8<-- "path"`` line replaced by that repository file (its links
    rewritten too)."""
    page_dir = (DOCS / page.file.src_uri).parent

    def include(match: re.Match[str]) -> str:
        path = REPO / match[1]
        if not path.is_file():
            raise FileNotFoundError(f"{page.file.src_uri}: included file {match[1]} does not exist")
        return _rewrite_links(path.read_text(), path.parent, page_dir)

    return _INCLUDE.sub(include, _rewrite_links(markdown, page_dir, page_dir))


def to_mathml(latex: str, display: bool) -> str:
    """MathML of one formula; Sphinx-style multi-line blocks (``&`` and ``\\\\``) are set as ``align*``."""
    latex = latex.strip()
    if display and ("\\\\" in latex or "&" in latex) and "\\begin" not in latex:
        latex = "\\begin{align*}" + latex + "\\end{align*}"
    try:
        return convert(latex, display="block" if display else "inline")
    except Exception:  # an unsupported macro: show the source rather than fail the build
        return f"<code>{html.escape(latex)}</code>"


def on_page_content(content: str, **kwargs: Any) -> str:
    content = _BLOCK.sub(lambda m: f'<div class="math">{to_mathml(html.unescape(m[1]), True)}</div>', content)
    return _INLINE.sub(lambda m: to_mathml(html.unescape(m[1]), False), content)
