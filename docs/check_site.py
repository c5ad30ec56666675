"""Check the built documentation site in headless Chromium: every page loads and no link is broken.

    python docs/check_site.py site            # after `mkdocs build --site-dir site` (make docs-check)

The site is served by a local HTTP server on 127.0.0.1 (a free port). Each HTML page is loaded by
``chromium --headless --dump-dom``; a page passes when Chromium returns its DOM with the page's article and
heading. Every link, stylesheet, script and image of every loaded DOM that points into the site must answer
200 from the server, and a ``#fragment`` must name an element id of its target page. Links to other hosts
are listed, not fetched (the check runs offline). Exit status 1 and one line per problem when anything fails.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 at a free port for the duration of the block; yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _Links(HTMLParser):
    """The URLs that a page refers to, and the element ids it defines."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.ids: set[str] = set()
        self.has_article = False
        self.has_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        if tag == "article":
            self.has_article = True
        if tag == "h1":
            self.has_heading = True
        key = {"a": "href", "link": "href", "script": "src", "img": "src"}.get(tag)
        url = values.get(key) if key else None
        if url and not url.startswith(("javascript:", "mailto:", "data:")):
            self.urls.append(url)


def dump_dom(browser: str, url: str, timeout: float = 60.0) -> str:
    """The DOM of ``url`` after Chromium has run its scripts."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--dump-dom", url]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{browser} exited with {result.returncode} on {url}: {result.stderr[-500:]}")
    return result.stdout


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def check_site(root: Path, browser: str, workers: int = 2) -> tuple[list[str], int, int, set[str]]:
    """Problems found, pages loaded, internal links checked, and the external URLs seen."""
    pages = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html"))
    if not pages:
        return [f"{root}: no HTML pages (build the site first: mkdocs build --site-dir {root})"], 0, 0, set()
    problems: list[str] = []
    external: set[str] = set()
    with serve(root) as base:
        with ThreadPoolExecutor(workers) as pool:
            doms = dict(zip(pages, pool.map(lambda page: dump_dom(browser, base + page), pages), strict=True))
        parsed: dict[str, _Links] = {}
        for page, dom in doms.items():
            links = _Links()
            links.feed(dom)
            parsed[page] = links
            if not (links.has_article and links.has_heading):
                problems.append(f"{page}: the page did not load (no article with a heading in Chromium's DOM)")
        targets: dict[str, set[tuple[str, str]]] = {}  # target URL without fragment -> {(page, fragment)}
        for page, links in parsed.items():
            for raw in links.urls:
                absolute = urljoin(base + page, raw)
                if not absolute.startswith(base):
                    external.add(absolute)
                    continue
                target, fragment = urldefrag(absolute)
                targets.setdefault(target, set()).add((page, fragment))
        codes = dict(zip(targets, ThreadPoolExecutor(8).map(status, targets), strict=True))
        for target, uses in sorted(targets.items()):
            path = urlsplit(target).path.lstrip("/")
            for page, fragment in sorted(uses):
                if codes[target] != 200:
                    problems.append(f"{page}: broken link to /{path} (HTTP {codes[target]})")
                elif fragment and path.endswith(".html") and fragment not in _ids(root, path, parsed):
                    problems.append(f"{page}: link to /{path}#{fragment}, which has no element with that id")
    return problems, len(pages), sum(len(u) for u in targets.values()), external


def _ids(root: Path, path: str, parsed: dict[str, _Links]) -> set[str]:
    if path in parsed:
        return parsed[path].ids
    links = _Links()
    links.feed((root / path).read_text())
    return links.ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the built site (mkdocs build --site-dir SITE)")
    parser.add_argument("--browser", default=None, help="Chromium executable (default: the first on the PATH)")
    args = parser.parse_args(argv)
    browser = args.browser or next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print(f"no Chromium on the PATH ({', '.join(BROWSERS)}); apt-get install chromium", file=sys.stderr)
        return 2
    problems, pages, links, external = check_site(args.site.resolve(), browser)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{pages} pages loaded in {browser}, {links} internal links checked, {len(problems)} problems")
    print(f"{len(external)} external links not fetched (offline): {', '.join(sorted(external)[:5])}, ...")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
