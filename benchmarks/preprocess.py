"""Stage-1 preprocessing of KiTS19-sized scans: kitscascade vs nnU-Net v2's default preprocessing.

Usage:
    python benchmarks/preprocess.py                      # both pipelines, a 138- and a 640-slice case
    python benchmarks/preprocess.py --ours-only --small  # a quick run that installs nothing

The same case, a phantom (``kitscascade.phantoms.make_phantom``) written as
``imaging.nii.gz`` + ``segmentation.nii.gz`` with the KiTS19 affine, goes through

* kitscascade: ``stage1.preprocess`` with the stage-1 settings of
  config/config.yaml (read_case, resample to the in-plane-doubled spacing,
  clip + z-score, label resampling, uncompressed .npz);
* nnU-Net v2: ``DefaultPreprocessor.run_case_save`` with the plans its planner
  writes for such a case (SimpleITK reader, lowest-resolution axis first, crop
  to non-zero, CTNormalization, image order 3 and seg order 1 with the
  anisotropy rule, blosc2 output), installed once into a throwaway venv under
  ~/.cache/kitscascade-bench/ (torch==2.13.0 pinned, so no CUDA wheels).

Both get the same target spacing and intensity statistics (from
``kitscascade.fingerprint.collect_statistics`` on the case). Every run is a
fresh process on one core, so its wall time and peak RSS (``ru_maxrss``,
imports included) are its own; the pipelines alternate ``--repeats`` times and
the fastest run of each is kept. Fidelity: the mean and max |difference|, in
z-score units inside the body (HU > -500), from a float64 order-3
``scipy.ndimage.zoom`` of the same volume, clipped and z-scored.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "kitscascade-bench"
TORCH = "torch==2.13.0"
CASES = {  # name: (shape (slices, rows, cols), spacing in mm)
    "kits": ((138, 512, 512), (3.0, 0.78, 0.78)),
    "long": ((640, 512, 512), (1.0, 0.78, 0.78)),
    "small": ((24, 128, 128), (3.0, 1.5, 1.5)),
}
CASE_ID = "case_00000"


# --------------------------------------------------------------------------
# shared with benchmarks/inference.py: peer venvs, worker processes, the machine
# --------------------------------------------------------------------------


def peer_python(name: str, packages: list[str]) -> Path:
    """Python of the throwaway venv ``CACHE/<name>-venv`` with ``packages`` and CPU torch 2.13.0.

    Created on first use (minutes; PyPI access needed). torch is installed first
    and pinned again with the packages, so pip keeps the CPU wheel.
    """
    venv = CACHE / f"{name}-venv"
    python = venv / "bin" / "python"
    ready = venv / "kitscascade-ready"
    if not ready.exists():
        print(f"installing {' '.join(packages)} into {venv} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, TORCH], check=True)
        subprocess.run([*pip, *packages, TORCH], check=True)
        ready.write_text(" ".join(packages) + "\n")
    return python


def run_worker(python, script: Path, args: list[str]) -> dict:
    """Run ``script --worker ...`` in a fresh process on one thread; returns the JSON of its last line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([str(python), str(script), "--worker", *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"worker {args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_of(runs: dict[str, Callable[[], dict]], repeats: int) -> dict[str, dict]:
    """Call each run ``repeats`` times, alternating; keep each one's fastest result, with its highest peak RSS."""
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            result = run()
            peak = max(result["peak_rss_mb"], best[name]["peak_rss_mb"]) if name in best else result["peak_rss_mb"]
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
            best[name]["peak_rss_mb"] = peak
    return best


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    """CPU model, core count and current load, for the table header."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"


# --------------------------------------------------------------------------
# the case and its statistics
# --------------------------------------------------------------------------


def write_case(data_dir: Path, shape, spacing) -> Path:
    """Phantom case ``CASE_ID`` in ``data_dir`` (reused if there) and its statistics JSON."""
    from kitscascade import config, fingerprint, io, phantoms

    stats_path = data_dir / "statistics.json"
    if not stats_path.exists():
        image, label = phantoms.make_phantom(0, shape=shape, spacing=spacing)
        affine = io.kits19_affine(spacing)
        io.save_nifti(image, affine, data_dir / CASE_ID / io.IMAGING_NAME)
        io.save_nifti(label, affine, data_dir / CASE_ID / io.SEGMENTATION_NAME)
        del image, label
        cfg = config.defaults()["statistics"]
        summary, _ = fingerprint.collect_statistics(io.dataset_files(data_dir), [CASE_ID], cfg["percentiles"],
                                                    cfg["samples_per_case"], cfg["seed"])
        io.save_json(summary, stats_path)
    return stats_path


def stage1_settings() -> dict:
    from kitscascade import config

    return config.load_config()["stage1"]


# --------------------------------------------------------------------------
# the two pipelines (run in worker processes)
# --------------------------------------------------------------------------


def run_ours(data_dir: Path, stats_path: Path, out_dir: Path) -> dict:
    """kitscascade's stage-1 preprocessing step, as the workflow runs it."""
    from kitscascade import io, stage1

    cfg = stage1_settings()
    out = out_dir / f"{CASE_ID}.npz"
    start = time.perf_counter()
    stage1.preprocess(*io.case_files(data_dir, CASE_ID), CASE_ID, stats_path, cfg, io.KITS19_LABELS, out)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "output": str(out)}


def nnunet_plans(stats: dict, spacing_factor) -> tuple[dict, list[int]]:
    """Plans for one "3d_lowres" configuration at our stage-1 spacing, as nnU-Net's planner lays them out.

    SimpleITK reads a KiTS19 file with the axes reversed, (cols, rows, slices);
    the planner puts the lowest-resolution axis first (``transpose_forward``).
    Returns the plans and, per output axis, the matching axis of ours.
    """
    reader_spacing = stats["median_spacing"][::-1]
    reader_factor = list(spacing_factor)[::-1]
    lowres = int(np.argmax(reader_spacing))
    forward = [lowres] + [a for a in range(3) if a != lowres]
    fg = stats["foreground"]
    resampling = {"order_z": 0, "force_separate_z": None}
    plans = {
        "dataset_name": "Dataset999_Benchmark",
        "plans_name": "nnUNetPlans",
        "image_reader_writer": "SimpleITKIO",
        "label_manager": "LabelManager",
        "transpose_forward": forward,
        "transpose_backward": [forward.index(a) for a in range(3)],
        "foreground_intensity_properties_per_channel": {
            "0": {"mean": fg["mean"], "std": fg["std"], "percentile_00_5": fg["lower"], "percentile_99_5": fg["upper"]}
        },
        "configurations": {
            "3d_lowres": {
                "data_identifier": "benchmark_3d_lowres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [80, 160, 160],
                "spacing": [reader_spacing[a] * reader_factor[a] for a in forward],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **resampling},
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **resampling},
                "architecture": {"network_class_name": "unused", "arch_kwargs": {}, "_kw_requires_import": []},
            }
        },
    }
    return plans, [2 - a for a in forward]


def run_nnunet(data_dir: Path, stats_path: Path, out_dir: Path) -> dict:
    """nnU-Net v2's preprocessing of one case, as ``nnUNetv2_preprocess`` runs it (in nnU-Net's venv)."""
    import blosc2
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, our_axes = nnunet_plans(json.loads(stats_path.read_text()), stage1_settings()["spacing_factor"])
    manager = PlansManager(plans)
    dataset_json = {"labels": {"background": 0, "kidney": 1, "tumor": 2}, "channel_names": {"0": "CT"},
                    "file_ending": ".nii.gz"}
    case = data_dir / CASE_ID
    start = time.perf_counter()
    DefaultPreprocessor(verbose=False).run_case_save(
        str(out_dir / CASE_ID), [str(case / "imaging.nii.gz")], str(case / "segmentation.nii.gz"),
        manager, manager.get_configuration("3d_lowres"), dataset_json)
    result = {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}
    # after the measurement: the image back in our axis order, for the fidelity check
    data = blosc2.open(urlpath=str(out_dir / f"{CASE_ID}.b2nd"), mode="r")[:][0]
    np.save(out_dir / "image.npy", np.transpose(data, np.argsort(our_axes)))
    return {**result, "output": str(out_dir / "image.npy")}


# --------------------------------------------------------------------------
# fidelity and the table
# --------------------------------------------------------------------------


def run_fresh(python: Path, pipeline: str, data_dir: Path, stats_path: Path, out_dir: Path) -> dict:
    """One preprocessing run in a fresh process, into an emptied ``out_dir``."""
    shutil.rmtree(out_dir, ignore_errors=True)  # blosc2 refuses to overwrite
    out_dir.mkdir(parents=True)
    return run_worker(python, Path(__file__), [pipeline, str(data_dir), str(stats_path), str(out_dir)])


def load_output(path: str) -> np.ndarray:
    """The normalised stage-1 image (slices, rows, cols) a pipeline wrote."""
    if path.endswith(".npz"):
        with np.load(path) as arrays:
            return arrays["image"][0]
    return np.load(path)


def reference(data_dir: Path, stats: dict, new_shape) -> tuple[np.ndarray, np.ndarray]:
    """Float64 order-3 ``ndimage.zoom`` of the case onto ``new_shape``, clipped and z-scored; and the body mask."""
    from scipy import ndimage

    from kitscascade import io

    image = io.read_case_folder(data_dir, CASE_ID, with_label=False).image.astype(np.float64)
    factors = [n / o for n, o in zip(new_shape, image.shape)]
    hu = ndimage.zoom(image, factors, order=3, mode="nearest", grid_mode=True)
    fg = stats["foreground"]
    return (np.clip(hu, fg["lower"], fg["upper"]) - fg["mean"]) / fg["std"], hu > -500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["kits", "long"], choices=sorted(CASES))
    parser.add_argument("--small", action="store_true", help="only the small case (a quick check)")
    parser.add_argument("--ours-only", action="store_true", help="skip nnU-Net (nothing is installed)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per pipeline; the fastest is kept")
    parser.add_argument("--work", type=Path, default=CACHE, help="folder for the phantoms and outputs")
    parser.add_argument("--worker", nargs=4, metavar=("PIPELINE", "DATA", "STATS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        pipeline, data_dir, stats_path, out_dir = args.worker
        run = {"kitscascade": run_ours, "nnU-Net v2": run_nnunet}[pipeline]
        print(json.dumps(run(Path(data_dir), Path(stats_path), Path(out_dir))))
        return

    pipelines = {"kitscascade": Path(sys.executable)}
    if not args.ours_only:
        pipelines["nnU-Net v2"] = peer_python("nnunet", ["nnunetv2"])
    print(f"machine: {machine()}")
    print(f"{'case':30} {'pipeline':12} {'seconds':>8} {'peak RSS MB':>12} {'output':>12} "
          f"{'mean |d|':>9} {'max |d|':>8}")
    for name in ["small"] if args.small else args.cases:
        shape, spacing = CASES[name]
        data_dir = args.work / "data" / name
        stats_path = write_case(data_dir, shape, spacing)
        runs = {p: functools.partial(run_fresh, python, p, data_dir, stats_path,
                                     args.work / "preprocess" / name / p.split()[0])
                for p, python in pipelines.items()}
        best = best_of(runs, args.repeats)
        outputs = {p: load_output(r["output"]) for p, r in best.items()}
        ref, body = reference(data_dir, json.loads(stats_path.read_text()), outputs["kitscascade"].shape)
        title = f"{name} {'x'.join(map(str, shape))} @{spacing[0]}/{spacing[1]} mm"
        for pipeline, result in best.items():
            out = outputs[pipeline]
            diff = np.abs(out - ref)[body] if out.shape == ref.shape else np.array([np.nan])
            print(f"{title:30} {pipeline:12} {result['seconds']:8.2f} {result['peak_rss_mb']:12.0f} "
                  f"{'x'.join(map(str, out.shape)):>12} {diff.mean():9.1e} {diff.max():8.1e}")
        if "nnU-Net v2" in best:
            ours, peer = best["kitscascade"], best["nnU-Net v2"]
            speedup, memory = peer["seconds"] / ours["seconds"], ours["peak_rss_mb"] / peer["peak_rss_mb"]
            verdict = "met" if speedup >= 3 and memory <= 1 else "MISSED"
            print(f"{'':30} -> kitscascade {speedup:.1f}x faster at {memory:.2f}x the peak memory "
                  f"(target >= 3x at <= 1x: {verdict})")


if __name__ == "__main__":
    main()
