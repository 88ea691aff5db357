"""Tables for the report: the paper's Table 1 from finished experiments, and the per-job benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kitscascade import io, metrics


def collect_benchmarks(folders, benchmarks_root, out_path, cases, folds, exclude=()) -> pd.DataFrame:
    """One table of Snakemake's per-job benchmarks (the ``benchmark:`` TSVs under ``folders``).

    ``folders`` are the benchmark folders of an experiment, its data set's
    first (its shared artifacts' and its own). A job of a case is named after
    the case, a training job and stage 1's out-of-fold predictions of a fold
    ``fold_<k>``; those of another plan, left behind
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


def write_table1(rows: list[dict], base_experiment: str, csv_path, md_path) -> pd.DataFrame:
    """The paper's Table 1 from finished experiments: mean (and std) Dice in % over validation cases.

    ``rows``: one per variant, in order, with ``stage``, ``method``, ``paper``
    (its kidney and tumor Dice), ``experiment`` and ``sources``: the per-case
    CSVs of stage 1's own label maps (stage-1 rows: the single-stage
    network) or the experiment's ``per_case.csv`` (stage-2 rows: the
    cascade). A stage 1 with ``classes: merged`` has no tumor column ("–").

    Below the table, the cascade's gain over the single-stage 3-D U-Net:
    the per-case difference between the stage-2 and the stage-1 row of
    ``base_experiment`` (the paper's configuration), mean ± std, beside the
    paper's 97.70 -> 98.05 (kidney) and 73.31 -> 83.70 (tumor).
    """
    records, per_case = [], {}
    for row in rows:
        frame = pd.concat([pd.read_csv(p) for p in row["sources"]], ignore_index=True)
        per_case[(row["stage"], row["experiment"])] = frame
        kidney = frame["kidney_dice"]
        tumor = frame["tumor_dice"] if "tumor_dice" in frame else pd.Series([np.nan])
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
    if (1, base_experiment) in per_case and (2, base_experiment) in per_case:
        gain = metrics.compare_stages(per_case[(1, base_experiment)], per_case[(2, base_experiment)])
        gain = gain.set_index("metric")
        parts = []
        for metric, name, paper in (("kidney_dice", "kidney", "97.70 -> 98.05"), ("tumor_dice", "tumor", "73.31 -> 83.70")):
            if metric in gain.index:
                g = gain.loc[metric]
                parts.append(f"{name} {100 * g['stage1_mean']:.2f} -> {100 * g['cascade_mean']:.2f}, "
                             f"gain {100 * g['gain_mean']:+.2f} ± {100 * g['gain_std']:.2f} (paper: {paper})")
        lines += ["", f"Cascade over the single-stage 3-D U-Net ({base_experiment}, per-case differences, "
                      f"n = {int(gain['n'].max())}): " + "; ".join(parts) + "."]
    with io.atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return table
