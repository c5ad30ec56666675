"""Whether several DF-TM trace nets do better together: the per-image bits/dim of their average, from the ``bpd.csv``
files of ``python -m dfcore.experiments.pretrained measure`` runs on the same model and images.

Along a likelihood solve the state follows the denoiser's drift alone, and the trace enters the log-density
increment linearly (Eq. 17), so on a fixed solver grid (``measure``'s RK4) and the same dequantisation draws the
average of K nets' traces gives the average of their bits/dim exactly. (An adaptive solver keeps this only when its
error control watches the state alone, ``step_control: state``.) The script checks that the runs share those (their ``vjp`` rows agree to
1e-6 bits/dim), then reports for every subset of the nets the mean, signed mean and largest per-image
|bits/dim(average) - bits/dim(vjp)|, and the correlation between the nets' per-image errors: independent errors
average out, shared ones do not.

Writes results/benchmarks/trace_ensemble.csv (one row per subset) and trace_ensemble_correlation.csv. Run, with the
``measure`` output folders (each with the methods ``vjp`` and ``dftm``):
``python benchmarks/trace_ensemble.py R/m_net_a R/m_net_b R/m_net_c``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pandas as pd

from dfcore.io import write_csv

AGREEMENT = 1e-6  # bits/dim: the vjp rows of runs on the same images and grid


def per_image_bpd(folder: Path) -> pd.DataFrame:
    """The ``bpd.csv`` of a ``measure`` folder as one column per method, one row per image."""
    frame = pd.read_csv(folder / "bpd.csv")
    table = frame.pivot_table(index="image", columns="method", values="bpd")
    missing = {"vjp", "dftm"} - set(table.columns)
    if missing:
        raise ValueError(f"{folder}/bpd.csv has no rows of {sorted(missing)}; measure it with methods vjp and dftm")
    return table


def errors_against_vjp(folders: list[Path]) -> pd.DataFrame:
    """Per image (rows) and folder (columns): bits/dim(dftm) - bits/dim(vjp); ValueError when the runs' vjp rows
    differ (other images, draws or solver grid)."""
    tables = {folder: per_image_bpd(folder) for folder in folders}
    reference = tables[folders[0]]["vjp"]
    for folder, table in tables.items():
        if not table.index.equals(reference.index) or (table["vjp"] - reference).abs().max() > AGREEMENT:
            raise ValueError(f"{folder} and {folders[0]} measured other images or another grid: their vjp rows differ")
    return pd.DataFrame({folder.name: table["dftm"] - reference for folder, table in tables.items()})


def subsets(errors: pd.DataFrame) -> pd.DataFrame:
    """One row per non-empty subset of the columns: the error of the subset's average per image, summarised."""
    rows = []
    for k in range(1, errors.shape[1] + 1):
        for names in itertools.combinations(errors.columns, k):
            error = errors[list(names)].mean(axis=1)
            rows.append(
                {
                    "nets": "+".join(names),
                    "num_nets": k,
                    "mean_abs": float(error.abs().mean()),
                    "signed": float(error.mean()),
                    "max_abs": float(error.abs().max()),
                    "num_images": len(error),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="measure output folders (vjp and dftm rows)")
    parser.add_argument("--out", default="results/benchmarks/trace_ensemble.csv")
    args = parser.parse_args()
    errors = errors_against_vjp(args.folders)
    table = subsets(errors)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(table, out)
    correlation = errors.corr()
    write_csv(correlation.reset_index(names="net"), out.with_name(out.stem + "_correlation.csv"))
    print(table.sort_values("mean_abs").to_string(index=False))
    print(correlation.round(3).to_string())


if __name__ == "__main__":
    main()
