"""Trained models that travel: an experiment exported as one zip, and read back anywhere.

``model.zip`` holds everything prediction needs and nothing else:

- ``model.json``: ``format_version``, the package version that wrote it, the
  experiment's name, its folds, and the effective ``stage1``, ``stage2`` and
  ``labels`` config (the device and other settings of how a job runs,
  ``config.EXECUTION_KEYS``, are the predicting machine's to choose);
- ``statistics.json``: the training data's statistics used for normalisation
  (median spacing, foreground HU percentiles, mean and std);
- ``provenance.json``: how the experiment was made (config, versions, commit);
- ``stage1/fold_<k>.pt``, ``stage2/fold_<k>.pt``: the fold checkpoints,
  weights only (they load with ``torch.load(..., weights_only=True)``).

No training data. Reading checks the archive before anything is extracted and
turns every problem into one ``ModelError`` line naming the file.
"""

from __future__ import annotations

import copy
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kitscascade import __version__, io

# 2: the stage configs hold stage1.body_threshold_hu and inference.cpu_precision / folds
# 3: stage2.target (classes or regions)
# 4: stage1.component_min_peak
FORMAT_VERSION = 5
STAGES = ("stage1", "stage2")
# How a version-1 archive predicted, written into its config when it is read, so that it still predicts
# as it did: every stage-1 window, float32 on the CPU, every fold.
VERSION1_PREDICTION = {"stage1": {"body_threshold_hu": None}, "inference": {"cpu_precision": "fp32", "folds": None}}
# Archives before version 3 were all class-based.
VERSION2_STAGE2 = {"target": "classes"}
# Archives before version 4 kept stage 1's keep_components largest components, whatever their peak.
VERSION3_STAGE1 = {"component_min_peak": None}
# Archives before version 5 predicted stage 2 in the ROIs as cropped, never grown.
VERSION4_STAGE2 = {"roi_growth_steps": 0}


class ModelError(ValueError):
    """An exported model cannot be used (one line naming the file)."""


def export_model(stage1_models, stage2_models, statistics_path, provenance_path, config: dict, out_path) -> None:
    """Write ``out_path`` (a zip, atomically) from an experiment's fold checkpoints (fold order), its
    statistics and provenance, and its validated ``config`` (the stage and label sections are kept)."""
    if len(stage1_models) != len(stage2_models):
        raise ValueError(f"{len(stage1_models)} stage-1 and {len(stage2_models)} stage-2 folds: expected as many")
    manifest = {
        "format_version": FORMAT_VERSION,
        "kitscascade_version": __version__,
        "experiment": config["experiment"],
        "folds": list(range(len(stage1_models))),
        "config": {"stage1": config["stage1"], "stage2": config["stage2"], "labels": config["labels"]},
    }
    with io.atomic_path(out_path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("model.json", json.dumps(manifest, indent=2) + "\n")
        archive.write(statistics_path, "statistics.json")
        archive.write(provenance_path, "provenance.json")
        for stage, models in zip(STAGES, (stage1_models, stage2_models)):
            for fold, path in enumerate(models):
                archive.write(path, f"{stage}/fold_{fold}.pt")


@dataclass(frozen=True)
class Model:
    """An exported model, extracted into ``folder``: its manifest and the paths prediction reads."""

    folder: Path
    manifest: dict

    @property
    def folds(self) -> list[int]:
        return list(self.manifest["folds"])

    @property
    def labels(self) -> dict:
        return self.manifest["config"]["labels"]

    @property
    def statistics(self) -> Path:
        return self.folder / "statistics.json"

    def checkpoints(self, stage: str, folds=None) -> list[Path]:
        return [self.folder / stage / f"fold_{k}.pt" for k in (self.folds if folds is None else folds)]

    def stage_config(self, stage: str, execution: dict | None = None, mirror: bool = True) -> dict:
        """The stage's config as exported, with ``execution`` (values of ``config.EXECUTION_KEYS``, e.g.
        ``{"device": "cpu"}``) put over its training section, and mirroring switched off unless ``mirror``."""
        cfg = copy.deepcopy(self.manifest["config"][stage])
        cfg["training"].update(execution or {})
        if not mirror:
            cfg["inference"]["mirror_axes"] = []
        return cfg


def open_model(zip_path, folder, folds=None) -> Model:
    """Check ``zip_path`` and extract it into ``folder``. ``folds`` (default: all) must be in the archive.

    Raises ``ModelError`` (one line naming the file) for a file that is not a
    readable zip, a truncated or corrupt one, one without a model manifest, a
    format newer than this package reads, or a missing fold.
    """
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            broken = archive.testzip()
            if broken is not None:
                raise ModelError(f"{zip_path}: {broken} is corrupt in the archive (CRC mismatch)")
            names = set(archive.namelist())
            if "model.json" not in names:
                # a truncated archive can open as one of its checkpoints (themselves zips), without model.json
                raise ModelError(f"{zip_path}: not a kitscascade model, or a truncated one (no model.json inside)")
            manifest = json.loads(archive.read("model.json"))
            version = manifest.get("format_version")
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise ModelError(f"{zip_path}: model format version {version} is newer than this kitscascade "
                                 f"{__version__} reads ({FORMAT_VERSION}); update kitscascade")
            manifest = upgraded(manifest)
            wanted = manifest["folds"] if folds is None else list(folds)
            missing = [f"{stage}/fold_{k}.pt" for k in wanted for stage in STAGES if f"{stage}/fold_{k}.pt" not in names]
            if missing:
                raise ModelError(f"{zip_path}: fold file(s) {missing} missing (the archive has folds {manifest['folds']})")
            archive.extractall(folder)
    except ModelError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as error:
        raise ModelError(f"{zip_path}: not a readable model archive ({type(error).__name__}: {error})") from None
    return Model(Path(folder), {**manifest, "folds": list(wanted)})


def upgraded(manifest: dict) -> dict:
    """A manifest of an older format as the current one: version 1 gets ``VERSION1_PREDICTION``, versions
    1 and 2 ``VERSION2_STAGE2``, versions 1 to 3 ``VERSION3_STAGE1``, versions 1 to 4 ``VERSION4_STAGE2``."""
    version = manifest["format_version"]
    if version >= FORMAT_VERSION:
        return manifest
    manifest = copy.deepcopy(manifest)
    config = manifest["config"]
    if version < 2:
        config["stage1"].update(VERSION1_PREDICTION["stage1"])
        for stage in STAGES:
            config[stage]["inference"].update(VERSION1_PREDICTION["inference"])
    if version < 3:
        config["stage2"].update(VERSION2_STAGE2)
    if version < 4:
        config["stage1"].update(VERSION3_STAGE1)
    config["stage2"].update(VERSION4_STAGE2)
    return {**manifest, "format_version": FORMAT_VERSION}


def read_model(folder) -> Model:
    """A model :func:`open_model` extracted into ``folder`` before (the workflow extracts once per model)."""
    folder = Path(folder)
    return Model(folder, upgraded(json.loads((folder / "model.json").read_text())))
