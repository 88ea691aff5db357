"""Tables for the report: the paper's Table 1 from finished experiments, and the per-job benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kitscascade import io


def collect_benchmarks(folders, benchmarks_root, out_path, cases, folds, exclude=()) -> pd.DataFrame:
    """One table of Snakemake's per-job benchmarks (the ``benchmark:`` TSVs under ``folders``).

    ``folders`` are the benchmark folders of an experiment, its data set's
    first (its shared artifacts' and its own). A job of a case is named after
    the case, a training job ``fold_<k>``; those of another plan, left behind
    by an earlier data set or fold count, are left out, and so is everything
    under the folders in ``exclude`` (e.g. predictions of other scans). Jobs
    directly in the data set's folder (phantoms, statistics) are kept.
    Columns: ``job`` (the TSV's path under ``benchmarks_root``, without
    suffix), ``seconds``, ``max_rss_mb``; slowest first.
    """
    dataset, keep = Path(folders[0]), set(cases) | {f"fold_{k}" for k in folds}
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.tsv")):
            job = path.relative_to(benchmarks_root).with_suffix("")
            if (path.stem not in keep and path.parent != dataset) or any(Path(e) in path.parents for e in exclude):
                continue
            frame = pd.read_csv(path, sep="\t")
            rows.append({"job": str(job), "seconds": float(frame["s"].iloc[0]), "max_rss_mb": frame["max_rss"].iloc[0]})
    table = pd.DataFrame(rows, columns=["job", "seconds", "max_rss_mb"]).sort_values("seconds", ascending=False)
    io.save_table(table, out_path)
    return table


def write_table1(rows: list[dict], csv_path, md_path) -> pd.DataFrame:
    """The paper's Table 1 from finished experiments: mean (and std) Dice in % over validation cases.

    Stage-1 rows report the localizer's kidney Dice (its mask against kidney +
    tumor); our stage 1 does not segment the tumor, so their tumor column is
    empty. Stage-2 rows report the final kidney and tumor Dice.
    """
    records = []
    for row in rows:
        if row["stage"] == 1:
            kidney = pd.Series([io.load_json(p)["stage1_dice"] for p in row["sources"]], dtype=float)
            tumor = pd.Series([np.nan])
        else:
            per_case = pd.read_csv(row["sources"][0])
            kidney, tumor = per_case["kidney_dice"], per_case["tumor_dice"]
        records.append({
            "stage": row["stage"],
            "method": row["method"],
            "kidney_dice": 100 * kidney.mean(),
            "kidney_dice_std": 100 * kidney.std(),
            "tumor_dice": 100 * tumor.mean(),
            "tumor_dice_std": 100 * tumor.std(),
            "n_cases": int(kidney.notna().sum()),
            "paper_kidney_dice": row["paper"][0],
            "paper_tumor_dice": row["paper"][1],
            "experiment": row["experiment"],
        })
    table = pd.DataFrame(records)
    io.save_table(table.round(2), csv_path)
    lines = [
        "| Stage | Method | Kidney Dice [%] | Tumor Dice [%] | n | Paper kidney | Paper tumor |",
        "|---|---|---|---|---|---|---|",
    ]
    fmt = lambda m, s: "–" if np.isnan(m) else f"{m:.2f} ± {s:.2f}"  # noqa: E731
    for r in records:
        lines.append(
            f"| {r['stage']} | {r['method']} | {fmt(r['kidney_dice'], r['kidney_dice_std'])} | "
            f"{fmt(r['tumor_dice'], r['tumor_dice_std'])} | {r['n_cases']} | {r['paper_kidney_dice']:.2f} | "
            f"{r['paper_tumor_dice']:.2f} |"
        )
    with io.atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return table
