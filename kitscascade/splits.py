"""Deterministic train/validation split and K folds over the training cases."""

from __future__ import annotations

import logging

import numpy as np

from kitscascade import io

log = logging.getLogger(__name__)


def make_splits(
    case_ids: list[str], labeled: dict[str, bool], n_validation: int, n_folds: int, seed: int
) -> dict:
    """Split labeled cases into a held-out validation set and K training folds.

    Unlabeled cases (no segmentation) are never trained on or evaluated; they
    are listed under ``"unlabeled"`` and only predicted. The result depends only
    on the sorted case ids, the labeled flags, the sizes and ``seed``.

    Returns ``{"seed", "validation", "training", "unlabeled", "folds"}`` where
    ``folds[k] = {"train": [...], "val": [...]}`` partitions ``training``.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("make_splits: duplicate case ids")
    pool = [c for c in ids if labeled[c]]
    unlabeled = [c for c in ids if not labeled[c]]
    if n_folds < 2:
        raise ValueError(f"splits.n_folds={n_folds}: expected at least 2 (stage 2 trains on out-of-fold priors)")
    if n_validation < 0 or len(pool) - n_validation < n_folds:
        raise ValueError(
            f"splits.n_validation={n_validation}, splits.n_folds={n_folds}: only {len(pool)} labeled "
            f"cases, expected at least n_validation + n_folds"
        )
    rng = np.random.default_rng(seed)
    order = [pool[i] for i in rng.permutation(len(pool))]
    validation = sorted(order[:n_validation])
    training = order[n_validation:]
    fold_of = {case: i % n_folds for i, case in enumerate(training)}
    folds = [
        {
            "train": sorted(c for c in training if fold_of[c] != k),
            "val": sorted(c for c in training if fold_of[c] == k),
        }
        for k in range(n_folds)
    ]
    return {
        "seed": seed,
        "validation": validation,
        "training": sorted(training),
        "unlabeled": unlabeled,
        "folds": folds,
    }


def held_out_fold(splits: dict, case_id: str) -> int | None:
    """The fold whose model did NOT train on ``case_id`` (None for validation/unlabeled cases)."""
    for k, fold in enumerate(splits["folds"]):
        if case_id in fold["val"]:
            return k
    return None


def save_splits(split: dict, out_path) -> None:
    """Write a :func:`make_splits` result (the workflow plans it at parse time; this records it)."""
    io.save_json(split, out_path)
    log.info("splits: %d training (%d folds), %d validation, %d unlabeled", len(split["training"]),
             len(split["folds"]), len(split["validation"]), len(split["unlabeled"]))
