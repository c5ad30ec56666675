"""Compare the CSVs of two results folders, file by file, and print a Markdown table of what differs.

Written for checking that a refactor leaves the workflow's numbers alone (docs/design.md, "Byte comparison with the
pre-refactor workflow"):

    python benchmarks/compare_results.py OLD/results NEW/results
    python benchmarks/compare_results.py OLD/results NEW/results --rename wall_s=seconds --exclude 'nfe_*'

For every CSV under either folder (paths relative to the folder) it reports one of

- ``bytes``: the two files are byte-identical;
- ``same``: after renaming the old file's columns (``--rename``, by default the column renames of the project's
  one column vocabulary) and dropping the timing columns (``--exclude``, shell patterns), every remaining cell has
  the same text in both files, the rows matched in order or by their key columns;
- ``differs``: the columns whose cells differ, each with the number of differing cells, the largest absolute and
  relative difference of the numeric ones;
- ``only old`` / ``only new``: the file exists on one side only.

Columns present on one side only and rows present on one side only (rows are matched by the columns that hold no
floating-point values, the n-th occurrence of a key with the n-th) are listed but do not make a file differ.
The exit status is 1 when any file differs, else 0.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# The renames of the project's column vocabulary (docs/design.md, "Result columns"): old name -> new name.
DEFAULT_RENAMES = {
    "wall_s": "seconds",
    "unguided_wall_s": "unguided_seconds",
    "peak_memory_mb": "peak_mem_mb",
    "bits_per_dim": "bpd",
}
# Timing and memory columns, which differ between any two runs (shell patterns on the column name).
DEFAULT_EXCLUDE = [
    "seconds",
    "*_seconds",
    "seconds_*",
    "wall_s",
    "*_wall_s",
    "*_cpu_s",
    "peak_mem_mb",
    "peak_memory_mb",
    "*per_second*",
    "*_per_s",
    "throughput*",
    "time_vs_floor",
    "speedup_*",
]


@dataclass
class ColumnDiff:
    name: str
    cells: int
    max_abs: float = float("nan")
    max_rel: float = float("nan")


@dataclass
class FileResult:
    path: str
    status: str
    rows: tuple[int, int] = (0, 0)
    diffs: list[ColumnDiff] = field(default_factory=list)
    only_old_cols: list[str] = field(default_factory=list)
    only_new_cols: list[str] = field(default_factory=list)
    only_old_rows: int = 0
    only_new_rows: int = 0
    excluded: list[str] = field(default_factory=list)
    matched_by: str = ""


def _excluded(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _read(path: Path) -> pd.DataFrame:
    """The CSV as text, cell by cell (no type conversion, empty cells stay empty strings)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _is_float_column(values: pd.Series) -> bool:
    """True when some cell parses as a number but not as an integer (such a column is a measurement, not a key)."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().all():
        return False
    text = values[numbers.notna()]
    return not text.str.fullmatch(r"[+-]?\d+").all()


def _align(old: pd.DataFrame, new: pd.DataFrame, cols: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, int, int, str]:
    """The rows of ``old`` and ``new`` paired up: in order when the key columns agree row by row, else by the key
    columns (with an occurrence counter for repeated keys). Returns the paired frames, the unpaired row counts and
    what the rows were matched by."""
    keys = [c for c in cols if not (_is_float_column(old[c]) or _is_float_column(new[c]))]
    if len(old) == len(new) and (not keys or old[keys].reset_index(drop=True).equals(new[keys].reset_index(drop=True))):
        return old.reset_index(drop=True), new.reset_index(drop=True), 0, 0, "order"
    if not keys:
        n = min(len(old), len(new))
        return (
            old.iloc[:n].reset_index(drop=True),
            new.iloc[:n].reset_index(drop=True),
            len(old) - n,
            len(new) - n,
            "order",
        )
    a, b = old.copy(), new.copy()
    a["__n"] = a.groupby(keys).cumcount()
    b["__n"] = b.groupby(keys).cumcount()
    merged = a.merge(b, on=keys + ["__n"], how="outer", suffixes=("__old", "__new"), indicator=True)
    both = merged[merged["_merge"] == "both"]
    left = pd.DataFrame({c: both[c] if c in keys else both[f"{c}__old"] for c in cols}).reset_index(drop=True)
    right = pd.DataFrame({c: both[c] if c in keys else both[f"{c}__new"] for c in cols}).reset_index(drop=True)
    only_old = int((merged["_merge"] == "left_only").sum())
    only_new = int((merged["_merge"] == "right_only").sum())
    return left, right, only_old, only_new, "keys " + ", ".join(keys)


def _column_diff(name: str, a: pd.Series, b: pd.Series) -> ColumnDiff | None:
    differ = a.to_numpy() != b.to_numpy()
    if not differ.any():
        return None
    x = pd.to_numeric(a[differ], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(b[differ], errors="coerce").to_numpy(dtype=float)
    out = ColumnDiff(name, int(differ.sum()))
    numeric = np.isfinite(x) & np.isfinite(y)
    if numeric.any():
        absdiff = np.abs(x[numeric] - y[numeric])
        scale = np.maximum(np.abs(x[numeric]), np.abs(y[numeric]))
        out.max_abs = float(absdiff.max())
        out.max_rel = float(np.max(np.where(scale > 0, absdiff / np.where(scale > 0, scale, 1.0), 0.0)))
    return out


def compare_file(old: Path, new: Path, rel: str, renames: dict[str, str], exclude: list[str]) -> FileResult:
    """Compare one CSV present on both sides."""
    if old.read_bytes() == new.read_bytes():
        n = len(_read(old))
        return FileResult(rel, "bytes", rows=(n, n))
    a, b = _read(old).rename(columns=renames), _read(new)
    excluded = sorted({c for c in [*a.columns, *b.columns] if _excluded(c, exclude)})
    cols = [c for c in a.columns if c in b.columns and c not in excluded]
    result = FileResult(rel, "same", rows=(len(a), len(b)), excluded=excluded)
    result.only_old_cols = [c for c in a.columns if c not in b.columns and c not in excluded]
    result.only_new_cols = [c for c in b.columns if c not in a.columns and c not in excluded]
    left, right, result.only_old_rows, result.only_new_rows, result.matched_by = _align(a[cols], b[cols], cols)
    for c in cols:
        if (d := _column_diff(c, left[c], right[c])) is not None:
            result.diffs.append(d)
    if result.diffs:
        result.status = "differs"
    return result


def compare_dirs(old_dir: Path, new_dir: Path, renames: dict[str, str], exclude: list[str]) -> list[FileResult]:
    """Every CSV under either folder, compared."""
    old_files = {str(p.relative_to(old_dir)) for p in old_dir.rglob("*.csv")}
    new_files = {str(p.relative_to(new_dir)) for p in new_dir.rglob("*.csv")}
    results = []
    for rel in sorted(old_files | new_files):
        if rel not in new_files:
            results.append(FileResult(rel, "only old"))
        elif rel not in old_files:
            results.append(FileResult(rel, "only new"))
        else:
            results.append(compare_file(old_dir / rel, new_dir / rel, rel, renames, exclude))
    return results


def _g(v: float) -> str:
    return "" if np.isnan(v) else f"{v:.3g}"


def markdown(results: list[FileResult]) -> str:
    """The results as a Markdown table, one line per file."""
    lines = [
        "| file | status | rows old / new | differing columns: cells, max abs, max rel | columns or rows on one side |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        diffs = "; ".join(f"`{d.name}`: {d.cells}, {_g(d.max_abs)}, {_g(d.max_rel)}" for d in r.diffs)
        extra = []
        if r.only_old_cols:
            extra.append("old only: " + ", ".join(f"`{c}`" for c in r.only_old_cols))
        if r.only_new_cols:
            extra.append("new only: " + ", ".join(f"`{c}`" for c in r.only_new_cols))
        if r.only_old_rows or r.only_new_rows:
            extra.append(f"unmatched rows {r.only_old_rows} / {r.only_new_rows} ({r.matched_by})")
        rows = f"{r.rows[0]} / {r.rows[1]}" if r.status not in ("only old", "only new") else ""
        lines.append(f"| {r.path} | {r.status} | {rows} | {diffs} | {'; '.join(extra)} |")
    excluded = sorted({c for r in results for c in r.excluded})
    if excluded:
        lines.append("")
        lines.append("Excluded (timing) columns: " + ", ".join(f"`{c}`" for c in excluded) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="results folder of the reference run")
    parser.add_argument("new", type=Path, help="results folder of the run to check")
    parser.add_argument(
        "--rename",
        action="append",
        default=None,
        metavar="OLD=NEW",
        help="column rename applied to the old side (repeatable; replaces the defaults: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_RENAMES.items())
        + ")",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="further column names (shell patterns) left out of the comparison, besides the timing columns "
        + " ".join(DEFAULT_EXCLUDE),
    )
    args = parser.parse_args(argv)
    for folder in (args.old, args.new):
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder")
    renames = DEFAULT_RENAMES if args.rename is None else dict(r.split("=", 1) for r in args.rename)
    results = compare_dirs(args.old, args.new, renames, DEFAULT_EXCLUDE + args.exclude)
    print(markdown(results))
    return 1 if any(r.status == "differs" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
