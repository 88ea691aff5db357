"""Experiments as data: named variants of one base config, and the keys that let them share work.

Every artifact is keyed by the settings it depends on, so two experiments
that differ only in stage 2 use the same statistics, preprocessed arrays,
stage-1 models and stage-1 predictions (one set of files):

- ``data``:   data_dir (or the phantom settings), splits, statistics
- ``pre``:    data + stage-1 resampling (``spacing_factor``, ``image_order``)
- ``stage1``: pre + the rest of ``stage1`` (network, patch, training, inference)
- ``rois``:   stage1 + the ROI settings of stage 2 (margin, count, patch size)

A key is a short hash of those settings; the experiment's own outputs (stage-2
models, predictions, evaluation) live under its name.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass

PRE_KEYS = ("spacing_factor", "image_order")
ROI_KEYS = ("roi_margin_mm", "max_rois", "patch_size")
VARIANT_SECTIONS = ("stage1", "stage2")


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` applied recursively (a new dict; inputs untouched)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def settings_key(*parts) -> str:
    """A 10-hex-digit hash of JSON-serialisable settings (key order does not matter)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Experiment:
    name: str
    config: dict
    data_key: str
    pre_key: str
    stage1_key: str
    roi_key: str


def plan_experiment(name: str, config: dict) -> Experiment:
    data = config["data_dir"] or config["phantoms"]
    data_key = settings_key(data, config["splits"], config["statistics"])
    s1, s2 = config["stage1"], config["stage2"]
    pre_key = settings_key(data_key, {k: s1[k] for k in PRE_KEYS})
    stage1_key = settings_key(pre_key, {k: v for k, v in s1.items() if k not in PRE_KEYS})
    roi_key = settings_key(stage1_key, {k: s2[k] for k in ROI_KEYS})
    return Experiment(name, config, data_key, pre_key, stage1_key, roi_key)


def plan_experiments(config: dict) -> dict[str, Experiment]:
    """The base experiment and every Table 1 variant, by name.

    A variant's overrides may only touch ``stage1`` and ``stage2``; one whose
    settings equal the base's IS the base experiment (no copy is trained).
    """
    base = plan_experiment(config["experiment"], config)
    plans = {base.name: base}
    for variant in config["table1"]["variants"]:
        bad = set(variant["overrides"]) - set(VARIANT_SECTIONS)
        if bad:
            raise ValueError(
                f"table1.variants[{variant['name']}].overrides: {sorted(bad)} cannot vary, only {VARIANT_SECTIONS}"
            )
        merged = deep_merge(config, variant["overrides"])
        plan = plan_experiment(variant_experiment(config, variant), merged)
        plans.setdefault(plan.name, plan)
    return plans


def variant_experiment(config: dict, variant: dict) -> str:
    """The experiment a Table 1 variant runs as: the base one if it changes nothing, else ``<base>.<name>``."""
    merged = deep_merge(config, variant["overrides"])
    same = all(merged[s] == config[s] for s in VARIANT_SECTIONS)
    return config["experiment"] if same else f"{config['experiment']}.{variant['name']}"
