"""The benchmark scripts run end to end in their quick modes (no installs, tiny sizes, CPU).

Their numbers are not checked here (timing belongs in the benchmarks); the
tables' shape and the values that do not depend on the machine are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import rewrite

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ON_THE_CPU = {"CUDA_VISIBLE_DEVICES": ""}  # the CPU-precision columns exist only there


def run_script(name: str, *args: str, env: dict | None = None) -> list[str]:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=120, env=None if env is None else {**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.splitlines()


def row(lines: list[str], start: str) -> list[str]:
    matches = [line.split() for line in lines if line.startswith(start)]
    assert len(matches) == 1, (start, lines)
    return matches[0]


def test_gpu_check_smoke_runs_every_part():
    lines = run_script("gpu_check.py", "--smoke")
    assert lines[0].startswith("device: CPU")
    for stage, batch in (("stage1", "2"), ("stage2", "5")):  # the paper's batch sizes, config/kits19.yaml
        runs = [line.split() for line in lines if line.startswith(stage) and "x32x32" in line]
        settings = {" ".join(cells[4:-5]) for cells in runs}
        assert settings == {"kits19.yaml", "precision bf16", "precision fp32", "cudnn_benchmark off",
                            "channels_last on"}
        assert all(cells[2] == batch and float(cells[-4]) > 0 for cells in runs)
        assert {cells[-5] for cells in runs if cells[4] == "kits19.yaml"} == {"0", "1"}  # loader workers
    assert row(lines, "off")[0] == "off" and len(row(lines, "8 passes")) == 7  # inference with/without mirroring
    assert any(line.startswith("all 10 trainings:") for line in lines)


def test_loader_smoke_reports_both_stages():
    lines = run_script("loader.py", "--smoke")
    assert lines[1].split()[:5] == ["stage", "patch", "batch", "workers", "batches/s"]
    for stage in ("stage1", "stage2"):
        runs = [line.split() for line in lines if line.startswith(stage)]
        assert [cells[3] for cells in runs] == ["0", "1"] and all(float(cells[4]) > 0 for cells in runs)
        assert float(runs[1][6]) > 0  # a worker's own memory, in MB


def test_preprocess_ours_only_matches_the_order3_reference(tmp_path):
    lines = run_script("preprocess.py", "--ours-only", "--small", "--repeats", "1", "--work", str(tmp_path))
    assert lines[1].split()[:2] == ["case", "pipeline"]
    cells = row(lines, "small")
    assert cells[-6] == "kitscascade"
    assert cells[-3] == "24x64x64"  # in-plane spacing doubled, slices kept
    assert float(cells[-1]) < 1e-3  # max |difference| from scipy's float64 order-3 zoom, z-score units
    assert (tmp_path / "preprocess" / "small" / "kitscascade" / "case_00000.npz").exists()


def test_inference_ours_only_runs_all_three_comparisons(tmp_path):
    lines = run_script("inference.py", "--ours-only", "--small", "--work", str(tmp_path))
    for run in ("(a0) cascade before", "(a) cascade"):
        cascade = " ".join(row(lines, run))
        assert "stage 1: 1 of 1 windows" in cascade and cascade.count("x") >= 4  # the stage-1 grid and the ROIs
    assert float(row(lines, "(b) single stage")[5]) > 0
    assert row(lines, "seconds per step")[3:] == ["read", "preprocess", "stage", "1", "crop", "stage", "2", "paste",
                                                   "write"]
    for run in ("(a0) steps", "(a) steps"):
        assert len(row(lines, run)) == 9 and float(row(lines, run)[4]) > 0  # stage 1's seconds
    window = row(lines, "(c) sliding window, kitscascade")
    assert float(window[4]) > 0 and window[-1] == "0.0000"
    assert any("cascade" in line and "faster" in line for line in lines)


def test_training_speed_demo_sizes():
    lines = run_script("training_speed.py", "--sizes", "demo", "--iterations", "1", "--threads", "1",
                       "--no-inference", env=ON_THE_CPU)
    for stage, patch in (("stage1", "32x64x64"), ("stage2", "32x48x48")):  # config/config.yaml
        cells = row(lines, f"demo   {stage}")
        assert cells[2] == patch and cells[5] == "config" and float(cells[7]) > 0 and cells[9] == "nan"
        assert cells[10] == "no" and float(cells[11]) > 0  # not compiled; the warm-up step's seconds


def test_training_speed_times_each_cpu_precision():
    lines = run_script("training_speed.py", "--sizes", "demo", "--iterations", "1", "--threads", "1",
                       "--no-inference", "--cpu-precision", "fp32", "bf16", env=ON_THE_CPU)
    rows = [line.split() for line in lines if line.startswith("demo")]
    assert [(cells[1], cells[5]) for cells in rows] == [("stage1", "fp32"), ("stage1", "bf16"),
                                                        ("stage2", "fp32"), ("stage2", "bf16")]
    assert all(float(cells[7]) > 0 for cells in rows)


def test_training_speed_times_each_layout():
    lines = run_script("training_speed.py", "--sizes", "demo", "--iterations", "1", "--threads", "1",
                       "--no-inference", "--cpu-precision", "fp32", "--channels-last", "off", "on", env=ON_THE_CPU)
    rows = [line.split() for line in lines if line.startswith("demo")]
    assert [(cells[1], cells[6]) for cells in rows] == [("stage1", "contiguous"), ("stage1", "channels_last"),
                                                        ("stage2", "contiguous"), ("stage2", "channels_last")]
    assert all(float(cells[7]) > 0 for cells in rows)


def test_generalization_trains_on_one_family_and_scores_both(tmp_path):
    """The cross-family benchmark end to end on a tiny workflow copy: one family trained, both tested."""
    from tests.test_workflow import copy_workflow

    wf = copy_workflow(tmp_path / "wf")
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "generalization.py"), "--workflow", str(wf),
                           "--config", str(wf / "tiny.yaml"), "--variants", "regions", "--seeds", "0", "--train", "A",
                           "--test-cases", "2", "--cores", "2", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    rows = [line.split() for line in lines[header + 1:]]
    assert [r[:5] for r in rows] == [["regions", "A", "A", "1", "2"], ["regions", "A", "B", "1", "2"]]
    per_case = pd.read_csv(tmp_path / "out" / "per_case.csv")
    assert len(per_case) == 4 and per_case["tumor_volume_ref_ml"].gt(0).all()
    assert per_case["false_kidney_ml"].notna().all() and rows[0][-1] == "ml)"  # the false-kidney column
    assert (wf / "results" / "gen-regions-A-s0" / "model.zip").exists()
    # rows scored before the false-kidney column existed get it from their predictions: printed with --table
    # (which writes nothing), written by a run (which finds the rest scored and trains nothing)
    per_case.drop(columns="false_kidney_ml").to_csv(tmp_path / "out" / "per_case.csv", index=False)
    old = (tmp_path / "out" / "per_case.csv").read_bytes()
    run = [sys.executable, str(BENCHMARKS / "generalization.py"), "--workflow", str(wf), "--config", str(wf / "tiny.yaml"),
           "--test-cases", "2", "--out", str(tmp_path / "out")]
    proc = subprocess.run([*run, "--table"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout.splitlines()
    assert table[next(i for i, line in enumerate(table) if line.startswith("variant")):] == lines[header:]
    assert (tmp_path / "out" / "per_case.csv").read_bytes() == old
    proc = subprocess.run([*run, "--variants", "regions", "--seeds", "0", "--train", "A"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "per_case.csv"), per_case)


def test_the_false_kidney_column_counts_cases_from_a_millilitre_and_sums_every_volume():
    generalization = _generalization_module()
    ml = [0.0, 0.03, 2.0, 50.0, 0.0, 0.0, 1.0, 0.5]  # seed 0: a speck and two false kidneys; seed 1: one, a speck
    per_case = pd.DataFrame({"variant": "v", "train": "A", "test": "A", "seed": [0] * 4 + [1] * 4,
                             "case_id": [f"case_{i:05d}" for i in range(4)] * 2, "kidney_dice": 0.9,
                             "tumor_dice": 0.5, "tumor_volume_ref_ml": 20.0, "false_kidney_ml": ml})
    row = generalization.table(per_case).splitlines()[1].split()
    assert row[-3:] == ["1.5", "(27", "ml)"]  # 3 cases from 1 ml over 2 seeds; 53.5 ml over 2 seeds
    assert generalization.table(per_case.drop(columns="false_kidney_ml")).splitlines()[1].split()[-1] == "-"


def test_false_kidney_volume_counts_only_components_apart_from_the_reference(tmp_path):
    from tests.conftest import write_case

    generalization = _generalization_module()
    labels = {"kidney": 1, "tumor": 2, "cyst": None}
    label = np.zeros((8, 20, 20), np.uint8)
    label[2:5, 2:6, 2:6] = 1
    label[3, 3, 3] = 2
    prediction = label.copy()
    prediction[2:4, 14:18, 14:18] = 2  # apart: 32 voxels, tumor counts as kidney region
    prediction[2:5, 6:8, 2:6] = 1  # grown out of the true kidney: touches it, not false
    spacing = (2.0, 1.0, 0.5)
    write_case(tmp_path, "case_00000", np.zeros(label.shape, np.float32), label, spacing=spacing)
    write_case(tmp_path / "pred", "case_00000", np.zeros(label.shape, np.float32), prediction, spacing=spacing)
    case = tmp_path / "case_00000"
    measured = generalization.false_kidney_ml(case / "imaging.nii.gz", case / "segmentation.nii.gz", "case_00000",
                                              tmp_path / "pred" / "case_00000" / "segmentation.nii.gz", labels)
    assert measured == pytest.approx(32 * 2.0 * 1.0 * 0.5 / 1000)
    assert generalization.false_kidney_ml(case / "imaging.nii.gz", case / "segmentation.nii.gz", "case_00000",
                                          case / "segmentation.nii.gz", labels) == 0.0


AS_SHIPPED = ("shipped", "fixed-rois", "keep-two-components", "drop-unsure-components", "train-on-all")  # the generalization variants that follow the config's defaults


def test_generalization_variants_name_their_augmentation():
    """Every variant is a valid config override that says its stage-2 target and augmentation itself, so
    variant names keep their meaning whatever the config's defaults."""
    generalization = _generalization_module()
    from kitscascade.config import DEFAULT_CONFIG, load_config

    kits19 = load_config(DEFAULT_CONFIG, BENCHMARKS.parent / "config" / "kits19.yaml")
    for name, overrides in generalization.VARIANTS.items():
        cfg = load_config(DEFAULT_CONFIG, overrides)
        if name in AS_SHIPPED:
            continue
        assert {"target", "training"} <= set(overrides["stage2"]), name
        assert overrides["stage1"]["component_min_peak"] is None, name  # all measured before it was 0.99
        assert overrides["stage2"]["roi_growth_steps"] == 0, name  # and before ROIs grew
        if name in ("classes", "regions", "regions-longer"):  # nnU-Net's, as the paper config trains
            for stage in ("stage1", "stage2"):
                ours, paper = (dict(c[stage]["training"]["augmentation"]) for c in (cfg, kits19))
                ours.pop("flip_axes"), paper.pop("flip_axes")
                assert ours == paper, (name, stage)


def _generalization_module():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import generalization
    finally:
        sys.path.remove(str(BENCHMARKS))
    return generalization


def _leaves(tree, prefix=()):
    """(path, value) of every leaf of a nested dict."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def test_generalization_efficiency_variants_change_only_iterations_and_phantoms():
    """The training-efficiency variants are the 22-phantom defaults (regions-previous-augmentation) with
    only their iterations and/or number of training phantoms changed (every config leaf compared), and
    every variant but ``shipped`` sets those itself, so its meaning does not follow the config's defaults."""
    generalization = _generalization_module()
    from kitscascade.config import DEFAULT_CONFIG, load_config

    iterations = {("stage1", "training", "iterations"), ("stage2", "training", "iterations")}
    n_cases = {("phantoms", "n_cases")}
    base = dict(_leaves(load_config(DEFAULT_CONFIG, generalization.VARIANTS["regions-previous-augmentation"])))
    expected = {"longer": ((700, 1400), None), "more-cases": (None, 46), "more-cases-longer": ((700, 1400), 46),
                "many-cases": (None, 94)}  # (iterations, phantoms), None where the defaults' own
    for name, (its, cases) in expected.items():
        cfg = dict(_leaves(load_config(DEFAULT_CONFIG, generalization.VARIANTS[name])))
        changed = {path for path in base if cfg[path] != base[path]}
        assert changed == (iterations if its else set()) | (n_cases if cases else set()), name
        assert (cfg[("stage1", "training", "iterations")], cfg[("stage2", "training", "iterations")]) == (its or (400, 800)), name
        assert cfg[("phantoms", "n_cases")] == (cases or 22), name
    for name, overrides in generalization.VARIANTS.items():
        if name not in AS_SHIPPED:
            assert {path for path, _ in _leaves(overrides)} >= iterations | n_cases, name


def test_generalization_fixed_rois_and_keep_two_components_are_the_config_but_their_keys():
    """``fixed-rois`` is the config as it is with stage 2's ROIs never grown, ``keep-two-components`` that
    with stage 1's component_min_peak off as well (every leaf compared)."""
    generalization = _generalization_module()
    from kitscascade.config import DEFAULT_CONFIG, load_config

    shipped, fixed, keep = (dict(_leaves(load_config(DEFAULT_CONFIG, generalization.VARIANTS[n])))
                            for n in ("shipped", "fixed-rois", "keep-two-components"))
    assert {path for path in shipped if shipped[path] != fixed[path]} == {("stage2", "roi_growth_steps")}
    assert {path for path in fixed if fixed[path] != keep[path]} <= {("stage1", "component_min_peak")}
    assert fixed[("stage2", "roi_growth_steps")] == 0 and keep[("stage1", "component_min_peak")] is None
    every = dict(_leaves(load_config(DEFAULT_CONFIG, generalization.VARIANTS["train-on-all"])))
    assert {path for path in shipped if shipped[path] != every[path]} == {("stage2", "training", "train_on")}
    drop = dict(_leaves(load_config(DEFAULT_CONFIG, generalization.VARIANTS["drop-unsure-components"])))
    assert {path for path in shipped if shipped[path] != drop[path]} <= {("stage1", "component_min_peak")}
    assert drop[("stage1", "component_min_peak")] == 0.99


def test_prediction_only_variants_set_prediction_keys_only_and_predict_with_shipped_s_model():
    """``fixed-rois``, ``keep-two-components`` and ``drop-unsure-components`` train nothing: their overrides
    change neither a stage's training settings nor stage 1's held-out masks (stage 2's training data), and are
    put over ``shipped``'s model; a variant that changed either would be refused."""
    generalization = _generalization_module()
    from kitscascade.config import DEFAULT_CONFIG, load_config

    base = load_config(DEFAULT_CONFIG)
    assert set(generalization.PREDICTION_ONLY) == set(AS_SHIPPED) - {"shipped", "train-on-all"}
    for name in generalization.VARIANTS:
        only = name in generalization.PREDICTION_ONLY
        assert generalization.model_variant(name) == ("shipped" if only else name)
        assert generalization.prediction_overrides(name, base) == (generalization.VARIANTS[name] if only else {})
    for bad, where in (({"stage2": {"roi_growth_steps": 0, "training": {"iterations": 10}}}, "stage2"),
                       ({"stage1": {"keep_components": 1}}, "stage1"),  # a prediction key, but of the held-out masks
                       ({"stage1": {"inference": {"overlap": 0.5}}}, "stage1"),
                       ({"phantoms": {"n_cases": 30}}, "phantoms")):
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(generalization.VARIANTS, "fixed-rois", bad)
            with pytest.raises(ValueError, match=rf"^variant 'fixed-rois': .* changes what 'shipped' trains "
                                                 rf"\(in \['{where}'\]\); it needs its own training$"):
                generalization.prediction_overrides("fixed-rois", base)
    with pytest.MonkeyPatch.context() as patch:  # what stage 1's held-out predictions ignore is allowed
        patch.setitem(generalization.VARIANTS, "fixed-rois", {"stage1": {"inference": {"folds": 1}}})
        assert generalization.prediction_overrides("fixed-rois", base) == {"stage1": {"inference": {"folds": 1}}}


@pytest.mark.parametrize("name", ["drop-unsure-components", "keep-two-components"])
def test_score_predicts_with_the_overrides_over_the_models_config(exported, tmp_path, monkeypatch, name):
    generalization = _generalization_module()
    from kitscascade import predict
    from kitscascade.config import DEFAULT_CONFIG, load_config

    def grown(member, data):  # a model of roi_growth_steps 3 and component_min_peak 0.5
        if member != "model.json":
            return data
        manifest = json.loads(data)
        manifest["config"]["stage2"]["roi_growth_steps"], manifest["config"]["stage1"]["component_min_peak"] = 3, 0.5
        return json.dumps(manifest)

    zip_path = rewrite(exported, tmp_path / "grown.zip", grown)
    seen = []
    monkeypatch.setattr(predict, "predict_scans", lambda trained, *a, **kw: seen.append(
        (trained.stage_config("stage1")["component_min_peak"], trained.stage_config("stage2")["roi_growth_steps"])))
    for overrides in ({}, generalization.prediction_overrides(name, load_config(DEFAULT_CONFIG))):
        assert generalization.score(zip_path, tmp_path, [], tmp_path / "out", 1, {}, {}, overrides) == []
    assert seen[0] == (0.5, 3)  # the model's own
    assert seen[1] == ((0.99, 3) if name == "drop-unsure-components" else (None, 0))


def test_generalization_many_cases_variants_change_one_thing():
    """Every ``many-cases-*`` variant is many-cases (``many-cases-stage2-longer-*``: many-cases-stage2-longer)
    with only the config leaves it names changed (every leaf compared), so its row measures that change alone
    on the same phantoms."""
    generalization = _generalization_module()
    from kitscascade.config import DEFAULT_CONFIG, load_config

    base = dict(_leaves(load_config(DEFAULT_CONFIG, generalization.VARIANTS["many-cases"])))
    augmentation = {path for path in base if path[0] in ("stage1", "stage2") and path[1:3] == ("training", "augmentation")}
    expected = {
        "many-cases-foreground-only": {("stage2", "training", "foreground_fraction")},
        "many-cases-stage2-lr0.01": {("stage2", "training", "learning_rate")},
        "many-cases-classes": {("stage2", "target")},
        "many-cases-stage2-longer": {("stage2", "training", "iterations")},
        "many-cases-stage2-wider": {("stage2", "network", "base_features"), ("stage2", "network", "max_features")},
    }
    longer = dict(_leaves(load_config(DEFAULT_CONFIG, generalization.VARIANTS["many-cases-stage2-longer"])))
    on_longer = {  # changes to the demo's config, many-cases-stage2-longer
        "many-cases-stage2-longer-patch64-batch1": {("stage2", "patch_size"), ("stage2", "training", "batch_size")},
        "many-cases-stage2-longer-batch4-half": {("stage2", "training", "batch_size"),
                                                 ("stage2", "training", "iterations")},
        "many-cases-stage2-longer-constant-lr": {("stage2", "training", "lr_decay")},
        "many-cases-stage2-longer-lr0.001": {("stage2", "training", "learning_rate")},
        "many-cases-stage2-longer-cpu-bf16": {("stage1", "training", "cpu_precision"),
                                              ("stage2", "training", "cpu_precision")},
        **{f"many-cases-stage2-{n}-cpu-bf16": {("stage1", "training", "cpu_precision"),
                                                ("stage2", "training", "cpu_precision"),
                                                ("stage2", "training", "iterations")} for n in (2400, 3200)},
    }
    on_longer["many-cases-stage2-2400-cpu-bf16-stage1-800"] = on_longer["many-cases-stage2-2400-cpu-bf16"] | {
        ("stage1", "training", "iterations")}
    for name in ("many-cases-stage2-2400-cpu-bf16-negative-rois", "many-cases-stage2-2400-cpu-bf16-negative-rois-0.5"):
        on_longer[name] = on_longer["many-cases-stage2-2400-cpu-bf16"] | {("stage2", "training", "negative_volume_fraction")}
    for name, changed in {"patch64-batch1": {("stage2", "patch_size"), ("stage2", "training", "batch_size")},
                          "batch4-half": {("stage2", "training", "batch_size")},  # iterations: changed already
                          "constant-lr": {("stage2", "training", "lr_decay")},
                          "lr0.001": {("stage2", "training", "learning_rate")}}.items():
        on_longer[f"many-cases-stage2-2400-cpu-bf16-{name}"] = on_longer["many-cases-stage2-2400-cpu-bf16"] | changed
    names = {name for name in generalization.VARIANTS if name.startswith("many-cases-")}
    assert names == set(expected) | set(on_longer) | {"many-cases-nnunet-augmentation"}
    for name in names:
        cfg = dict(_leaves(load_config(DEFAULT_CONFIG, generalization.VARIANTS[name])))
        reference = longer if name in on_longer else base
        changed = {path for path in reference if cfg[path] != reference[path]}
        if name == "many-cases-nnunet-augmentation":
            assert changed and changed <= augmentation, (name, changed - augmentation)
        else:
            assert changed == {**expected, **on_longer}[name], name


def test_training_speed_times_compiled_rows_apart():
    """``--compile off on``: each stage gets an eager and a compiled row; a compiled row has no inference time.
    TorchDynamo is disabled here, so torch.compile runs the network eagerly and the test stays quick (what a
    compiled step costs is the benchmark's to measure)."""
    lines = run_script("training_speed.py", "--sizes", "demo", "--iterations", "1", "--threads", "1",
                       "--cpu-precision", "fp32", "--compile", "off", "on",
                       env={**ON_THE_CPU, "TORCHDYNAMO_DISABLE": "1"})
    rows = [line.split() for line in lines if line.startswith("demo")]
    assert [(cells[1], cells[10]) for cells in rows] == [("stage1", "no"), ("stage1", "yes"),
                                                         ("stage2", "no"), ("stage2", "yes")]
    assert all(float(cells[7]) > 0 and float(cells[11]) > 0 for cells in rows)
    assert [cells[9] == "nan" for cells in rows] == [False, True, False, True]
