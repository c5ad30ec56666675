"""The site checker (docs/check_site.py) on a tiny site of its own: it passes a good site and names each broken
link, missing anchor and page that does not load. Needs Chromium (``make docs-check`` installs it)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs"))

from check_site import BROWSERS, check_site  # noqa: E402

BROWSER = next((b for b in BROWSERS if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium (make docs-check installs it)")

PAGE = '<html><body><article><h1 id="top">{title}</h1>{body}</article></body></html>'


def _site(root: Path, pages: dict[str, str]) -> Path:
    for name, body in pages.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PAGE.format(title=name, body=body))
    return root


def test_a_good_site_passes(tmp_path):
    site = _site(
        tmp_path,
        {
            "index.html": '<a href="sub/b.html#part">b</a><a href="https://example.org/">out</a>',
            "sub/b.html": '<p id="part">x</p><a href="../index.html#top">back</a><img src="../pic.png">',
        },
    )
    (site / "pic.png").write_bytes(b"\x89PNG")
    problems, pages, links, external = check_site(site, BROWSER)
    assert problems == [] and pages == 2 and links == 3
    assert external == {"https://example.org/"}


def test_broken_links_anchors_and_empty_pages_are_named(tmp_path):
    site = _site(
        tmp_path,
        {
            "index.html": '<a href="missing.html">m</a><a href="b.html#nowhere">n</a><script src="app.js"></script>',
            "b.html": "<p>b</p>",
        },
    )
    (site / "blank.html").write_text("<html><body><p>no article</p></body></html>")
    problems, pages, _, _ = check_site(site, BROWSER)
    assert pages == 3
    assert sorted(problems) == [
        "blank.html: the page did not load (no article with a heading in Chromium's DOM)",
        "index.html: broken link to /app.js (HTTP 404)",
        "index.html: broken link to /missing.html (HTTP 404)",
        "index.html: link to /b.html#nowhere, which has no element with that id",
    ]
