"""Read and look at a Snakemake report archive (``snakemake --report results/report.zip``).

- :func:`report_results` unpacks the archive and returns the entry of every result in it (name,
  caption, category, data file), as the report's own page lists them;
- :func:`screenshot` renders the report's page in headless Chromium, with one result shown (its
  category open in the navigation bar, the figure or table in the content pane), to a PNG.

Used by tests/test_workflow.py (every result captioned) and by hand::

    python tests/report_tools.py results/report.zip shots/     # one PNG per result, and the start page
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["CHROMIUM_FLAGS", "report_results", "screenshot", "unpack"]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]


def unpack(archive: Path, dst: Path) -> Path:
    """Unpack the archive; return the path of its report.html."""
    with zipfile.ZipFile(archive) as zf:
        bad = zf.testzip()
        if bad is not None:
            raise ValueError(f"{archive}: damaged member {bad}")
        zf.extractall(dst)
    pages = list(dst.rglob("report.html"))
    if len(pages) != 1:
        raise ValueError(f"{archive}: expected one report.html, found {pages}")
    return pages[0]


def _js_object(html: str, name: str) -> dict:
    match = re.search(rf"var {name} = (\{{.*?\}});\n", html, re.DOTALL)
    if match is None:
        raise ValueError(f"no `var {name}` in the report page")
    return json.loads(match.group(1))


def report_results(archive: Path) -> dict[str, dict]:
    """Every result of the report: {path: entry}, each entry with 'caption', 'category', 'subcategory',
    'mime_type' and 'data' (the unpacked data file)."""
    with tempfile.TemporaryDirectory() as tmp:
        page = unpack(archive, Path(tmp))
        html = page.read_text()
        results = _js_object(html, "results")
        categories = _js_object(html, "categories")
        where = {path: (cat, sub) for cat, subs in categories.items() for sub, paths in subs.items() for path in paths}
        for path, entry in results.items():
            entry["category"], entry["subcategory"] = where.get(path, (None, None))
            data = page.parent / entry["data_uri"]
            entry["data"] = data.read_bytes() if data.exists() else None
        return results


_SHOW = """
<script>
// Added for the screenshot only: open the category of one result and show it (the report's own app API).
// React renders asynchronously: wait until the app object exists, then switch the view once.
const timer = setInterval(function () {
  const target = new URLSearchParams(window.location.search).get("show");
  if (!target) { clearInterval(timer); return; }
  if (typeof app === "undefined" || app === null) return;
  clearInterval(timer);
  let view = {navbarMode: "menu"};
  for (const [category, subs] of Object.entries(categories)) {
    for (const [sub, paths] of Object.entries(subs)) {
      if (paths.includes(target)) view = {navbarMode: "subcategory", category: category, subcategory: sub};
    }
  }
  const entry = results[target];
  if (entry.mime_type.startsWith("image/")) {
    Object.assign(view, {content: "img", contentPath: entry.data_uri, resultPath: target});
  }
  app.setView(view);  // one call: the app merges each call into its state
}, 100);
</script>
"""


def screenshot(
    archive: Path,
    out: Path,
    show: str | None = None,
    size: tuple[int, int] = (1400, 1000),
    chromium: str = "chromium",
    timeout: float = 120,
) -> Path:
    """A PNG of the report page in headless Chromium, showing result ``show`` (a path as in the report)
    or the start page."""
    exe = shutil.which(chromium)
    if exe is None:
        raise FileNotFoundError(f"{chromium} not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        page = unpack(archive, Path(tmp) / "report")
        html = page.read_text()
        head, body_end, tail = html.rpartition("</body>")  # the page's own end (scripts contain the string too)
        page.with_name("shot.html").write_text(head + _SHOW + body_end + tail)
        url = page.with_name("shot.html").as_uri() + (f"?show={show}" if show else "")
        profile = Path(tmp) / "profile"
        out.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                exe,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                "--virtual-time-budget=8000",
                f"--screenshot={out.resolve()}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0 or not out.exists():
            raise RuntimeError(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")
    return out


def main(argv: list[str]) -> None:
    archive, outdir = Path(argv[0]), Path(argv[1])
    results = report_results(archive)
    screenshot(archive, outdir / "start.png")
    for i, (path, entry) in enumerate(sorted(results.items())):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", path)
        screenshot(archive, outdir / f"{i:02d}_{name}.png", show=path)
        caption = re.sub(r"<[^>]+>", "", entry["caption"] or "").strip().replace("\n", " ")
        print(f"{path}  [{entry['category']}]  {caption[:100]}")


if __name__ == "__main__":
    main(sys.argv[1:])
