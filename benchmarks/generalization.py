"""Cross-family generalization: train on one phantom family, test on the other, over several seeds.

Usage:
    python benchmarks/generalization.py                          # variant "shipped", seeds 0 1 2, trains on A and
                                                                 # on B, tests each on both
    python benchmarks/generalization.py --variants shipped regions --seeds 0
    python benchmarks/generalization.py --table                  # print the table of the runs done so far

For each variant, training seed and training family F (A or B,
``kitscascade.phantoms.FAMILIES``), the workflow trains the config (but for
the variants of prediction keys only, ``PREDICTION_ONLY``, below, which
predict with ``shipped``'s model)
(``config/config.yaml``, plus ``--config`` files, plus the variant's
overrides) on F's phantoms (``phantoms.family: F``, the family's own data
seed), as ``snakemake`` would: experiment ``gen-<variant>-<F>-s<seed>``, with
``stage1.training.seed`` and ``stage2.training.seed`` set to the seed. Its
exported model (``model.zip``) then predicts two held-out test sets that no
training saw: ``--test-cases`` new phantoms of F and as many of the other
family (``TEST_SEED``, never the training data's seeds), through
``kitscascade.predict`` as ``kitscascade-predict`` runs it. Nothing here
looks at a test label before scoring (no threshold is tuned on them).

Reported, per variant, training family and test family: kidney and tumor
Dice (KiTS19 regions, ``metrics.evaluate_labels``) as the mean over seeds
of the per-seed mean over cases, with the spread over seeds (sample sd, and
min..max), and tumor Dice per tumor-size bin (the case's reference tumor
volume: < 10 ml, 10-100 ml, > 100 ml). Per-case rows are written to
``<out>/per_case.csv``; a rerun skips what is done (Snakemake's cache, and
predictions already written).

The variants are config overrides (``VARIANTS``; each but ``shipped`` names
stage 2's target, both stages' augmentation and iterations, and the number
of training phantoms, 22 and 400 + 800 iterations unless said, so that it
means the same whatever the config's defaults): ``shipped`` is the config as
it is (the same training as ``many-cases-stage2-longer-cpu-bf16`` where the CPU has bfloat16
natively, up to the order of floating-point sums: the config trains channels-last);
``classes`` and ``regions`` set ``stage2.target`` with nnU-Net's
augmentation (the schema's defaults); ``previous-defaults`` is ``classes`` with the augmentation of the
version before MONAI's transforms (in-plane rotation 10 degrees and zoom
0.9-1.1 with probability 0.2, brightness 1 +- 0.1 with probability 0.3; that
version's additive shift of +-0.1 sd is not among the transforms now, and its
rotation and zoom came together with probability 0.2, not each);
``regions-previous-augmentation`` is ``regions`` with that augmentation;
``regions-longer`` is ``regions`` with 700 stage-1 and 1,400 stage-2
iterations per fold (1.75 times the 400 + 800). The training-efficiency
variants change the iterations and/or the number of phantoms of the
22-phantom defaults (``regions-previous-augmentation``, the demo config
before it had 94): ``longer`` trains 700 + 1,400 iterations per fold,
``more-cases`` on 46 phantoms instead of 22 (40 training cases instead of
16; the same iterations per fold), ``more-cases-longer`` both,
``many-cases`` on 94 phantoms (88 training cases; the demo config of 2026-12-01).
Two change stage 2's training of ``many-cases`` only (stage 1 is shared):
``many-cases-foreground-only`` centres every patch on a foreground voxel
(``foreground_fraction`` 1.0, so half the patches on a tumor voxel instead
of a quarter), ``many-cases-stage2-lr0.01`` trains with a learning rate of
0.01 instead of 0.003. Two repeat the comparison of target and augmentation
on ``many-cases``' 94 phantoms: ``many-cases-classes`` (softmax classes, the
previous target) and ``many-cases-nnunet-augmentation`` (nnU-Net's
augmentation). Two spend more on stage 2 alone: ``many-cases-stage2-longer``
(1,600 iterations per fold instead of 800) and ``many-cases-stage2-wider``
(16 features at the highest resolution instead of 8, capped at 128 instead
of 64). Four change stage 2's patch, batch or learning-rate schedule of
``many-cases-stage2-longer`` (the demo config before bfloat16; stage 1 is shared):
``many-cases-stage2-longer-patch64-batch1`` (patch 32x64x64 at batch 1
instead of 32x48x48 at batch 2: more context, 0.89 times the voxels per
iteration), ``-batch4-half`` (batch 4 for 800 iterations: the same voxels
in all), ``-constant-lr`` (no poly decay) and ``-lr0.001`` (a learning rate
of 0.001 instead of 0.003). Three train in bfloat16 on the CPU
(``training.cpu_precision: bf16``, both stages):
``many-cases-stage2-longer-cpu-bf16`` at the demo's iterations, and
``many-cases-stage2-2400-cpu-bf16`` and ``-3200-cpu-bf16`` with 2,400 and
3,200 stage-2 iterations (stage 1 shared with the first). Three change
``many-cases-stage2-2400-cpu-bf16`` (the demo config then) against the
false kidney stage 1 marks in single-kidney scans: ``-stage1-800`` trains
stage 1 for 800 iterations instead of 400, ``-negative-rois`` and
``-negative-rois-0.5`` set stage 2's ``negative_volume_fraction`` to 0.2
and 0.5 (patches from the ROIs of stage 1's false kidneys). Four repeat
the patch, batch and schedule variants on it: ``-patch64-batch1``,
``-batch4-half`` (batch 4 for 1,200 iterations), ``-constant-lr`` and
``-lr0.001``. ``train-on-all`` is the config as it is with
``stage2.training.train_on: all``: each of stage 2's fold models trains on
every training case (nnU-Net's fold "all"), not on the half its fold does
not hold out; it shares ``shipped``'s stage 1 and ROIs.

Three variants change prediction keys only (``PREDICTION_ONLY``; keys that
change neither a stage's training settings nor stage 1's held-out
predictions, :func:`prediction_overrides`): they train nothing of their
own, but predict the test cases with ``shipped``'s exported model, its
config changed by theirs (trained first if it is not there). ``fixed-rois`` is the config as it is
with ``stage2.roi_growth_steps: 0``: stage 2 predicts in the ROIs as
cropped, as the demo did before it followed a tumor out of its box.
``keep-two-components`` is ``fixed-rois`` with
``stage1.component_min_peak: null``: stage 1 keeps its two largest
components however unsure it is of the second, as the demo did before
0.99 and does again. ``drop-unsure-components`` is the config with
``component_min_peak: 0.99`` (the demo from 96a002a to 033e259). (Until
this mode existed they trained their own models through the workflow, the
same training as ``shipped``'s: the same weights where training is
deterministic, on one machine and thread count.) Rows are found by
variant, family and seed: a ``per_case.csv`` with ``shipped`` rows of an
earlier config keeps them, so give a new ``--out`` when the config changed.

A further column counts the cases with a false kidney (``false_kidney_ml``:
the predicted kidney region's volume in components that touch no reference
kidney voxel; counted from ``FALSE_KIDNEY_MIN_ML``, so that specks of a few
voxels are not), per seed on average, with the false volume in all cases
per seed (every component, specks too).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from kitscascade.config import deep_merge, defaults, training_settings

ROOT = Path(__file__).resolve().parents[1]
FAMILY_DATA_SEED = {"A": 0, "B": 1}  # phantoms.seed of each family's training data (A: the demo's)
TEST_SEED = 1000  # the test sets' phantoms.seed; case numbers 900.. as well, so no training case recurs
FALSE_KIDNEY_MIN_ML = 1.0  # a case counts as having a false kidney from this much false kidney region (ml)
SIZE_BINS = [(0, 10, "< 10 ml"), (10, 100, "10-100 ml"), (100, np.inf, "> 100 ml")]  # the reference's tumor
NO_INTENSITY = {k: 0.0 for k in ("noise_probability", "blur_probability", "contrast_probability",
                                 "low_resolution_probability", "gamma_probability")}
PREVIOUS_AUGMENTATION = {
    "rotation_probability": 0.2, "rotation_deg": [10.0, 0.0, 0.0], "scaling_probability": 0.2, "scale": [0.9, 1.1],
    "brightness_probability": 0.3, "brightness": 0.1, **NO_INTENSITY}


def nnunet_augmentation() -> dict:
    """nnU-Net's augmentation: the schema's defaults, flip_axes aside (that stays the config's)."""
    return {k: v for k, v in defaults()["stage2"]["training"]["augmentation"].items() if k != "flip_axes"}


def variant(target: str, augmentation: dict, iterations: tuple[int, int] = (400, 800), n_cases: int = 22) -> dict:
    """Config overrides: stage 2's target, both stages' augmentation and iterations per fold, and the
    number of training phantoms (``phantoms.n_cases``; the defaults are those the first variants were
    measured with); both stages train in float32 on the CPU (``training.cpu_precision``), as those did, and
    stage 1 keeps its two largest components whatever their peak (``component_min_peak``) and stage 2
    predicts in the ROIs as cropped (``roi_growth_steps`` 0), as all did."""
    out = {"phantoms": {"n_cases": n_cases},
           "stage1": {"component_min_peak": None,
                      "training": {"augmentation": augmentation, "cpu_precision": "fp32"}},
           "stage2": {"target": target, "roi_growth_steps": 0,
                      "training": {"augmentation": augmentation, "cpu_precision": "fp32"}}}
    for stage, n in zip(("stage1", "stage2"), iterations):
        out[stage]["training"]["iterations"] = n
    return out


VARIANTS = {
    "shipped": {},
    "classes": variant("classes", nnunet_augmentation()),
    "regions": variant("regions", nnunet_augmentation()),
    "previous-defaults": variant("classes", PREVIOUS_AUGMENTATION),
    "regions-previous-augmentation": variant("regions", PREVIOUS_AUGMENTATION),
    "regions-longer": variant("regions", nnunet_augmentation(), (700, 1400)),
    # training efficiency: iterations and/or phantoms of the 22-phantom defaults (regions-previous-augmentation)
    "longer": variant("regions", PREVIOUS_AUGMENTATION, (700, 1400)),
    "more-cases": variant("regions", PREVIOUS_AUGMENTATION, n_cases=46),
    "more-cases-longer": variant("regions", PREVIOUS_AUGMENTATION, (700, 1400), n_cases=46),
    "many-cases": variant("regions", PREVIOUS_AUGMENTATION, n_cases=94),
}
# stage 2 only (stage 1 is many-cases' own): every patch centred on a foreground class, so half of them on tumor
# (one patch of two, a quarter on tumor, in many-cases); a 3.3x learning rate
VARIANTS["many-cases-foreground-only"] = deep_merge(VARIANTS["many-cases"],
                                                    {"stage2": {"training": {"foreground_fraction": 1.0}}})
VARIANTS["many-cases-stage2-lr0.01"] = deep_merge(VARIANTS["many-cases"], {"stage2": {"training": {"learning_rate": 0.01}}})
# the same-data comparison on many-cases' phantoms: softmax classes (the previous target) and nnU-Net's augmentation
VARIANTS["many-cases-classes"] = variant("classes", PREVIOUS_AUGMENTATION, n_cases=94)
VARIANTS["many-cases-nnunet-augmentation"] = variant("regions", nnunet_augmentation(), n_cases=94)
# stage 2's budget on many-cases: twice the iterations, or twice the features per level (stage 1 is shared)
VARIANTS["many-cases-stage2-longer"] = deep_merge(VARIANTS["many-cases"], {"stage2": {"training": {"iterations": 1600}}})
VARIANTS["many-cases-stage2-wider"] = deep_merge(VARIANTS["many-cases"],
                                                 {"stage2": {"network": {"base_features": 16, "max_features": 128}}})
# stage 2's patch, batch and learning-rate schedule on the demo config before bfloat16 (many-cases-stage2-longer;
# stage 1 is shared):
# a larger in-plane patch at batch 1 (0.89x the voxels per iteration), batch 4 for half the iterations (the same
# voxels in all), a constant learning rate instead of poly decay, and a 3.3x lower learning rate
for name, change in {
    "patch64-batch1": {"patch_size": [32, 64, 64], "training": {"batch_size": 1}},
    "batch4-half": {"training": {"batch_size": 4, "iterations": 800}},
    "constant-lr": {"training": {"lr_decay": "constant"}},
    "lr0.001": {"training": {"learning_rate": 0.001}},
}.items():
    VARIANTS[f"many-cases-stage2-longer-{name}"] = deep_merge(VARIANTS["many-cases-stage2-longer"], {"stage2": change})
# training in bfloat16 on the CPU (both stages; 2.4-2.8x faster per step with AMX, 1.0-1.4x without), at the
# demo's iterations and with 1.5 and 2 times stage 2's (stage 1 shared between the three)
BF16 = {"training": {"cpu_precision": "bf16"}}
VARIANTS["many-cases-stage2-longer-cpu-bf16"] = deep_merge(VARIANTS["many-cases-stage2-longer"],
                                                           {"stage1": BF16, "stage2": BF16})
for iterations in (2400, 3200):
    VARIANTS[f"many-cases-stage2-{iterations}-cpu-bf16"] = deep_merge(
        VARIANTS["many-cases-stage2-longer-cpu-bf16"], {"stage2": {"training": {"iterations": iterations}}})
# stage 1 trained twice as long on the demo's config (it marks a false kidney in most single-kidney scans)
VARIANTS["many-cases-stage2-2400-cpu-bf16-stage1-800"] = deep_merge(
    VARIANTS["many-cases-stage2-2400-cpu-bf16"], {"stage1": {"training": {"iterations": 800}}})
# stage 2 shown the ROIs of stage 1's false kidneys more often (a fifth of the patches not centred on foreground,
# about a tenth of all, instead of 3-5 %), so that it learns to reject them (stage 1 shared with the 2400 one)
# (``-0.5``: half of them, about a quarter of all)
VARIANTS["many-cases-stage2-2400-cpu-bf16-negative-rois"] = deep_merge(
    VARIANTS["many-cases-stage2-2400-cpu-bf16"], {"stage2": {"training": {"negative_volume_fraction": 0.2}}})
VARIANTS["many-cases-stage2-2400-cpu-bf16-negative-rois-0.5"] = deep_merge(
    VARIANTS["many-cases-stage2-2400-cpu-bf16"], {"stage2": {"training": {"negative_volume_fraction": 0.5}}})
# stage 2's patch, batch and learning-rate schedule, as above, on the demo's config then (stage 1 shared)
for name, change in {
    "patch64-batch1": {"patch_size": [32, 64, 64], "training": {"batch_size": 1}},
    "batch4-half": {"training": {"batch_size": 4, "iterations": 1200}},
    "constant-lr": {"training": {"lr_decay": "constant"}},
    "lr0.001": {"training": {"learning_rate": 0.001}},
}.items():
    VARIANTS[f"many-cases-stage2-2400-cpu-bf16-{name}"] = deep_merge(VARIANTS["many-cases-stage2-2400-cpu-bf16"],
                                                                     {"stage2": change})

# the config as it is, but stage 2 predicts in the ROIs as cropped, never grown (the demo before roi_growth_steps)
VARIANTS["fixed-rois"] = {"stage2": {"roi_growth_steps": 0}}
# ... and stage 1 keeps its two largest components whatever their peak as well (the demo before 0.99, and
# the config now but for the growth)
VARIANTS["keep-two-components"] = deep_merge(VARIANTS["fixed-rois"], {"stage1": {"component_min_peak": None}})
# the config as it is with stage 1's unsure second components dropped (the demo of 96a002a to 033e259)
VARIANTS["drop-unsure-components"] = {"stage1": {"component_min_peak": 0.99}}
# the config as it is, but each stage-2 fold's model trains on every training case (nnU-Net's fold "all"),
# not on the half its fold does not hold out (stage 1 and the ROIs are shipped's)
VARIANTS["train-on-all"] = {"stage2": {"training": {"train_on": "all"}}}
# variants of prediction keys only: shipped's model predicts with them, nothing is trained for them
PREDICTION_ONLY = ("fixed-rois", "keep-two-components", "drop-unsure-components")


def model_variant(variant: str) -> str:
    """The variant whose trained model ``variant`` predicts with: ``shipped`` for ``PREDICTION_ONLY``, else
    its own."""
    return "shipped" if variant in PREDICTION_ONLY else variant


def prediction_overrides(variant: str, base: dict) -> dict:
    """The overrides a ``PREDICTION_ONLY`` variant puts over its model's config ({} for the others, whose
    model holds its config). ``base`` is the config ``shipped`` trains. Raises ``ValueError`` when the
    overrides change what ``shipped``'s model is trained from: a stage's training settings
    (``config.training_settings``: all but ``config.PREDICTION_KEYS`` and the execution keys), stage 1's
    held-out predictions of the training cases (``stage1.held_out_settings``: its masks are stage 2's
    training data, so ``stage1.keep_components`` or ``stage1.inference.overlap`` would change stage 2),
    or any other section; such a variant needs its own training."""
    from kitscascade.stage1 import held_out_settings

    if variant not in PREDICTION_ONLY:
        return {}
    overrides = VARIANTS[variant]

    def trained_from(cfg: dict) -> dict:
        return {**{k: v for k, v in cfg.items() if k not in ("stage1", "stage2")},
                "stage1": [training_settings(cfg["stage1"]), held_out_settings(cfg["stage1"])],
                "stage2": training_settings(cfg["stage2"])}

    changed = trained_from(deep_merge(base, overrides))
    before = trained_from(base)
    bad = sorted(k for k in set(changed) | set(before) if changed.get(k) != before.get(k))
    if bad:
        raise ValueError(f"variant {variant!r}: {overrides} changes what {model_variant(variant)!r} trains "
                         f"(in {bad}); it needs its own training")
    return overrides


def experiment_name(variant: str, family: str, seed: int) -> str:
    return f"gen-{variant}-{family}-s{seed}"


def train(variant: str, family: str, seed: int, configs: list[Path], cores: int, work: Path, workflow: Path) -> Path:
    """Run the workflow (in the folder ``workflow``) for one (variant, family, seed); returns its model.zip."""
    name = experiment_name(variant, family, seed)
    override = deep_merge(VARIANTS[variant], {
        "experiment": name, "phantoms": {"family": family, "seed": FAMILY_DATA_SEED[family]},
        "stage1": {"training": {"seed": seed}}, "stage2": {"training": {"seed": seed}}})
    path = work / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(override, sort_keys=True))
    targets = [f"results/{name}/model.zip", f"results/{name}/evaluation/summary.csv"]
    command = [sys.executable, "-m", "snakemake", *targets, "--cores", str(cores), "--quiet", "rules",
               "--configfile", *[str(c) for c in configs], str(path)]
    start = time.perf_counter()
    subprocess.run(command, cwd=workflow, check=True)
    print(f"# {name}: trained (or found) in {time.perf_counter() - start:.0f} s", flush=True)
    return workflow / targets[0]


def test_folder(family: str, n_cases: int, base: dict, work: Path) -> Path:
    """Where :func:`test_set` writes ``family``'s test phantoms."""
    grid = "x".join(str(n) for n in base["phantoms"]["shape"]) + "-" + "x".join(f"{s:g}" for s in
                                                                          base["phantoms"]["spacing"])
    return work / f"test_{family}_{grid}_{n_cases}"


def test_set(family: str, n_cases: int, base: dict, work: Path) -> tuple[Path, list[str]]:
    """``n_cases`` labeled phantoms of ``family`` on the config's grid, written once to
    ``work/test_<family>_<grid>_<n_cases>``."""
    from kitscascade import phantoms

    folder = test_folder(family, n_cases, base, work)
    ids = [f"case_{900 + i:05d}" for i in range(n_cases)]
    if not all((folder / c / "segmentation.nii.gz").exists() for c in ids):
        cfg = base["phantoms"]
        phantoms.write_phantom_dataset(folder, ids, tuple(cfg["shape"]), tuple(cfg["spacing"]), seed=TEST_SEED,
                                       single_kidney_fraction=cfg["single_kidney_fraction"], family=family)
    return folder, ids


def false_kidney_ml(imaging, segmentation, case_id: str, prediction, labels: dict) -> float:
    """Volume (ml) of the predicted kidney region (kidney + tumor + cyst) in 26-connected components that
    touch no voxel of the reference's kidney region: a kidney marked where there is none."""
    import cc3d

    from kitscascade import io

    case = io.read_case(imaging, segmentation, case_id, labels)
    predicted = io.read_prediction(prediction, case, labels) > 0
    components = cc3d.connected_components(predicted, connectivity=26)
    touching = np.unique(components[case.label > 0])
    false = (components > 0) & ~np.isin(components, touching[touching > 0])
    return float(false.sum() * np.prod(case.spacing) / 1000.0)


def score(model_zip: Path, folder: Path, ids: list[str], out: Path, threads: int, labels: dict, evaluation: dict,
          overrides: dict | None = None):
    """Predict the test cases with the model, its config changed by ``overrides`` (prediction keys,
    :func:`prediction_overrides`), and score them; one row per case (``metrics.score_case`` and
    ``false_kidney_ml``)."""
    from kitscascade import io, metrics, model, predict

    trained = model.open_model(model_zip, out / "model")
    if overrides:
        trained = model.Model(trained.folder, {**trained.manifest,
                                               "config": deep_merge(trained.manifest["config"], overrides)})
    predict.predict_scans(trained, {c: folder / c / io.IMAGING_NAME for c in ids}, out / "predictions",
                          {"device": "cpu"}, threads=threads, overwrite=True, progress=False)
    rows = []
    for c in ids:
        imaging, segmentation = io.case_files(folder, c)
        prediction = out / "predictions" / f"{c}.nii.gz"
        rows.append({**metrics.score_case(imaging, segmentation, c, prediction, evaluation, labels),
                     "false_kidney_ml": false_kidney_ml(imaging, segmentation, c, prediction, labels)})
    return rows


def fill_false_kidneys(per_case: pd.DataFrame, out: Path, n_cases: int, base: dict) -> pd.DataFrame:
    """``false_kidney_ml`` for rows scored before the column existed, from their predictions and test
    cases where these are still in ``out`` (left empty where not)."""
    from kitscascade import io

    per_case = per_case.copy()
    if "false_kidney_ml" not in per_case:
        per_case["false_kidney_ml"] = np.nan
    labels = base["labels"]
    for i, row in per_case[per_case["false_kidney_ml"].isna()].iterrows():
        folder = test_folder(row["test"], n_cases, base, out)
        prediction = (out / experiment_name(row["variant"], row["train"], int(row["seed"])) / f"test_{row['test']}"
                      / "predictions" / f"{row['case_id']}.nii.gz")
        if (folder / row["case_id"]).is_dir() and prediction.exists():
            imaging, segmentation = io.case_files(folder, row["case_id"])
            per_case.loc[i, "false_kidney_ml"] = false_kidney_ml(imaging, segmentation, row["case_id"], prediction,
                                                                 labels)
    return per_case


def size_bin(volume_ml: float) -> str:
    """The bin of a case's reference tumor volume (ml); "none" when the tumor lies outside the scan."""
    return next((name for lo, hi, name in SIZE_BINS if lo < volume_ml <= hi), "none")


def table(per_case: pd.DataFrame) -> str:
    """The report: per variant, training and test family, mean over seeds of per-seed means, and spreads."""
    per_case = per_case.assign(size=per_case["tumor_volume_ref_ml"].map(size_bin))
    width = max(len("variant"), *per_case["variant"].map(len))
    lines = [f"{'variant':{width}} {'train':>5} {'test':>4} {'seeds':>5} {'cases':>5}  {'kidney Dice':>26}  "
             f"{'tumor Dice':>26}  " + "  ".join(f"{'tumor ' + name:>16}" for *_, name in SIZE_BINS)
             + f"  {'false kidney':>12}"]
    for (variant, train_family, test_family), group in per_case.groupby(["variant", "train", "test"], sort=False):
        seeds = group.groupby("seed")
        cells = []
        for metric in ("kidney_dice", "tumor_dice"):
            means = seeds[metric].mean()
            if len(means) > 1:
                cells.append(f"{means.mean():.3f} ± {means.std(ddof=1):.3f} ({means.min():.3f}-{means.max():.3f})")
            else:  # one seed: no spread to show
                cells.append(f"{means.mean():.3f}")
        bins = []
        for *_, name in SIZE_BINS:
            in_bin = group[group["size"] == name]
            bins.append(f"{in_bin['tumor_dice'].mean():.3f} (n={len(in_bin) // max(1, seeds.ngroups)})"
                        if len(in_bin) else "-")
        false = group["false_kidney_ml"] if "false_kidney_ml" in group else pd.Series(np.nan, index=group.index)
        # cases with a false kidney per seed, and the false volume per seed (all cases, every component)
        false_cell = "-" if false.isna().any() else \
            f"{(false >= FALSE_KIDNEY_MIN_ML).sum() / seeds.ngroups:.1f} ({false.sum() / seeds.ngroups:.0f} ml)"
        lines.append(f"{variant:{width}} {train_family:>5} {test_family:>4} {seeds.ngroups:>5} "
                     f"{len(group) // seeds.ngroups:>5}  {cells[0]:>26}  {cells[1]:>26}  "
                     + "  ".join(f"{b:>16}" for b in bins) + f"  {false_cell:>12}")
    return "\n".join(lines)


def save_rows(per_case: pd.DataFrame, path: Path) -> None:
    """``per_case.csv``, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    per_case.to_csv(path.with_suffix(".tmp"), index=False)
    os.replace(path.with_suffix(".tmp"), path)


def main() -> None:
    from kitscascade.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["shipped"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    parser.add_argument("--train", nargs="+", default=["A", "B"], choices=sorted(FAMILY_DATA_SEED),
                        help="training families (each is tested on both)")
    parser.add_argument("--test-cases", type=int, default=12, help="test phantoms per family")
    parser.add_argument("--config", nargs="*", type=Path, default=[],
                        help="config files over config/config.yaml (e.g. tests/configs/tiny.yaml)")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--workflow", type=Path, default=ROOT, help="the workflow folder to run in (its results/)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "generalization")
    parser.add_argument("--table", action="store_true",
                        help="only print the table of the rows in --out (writes nothing)")
    args = parser.parse_args()

    per_case_path = args.out / "per_case.csv"
    done = pd.read_csv(per_case_path) if per_case_path.exists() else pd.DataFrame()
    keys = set(done[["variant", "train", "test", "seed"]].itertuples(index=False, name=None)) if len(done) else set()
    workflow = args.workflow.resolve()
    configs = [workflow / "config" / "config.yaml", *[c.resolve() for c in args.config]]
    base = load_config(*configs)
    if len(done) and ("false_kidney_ml" not in done or done["false_kidney_ml"].isna().any()):
        before = done["false_kidney_ml"].notna().sum() if "false_kidney_ml" in done else 0
        filled = fill_false_kidneys(done, args.out, args.test_cases, base)
        if not args.table and filled["false_kidney_ml"].notna().sum() > before:
            save_rows(filled, per_case_path)  # with --table nothing is written (a running benchmark may write)
        done = filled
    if not args.table:
        for variant in args.variants:
            for seed in args.seeds:
                for family in args.train:
                    todo = [t for t in sorted(FAMILY_DATA_SEED) if (variant, family, t, seed) not in keys]
                    if not todo:  # scored before (delete its rows from per_case.csv to score it again)
                        continue
                    overrides = prediction_overrides(variant, base)
                    model_zip = train(model_variant(variant), family, seed, configs, args.cores, args.out, workflow)
                    cfg = deep_merge(base, VARIANTS[variant])
                    for test_family in todo:
                        key = (variant, family, test_family, seed)
                        folder, ids = test_set(test_family, args.test_cases, base, args.out)
                        out = args.out / experiment_name(variant, family, seed) / f"test_{test_family}"
                        rows = score(model_zip, folder, ids, out, args.cores, cfg["labels"], cfg["evaluation"],
                                     overrides)
                        frame = pd.DataFrame([{"variant": variant, "train": family, "test": test_family,
                                               "seed": seed, **row} for row in rows])
                        done = pd.concat([done, frame], ignore_index=True)
                        save_rows(done, per_case_path)
                        print(f"# {key}: kidney {frame['kidney_dice'].mean():.3f}, tumor "
                              f"{frame['tumor_dice'].mean():.3f} over {len(frame)} cases", flush=True)
    if len(done):
        print(table(done))


if __name__ == "__main__":
    main()
