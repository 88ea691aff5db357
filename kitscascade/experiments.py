"""Planning the workflow: cases, splits, experiments and the shared folders they use.

Everything the ``Snakefile`` needs to know before any job runs is computed
here once, from the config and a listing of ``data_dir``, and handed to
``rules/common.smk`` as a :class:`Plan`; the rules only turn it into paths.

Experiments are data: the base config plus one named variant per Table 1
row, each a small override of ``stage1``/``stage2`` that is merged and
validated against the schema when the workflow is parsed (a typo in an
override is an error naming the variant and the key, before any job runs).

Artifacts are shared between experiments by the settings they depend on, so
two experiments that differ only in stage 2 use one set of statistics,
preprocessed arrays, stage-1 models and stage-1 predictions:

- ``data``:   data_dir (or the phantom settings), the label values, splits, statistics
- ``pre``:    data + stage-1 resampling (``spacing_factor``, ``image_order``), the
  classes its labels are resampled as (``classes``) and the body mask (``body_threshold_hu``)
- ``stage1``: pre + the rest of ``stage1`` (network, patch, training), except
  the settings of how jobs run (``config.EXECUTION_KEYS``: device, loader
  workers, ...) and those only prediction reads (``config.PREDICTION_KEYS``:
  ``inference``, ``keep_components``, ``component_min_peak``). Its models are kept when those
  change; its predictions are made again in place (the rule's params), so
  experiments that share the folder must agree on them.
- ``rois``:   stage1 + the ROI settings of stage 2 (margin, count, patch size)

Each lives in ``results/shared/<folder>/`` where the folder name is a short
readable part (the phantoms or the data folder's name, the spacing factors,
the network and patch, the ROI margin) plus a hash of all those settings, so
it changes whenever they do. The experiment's own outputs (stage-2 models,
predictions, evaluation) live under its name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kitscascade import config as configuration
from kitscascade import io, splits

KINDS = ("data", "pre", "stage1", "rois")
PRE_KEYS = ("spacing_factor", "image_order", "classes", "body_threshold_hu")
ROI_KEYS = ("roi_margin_mm", "max_rois", "patch_size")
VARIANT_SECTIONS = ("stage1", "stage2")


def settings_key(*parts) -> str:
    """A 10-hex-digit hash of JSON-serialisable settings (key order does not matter)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _dims(values) -> str:
    return "x".join(f"{v:g}" for v in values)


def _readable(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "data"


def shared_settings(config: dict) -> dict[str, dict]:
    """The settings each shared folder of ``config`` depends on, cumulatively (``rois`` holds all four)."""
    s1, s2 = configuration.without_execution(config["stage1"]), config["stage2"]
    data_dir = os.path.normpath(config["data_dir"]) if config["data_dir"] else None  # kits/data/ is kits/data
    data = {"data_dir": data_dir, "phantoms": None if config["data_dir"] else config["phantoms"], "labels": config["labels"],
            "splits": config["splits"], "statistics": config["statistics"]}
    pre = {"data": data, "stage1": {k: s1[k] for k in PRE_KEYS}}
    stage1 = {**pre, "stage1": configuration.training_settings(s1)}
    rois = {**stage1, "stage2": {k: s2[k] for k in ROI_KEYS}}
    return {"data": data, "pre": pre, "stage1": stage1, "rois": rois}


def shared_folders(config: dict) -> dict[str, str]:
    """Folder name under ``results/shared/`` of each kind: ``<kind>-<readable part>-<hash>``."""
    s1, s2 = config["stage1"], config["stage2"]
    readable = {
        "data": "phantoms" if not config["data_dir"] else _readable(Path(os.path.normpath(config["data_dir"])).name),
        "pre": _dims(s1["spacing_factor"]),
        "stage1": f"{s1['network']['kind']}{s1['network']['base_features']}-{_dims(s1['patch_size'])}",
        "rois": f"{_dims(s2['roi_margin_mm'])}mm",
    }
    settings = shared_settings(config)
    return {kind: f"{kind}-{readable[kind]}-{settings_key(settings[kind])}" for kind in KINDS}


@dataclass(frozen=True)
class Experiment:
    """One configuration to train and evaluate: its validated config and its shared folders."""

    name: str
    config: dict
    folders: dict[str, str]  # kind -> folder name under results/shared/


def plan_experiment(name: str, config: dict) -> Experiment:
    """The experiment ``name`` of a validated config; its config's keys sorted (``config.sorted_keys``), so
    that the rules' params do not depend on the order of the config files."""
    return Experiment(name, configuration.sorted_keys(config), shared_folders(config))


def variant_config(config: dict, variant: dict) -> dict:
    """The base config with a Table 1 variant's overrides, validated (a bad key is a one-line error)."""
    bad = set(variant["overrides"]) - set(VARIANT_SECTIONS)
    if bad:
        raise configuration.ConfigError(
            f"table1.variants[{variant['name']}].overrides: {sorted(bad)} cannot vary, only {VARIANT_SECTIONS}"
        )
    merged = configuration.deep_merge(config, variant["overrides"])
    merged = configuration.validate(merged, where=f"table1.variants[{variant['name']}].overrides")
    check_consistent(merged, where=f"table1.variants[{variant['name']}].overrides")
    return merged


def check_consistent(config: dict, where: str = "config") -> None:
    """What the schema cannot say: label values are distinct, cysts as a stage-2 class need a cyst label,
    test-time mirroring uses only axes flipped in training (as nnU-Net's) and not the slice axis of a 2-D
    network, no stage ensembles more folds than there are, and stage 1 trains on its folds' cases (its
    held-out predictions are stage 2's training masks)."""
    values = [v for v in config["labels"].values() if v is not None]
    if len(set(values)) != len(values):
        raise configuration.ConfigError(f"{where}: labels: {config['labels']} gives two classes the same value")
    if config["stage2"]["cyst"] == "own_class" and config["labels"]["cyst"] is None:
        raise configuration.ConfigError(f"{where}: stage2.cyst: own_class needs labels.cyst, the data's cyst value")
    for stage in ("stage1", "stage2"):
        mirrored = config[stage]["inference"]["mirror_axes"]
        flipped = config[stage]["training"]["augmentation"]["flip_axes"]
        if len(config[stage]["patch_size"]) == 2 and 0 in mirrored:
            raise configuration.ConfigError(
                f"{where}: {stage}.inference.mirror_axes: {mirrored} flips the slice axis (0), but a 2-D "
                f"network's window is one slice: use axes 1 and 2 only")
        if not set(mirrored) <= set(flipped):
            raise configuration.ConfigError(
                f"{where}: {stage}.inference.mirror_axes: {mirrored} mirrors axes the network never saw mirrored "
                f"in training ({stage}.training.augmentation.flip_axes: {flipped}); on the demo that costs "
                f"Dice (README, Performance)")
        if stage == "stage1" and config[stage]["training"]["train_on"] != "fold":
            raise configuration.ConfigError(
                f"{where}: stage1.training.train_on: {config[stage]['training']['train_on']!r} must be 'fold': "
                f"stage 2 trains on stage 1's held-out predictions of the training cases, which a model trained "
                f"on all of them cannot make")
        n = config[stage]["inference"]["folds"]
        if n is not None and n > config["splits"]["n_folds"]:
            raise configuration.ConfigError(
                f"{where}: {stage}.inference.folds: {n} is more than the {config['splits']['n_folds']} folds "
                f"(splits.n_folds)")


def variant_experiments(config: dict) -> list[tuple[str, dict]]:
    """Per Table 1 variant, in order: the experiment it runs as and that experiment's config.

    A variant whose settings equal the base's IS the base experiment (no copy
    is trained); any other runs as ``<base>.<name>``. Raises ``ConfigError``
    for a bad override or two variants of the same name.
    """
    names = [v["name"] for v in config["table1"]["variants"]]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise configuration.ConfigError(f"table1.variants: the names {twice} are used twice")
    runs = []
    for variant in config["table1"]["variants"]:
        merged = variant_config(config, variant)
        same = all(merged[s] == config[s] for s in VARIANT_SECTIONS)
        runs.append((config["experiment"], config) if same else (f"{config['experiment']}.{variant['name']}", merged))
    return runs


def plan_experiments(config: dict, variants: list[tuple[str, dict]] | None = None) -> dict[str, Experiment]:
    """The base experiment and every Table 1 variant (``variant_experiments``), by name (overrides may only
    touch ``stage1``, ``stage2``). Raises ``ConfigError`` when two experiments share stage-1 models but
    differ in how stage 1 predicts (``config.PREDICTION_KEYS``): its predictions have one folder."""
    plans = {config["experiment"]: plan_experiment(config["experiment"], config)}
    for name, merged in variant_experiments(config) if variants is None else variants:
        plans.setdefault(name, plan_experiment(name, merged))
    first = {}
    for plan in plans.values():
        predicting = {k: plan.config["stage1"][k] for k in configuration.PREDICTION_KEYS
                      if k in plan.config["stage1"]}
        other = first.setdefault(plan.folders["stage1"], (plan.name, predicting))
        if other[1] != predicting:
            raise configuration.ConfigError(
                f"table1.variants: {plan.name} and {other[0]} share their stage-1 models but not "
                f"stage1.{'/'.join(predicting)}; give both the same")
    return plans


@dataclass(frozen=True)
class Plan:
    """What the workflow will make, decided at parse time."""

    config: dict
    cases: list[str]
    unlabeled: list[str]
    splits: dict  # splits.make_splits: validation, training, unlabeled, folds
    experiments: dict[str, Experiment]
    table1: list[dict]  # one row per variant: name, stage, method, paper, experiment

    @property
    def experiment(self) -> Experiment:
        return self.experiments[self.config["experiment"]]

    @property
    def folds(self) -> list[int]:
        return list(range(len(self.splits["folds"])))

    @property
    def evaluated(self) -> list[str]:
        """Cases scored by the evaluation: the held-out validation set."""
        return self.splits["validation"]

    @property
    def predicted(self) -> list[str]:
        """Cases every experiment predicts: the validation set and the unlabeled cases."""
        return self.splits["validation"] + self.splits["unlabeled"]

    def training_cases(self, fold: int, train_on: str = "fold") -> list[str]:
        """The cases fold ``fold``'s model trains on: those the fold does not hold out, or with ``train_on``
        ``"all"`` every training case (``training.train_on``)."""
        return self.splits["training"] if train_on == "all" else self.splits["folds"][fold]["train"]

    def ensemble(self, n: int | None) -> list[int]:
        """The folds ensembled for a case no fold trained on: the first ``n`` (``inference.folds``), or all."""
        return self.folds[:n]

    def stage1_folds_for(self, case: str, n: int | None = None) -> list[int]:
        """The stage-1 models that predict ``case``: out-of-fold for training cases (the one fold that did
        not train on it), :meth:`ensemble` of ``n`` otherwise."""
        held_out = splits.held_out_fold(self.splits, case)
        return self.ensemble(n) if held_out is None else [held_out]

    def by_folder(self, kind: str) -> dict[str, Experiment]:
        """Shared folder name of ``kind`` -> an experiment that uses it (all such share its settings)."""
        return {e.folders[kind]: e for e in self.experiments.values()}


def phantom_cases(config: dict) -> tuple[list[str], list[str]]:
    """Case ids of the generated phantoms and the unlabeled ones among them (the last ``n_unlabeled``)."""
    n = config["phantoms"]["n_cases"]
    cases = [f"case_{i:05d}" for i in range(n)]
    return cases, cases[n - config["phantoms"]["n_unlabeled"]:]


def plan_workflow(config: dict) -> Plan:
    """The whole plan for a validated config (``config.validate``): lists ``data_dir`` when it is set.

    Raises ``ConfigError`` for a bad Table 1 override and ``io.CaseError`` for
    a data folder that cannot be listed.
    """
    check_consistent(config)
    if config["data_dir"]:
        cases = io.list_cases(config["data_dir"])
        unlabeled = [c for c in cases if not io.has_segmentation(config["data_dir"], c)]
    else:
        cases, unlabeled = phantom_cases(config)
    cfg = config["splits"]
    split = splits.make_splits(cases, {c: c not in unlabeled for c in cases}, cfg["n_validation"], cfg["n_folds"],
                               cfg["seed"])
    variants = variant_experiments(config)
    experiments = plan_experiments(config, variants)
    rows = [{**{k: v[k] for k in ("name", "stage", "method", "paper")}, "experiment": name}
            for v, (name, _) in zip(config["table1"]["variants"], variants)]
    return Plan(config, cases, unlabeled, split, experiments, rows)
