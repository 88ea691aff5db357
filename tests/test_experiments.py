"""Planning: shared folders keyed by the settings they depend on, Table 1 variants, the whole plan."""

import pytest

from kitscascade import config, experiments, io, splits


def base():
    return config.load_config()


def test_deep_merge_is_recursive_and_pure():
    a = {"x": {"y": 1, "z": 2}, "w": [1]}
    merged = config.deep_merge(a, {"x": {"y": 5}, "w": [2]})
    assert merged == {"x": {"y": 5, "z": 2}, "w": [2]} and a == {"x": {"y": 1, "z": 2}, "w": [1]}


def folders(overrides):
    return experiments.shared_folders(config.deep_merge(base(), overrides))


def test_folders_follow_what_each_artifact_depends_on():
    ref = folders({})
    assert folders({"stage2": {"network": {"residual": False}}}) == ref  # stage 2 alone shares everything
    s1 = folders({"stage1": {"training": {"iterations": 7}}})
    assert (s1["data"], s1["pre"]) == (ref["data"], ref["pre"])
    assert s1["stage1"] != ref["stage1"] and s1["rois"] != ref["rois"]
    pre = folders({"stage1": {"spacing_factor": [1, 1, 1]}})
    assert pre["data"] == ref["data"] and pre["pre"] != ref["pre"] and pre["stage1"] != ref["stage1"]
    data = folders({"splits": {"seed": 5}})
    assert all(data[k] != ref[k] for k in experiments.KINDS)
    rois = folders({"stage2": {"roi_margin_mm": [5.0, 5.0, 5.0]}})
    assert rois["stage1"] == ref["stage1"] and rois["rois"] != ref["rois"]


def test_folder_names_are_readable_and_hashed():
    names = folders({})
    assert names["data"].startswith("data-phantoms-")
    assert names["pre"].startswith("pre-1x2x2-")
    assert names["stage1"].startswith("stage1-unet8-32x64x64-")
    assert names["rois"].startswith("rois-12x20x20mm-")
    assert all(len(n.rsplit("-", 1)[1]) == 10 for n in names.values())
    kits = experiments.shared_folders(config.deep_merge(base(), {"data_dir": "/data/kits19/data/"}))
    assert kits["data"].startswith("data-data-")


def test_shared_settings_hold_what_made_the_folder():
    settings = experiments.shared_settings(base())
    assert settings["pre"]["stage1"] == {"spacing_factor": [1.0, 2.0, 2.0], "image_order": 3, "classes": "kidney_tumor",
                                         "body_threshold_hu": -500}
    assert settings["stage1"]["stage1"] == config.training_settings(base()["stage1"])
    assert not {"inference", "keep_components", "component_min_peak"} & set(settings["stage1"]["stage1"])
    assert settings["stage1"]["data"] == settings["data"]
    assert not set(config.EXECUTION_KEYS) & set(settings["stage1"]["stage1"]["training"])
    assert set(settings["rois"]["stage2"]) == set(experiments.ROI_KEYS)


def test_table1_variants():
    cfg = base()
    plans = experiments.plan_experiments(cfg)
    runs = [name for name, _ in experiments.variant_experiments(cfg)]
    assert cfg["experiment"] in runs  # the rows that change nothing are the base experiment itself
    assert set(plans) == set(runs)
    stage2_rows = [plans[name] for v, name in zip(cfg["table1"]["variants"], runs) if v["stage"] == 2]
    assert len({p.folders["stage1"] for p in stage2_rows}) == 1  # one stage-1 model set for all stage-2 rows
    bad = config.deep_merge(cfg, {"table1": {"variants": [
        {"name": "x", "stage": 2, "method": "x", "paper": [0, 0], "overrides": {"splits": {"seed": 1}}}]}})
    with pytest.raises(config.ConfigError, match=r"table1.variants\[x\].overrides: \['splits'\]"):
        experiments.plan_experiments(bad)


@pytest.mark.parametrize("override, message", [
    ({"stage2": {"network": {"residul": False}}}, r"stage2.network: Additional properties .*'residul'"),
    ({"stage1": {"training": {"iterations": "many"}}}, r"stage1.training.iterations: 'many' is not of type"),
    ({"stage2": {"patch_size": [16]}}, r"stage2.patch_size: \[16\] is too short"),
])
def test_a_bad_override_names_the_variant_and_the_key(override, message):
    cfg = config.deep_merge(base(), {"table1": {"variants": [
        {"name": "typo", "stage": 2, "method": "x", "paper": [0, 0], "overrides": override}]}})
    with pytest.raises(config.ConfigError, match=rf"^table1.variants\[typo\].overrides: {message}") as error:
        experiments.plan_workflow(cfg)
    assert "\n" not in str(error.value)


def test_variants_get_the_schema_defaults_of_what_they_override():
    cfg = config.deep_merge(base(), {"table1": {"variants": [
        {"name": "v", "stage": 2, "method": "x", "paper": [0, 0],
         "overrides": {"stage2": {"training": {"augmentation": {"flip_axes": [0, 2]}}}}}]}})
    variant = experiments.plan_experiments(cfg)["demo.v"].config
    assert variant["stage2"]["training"]["augmentation"]["flip_axes"] == [0, 2]
    assert variant["stage2"]["training"]["augmentation"]["scale"] == base()["stage2"]["training"]["augmentation"]["scale"]


def test_plan_of_the_phantoms():
    cfg = base()
    n = cfg["phantoms"]["n_cases"]
    last = f"case_{n - 1:05d}"  # the unlabeled one (phantoms.n_unlabeled: 1)
    plan = experiments.plan_workflow(cfg)
    assert plan.cases == [f"case_{i:05d}" for i in range(n)] and plan.unlabeled == [last]
    assert len(plan.evaluated) == 5 and plan.predicted == plan.evaluated + [last]
    assert plan.folds == [0, 1]
    for k in plan.folds:
        train = plan.training_cases(k)
        assert not set(train) & set(plan.evaluated) and last not in train
        for case in train:  # out-of-fold: the other fold's model predicts a training case
            assert plan.stage1_folds_for(case) == [1 - k]
    assert plan.stage1_folds_for(plan.evaluated[0]) == [0, 1]
    assert [r["experiment"] for r in plan.table1][-1] == "demo"
    assert plan.by_folder("stage1")[plan.experiment.folders["stage1"]].name in plan.experiments


def test_inference_folds_choose_the_ensemble():
    """``inference.folds``: the first n folds predict the cases no fold trained on; training cases keep the
    one fold that did not see them; more folds than there are is a config error naming the key."""
    cfg = config.deep_merge(base(), {"splits": {"n_folds": 3}})
    plan = experiments.plan_workflow(config.validate(cfg))
    assert plan.ensemble(None) == [0, 1, 2] and plan.ensemble(1) == [0] and plan.ensemble(2) == [0, 1]
    assert plan.stage1_folds_for(plan.evaluated[0], 1) == [0]
    case = plan.training_cases(2)[0]
    assert plan.stage1_folds_for(case, 1) == plan.stage1_folds_for(case) == [splits.held_out_fold(plan.splits, case)]
    for stage in ("stage1", "stage2"):
        with pytest.raises(config.ConfigError, match=rf"{stage}.inference.folds: 4 is more than the 3 folds"):
            experiments.plan_workflow(config.validate(config.deep_merge(cfg, {stage: {"inference": {"folds": 4}}})))


def test_mirroring_only_along_axes_flipped_in_training():
    """A network trained without Y flips is not mirrored along Y at inference (the demo lost 0.011 kidney and
    0.018 tumor Dice that way, README)."""
    for stage in ("stage1", "stage2"):
        cfg = config.deep_merge(base(), {stage: {"inference": {"mirror_axes": [1, 2]}}})
        with pytest.raises(config.ConfigError, match=rf"{stage}.inference.mirror_axes: \[1, 2\] mirrors axes the "
                                                     rf"network never saw mirrored in training \({stage}.training"
                                                     rf".augmentation.flip_axes: \[2\]\)"):
            experiments.plan_workflow(config.validate(cfg))
        flipped = config.deep_merge(cfg, {stage: {"training": {"augmentation": {"flip_axes": [1, 2]}}}})
        experiments.plan_workflow(config.validate(flipped))
    # a 2-D Table 1 row of the paper's config mirrors in-plane only
    kits19 = config.load_config(config.DEFAULT_CONFIG, config.ROOT / "config" / "kits19.yaml",
                                {"data_dir": "", "phantoms": {"n_cases": 60}})
    assert "kits19.stage1_2d" in experiments.plan_workflow(kits19).experiments
    row = {"name": "v", "stage": 2, "method": "x", "paper": [0, 0],
           "overrides": {"stage2": {"patch_size": [128, 128], "inference": {"mirror_axes": [0, 1, 2]}}}}
    with pytest.raises(config.ConfigError, match=r"table1.variants\[v\].overrides: stage2.inference.mirror_axes: "
                                                 r"\[0, 1, 2\] flips the slice axis \(0\), but a 2-D network"):
        experiments.plan_workflow(config.validate({**kits19, "table1": {"variants": [row]}}))


def test_plan_of_a_data_folder_lists_labeled_and_unlabeled_cases(tiny_dataset):
    cfg = config.deep_merge(base(), {"data_dir": str(tiny_dataset), "splits": {"n_validation": 1, "n_folds": 2}})
    plan = experiments.plan_workflow(config.validate(cfg))
    assert plan.cases == io.list_cases(tiny_dataset) and plan.unlabeled == ["case_00004"]
    assert len(plan.evaluated) == 1 and len(plan.splits["training"]) == 3


def test_plan_of_a_missing_data_folder_is_a_case_error(tmp_path):
    cfg = config.validate(config.deep_merge(base(), {"data_dir": str(tmp_path / "nope")}))
    with pytest.raises(io.CaseError, match="data_dir is not a folder"):
        experiments.plan_workflow(cfg)


def test_execution_settings_share_the_folders():
    """Where and how a job runs (device, loader workers, ...) is not what it makes."""
    ref = folders({})
    assert folders({"stage1": {"training": {"num_workers": 7, "device": "cuda", "checkpoint_every": 3}}}) == ref
    assert folders({"stage1": {"training": {"precision": "fp32"}}})["stage1"] != ref["stage1"]


def test_a_training_key_at_its_neutral_value_leaves_the_settings_as_they_were():
    """negative_volume_fraction: null trains as before the key existed, so it keeps the folders and the
    rules' params of models trained then; any value is a training setting like the others."""
    ref, cfg = folders({}), config.validate(base())
    assert "negative_volume_fraction" not in config.training_settings(cfg["stage1"])["training"]
    assert "negative_volume_fraction" not in config.without_execution(cfg["stage2"])["training"]
    for value in (0.0, 0.2):
        changed = folders({"stage1": {"training": {"negative_volume_fraction": value}}})
        assert changed["stage1"] != ref["stage1"] and changed["data"] == ref["data"]
        assert folders({"stage2": {"training": {"negative_volume_fraction": value}}}) == ref  # stage 2: its own
        changed = config.validate(config.deep_merge(base(), {"stage2": {"training": {"negative_volume_fraction": value}}}))
        assert config.training_settings(changed["stage2"])["training"]["negative_volume_fraction"] == value  # params


def test_train_on_all_gives_every_stage2_fold_every_training_case():
    """``stage2.training.train_on: all`` (nnU-Net's fold "all"): each fold's model trains on every training case;
    at ``fold``, its neutral value, it stays out of the settings (models trained before it stay valid); stage 1
    must train on its folds, whose held-out masks stage 2 trains on (a one-line error naming the key)."""
    cfg = config.validate(base())
    plan = experiments.plan_workflow(cfg)
    assert cfg["stage2"]["training"]["train_on"] == "fold"
    assert "train_on" not in config.training_settings(cfg["stage2"])["training"]
    for k in plan.folds:
        assert plan.training_cases(k, "all") == plan.splits["training"]
        assert plan.training_cases(k, "fold") == plan.training_cases(k) != plan.splits["training"]
    assert sorted(c for k in plan.folds for c in plan.splits["folds"][k]["val"]) == plan.splits["training"]
    every = config.validate(config.deep_merge(base(), {"stage2": {"training": {"train_on": "all"}}}))
    assert config.training_settings(every["stage2"])["training"]["train_on"] == "all"  # params: stage 2 retrains
    assert folders({"stage2": {"training": {"train_on": "all"}}}) == folders({})  # stage 1 and the ROIs are shared
    with pytest.raises(config.ConfigError, match=r"^config: stage1.training.train_on: 'all' must be 'fold': "):
        experiments.plan_workflow(config.validate(config.deep_merge(base(), {"stage1": {"training": {"train_on": "all"}}})))


def test_prediction_settings_share_the_stage1_models():
    """How stage 1 predicts (window overlap, mirroring, folds, precision, components kept) is not what trains."""
    ref = folders({})
    for change in ({"overlap": 0.5}, {"mirror_axes": [2]}, {"folds": 1}, {"cpu_precision": "fp32"}):
        assert folders({"stage1": {"inference": change}}) == ref
    assert folders({"stage1": {"keep_components": 1}}) == ref
    assert folders({"stage1": {"component_min_peak": 0.9}}) == ref


def test_variants_that_share_stage1_models_predict_with_them_alike():
    row = {"name": "v", "stage": 2, "method": "x", "paper": [0, 0]}
    cfg = config.deep_merge(base(), {"table1": {"variants": [
        {**row, "overrides": {"stage1": {"inference": {"overlap": 0.5}}, "stage2": {"max_rois": 1}}}]}})
    with pytest.raises(config.ConfigError, match="demo.v and demo share their stage-1 models but not "
                                                 "stage1.inference/keep_components/component_min_peak"):
        experiments.plan_workflow(config.validate(cfg))


def test_the_same_data_folder_written_two_ways_is_one_folder():
    assert folders({"data_dir": "kits/data"}) == folders({"data_dir": "kits/data/"}) == folders({"data_dir": "kits//data"})


def test_two_variants_of_one_name_are_an_error():
    row = {"name": "v", "stage": 2, "method": "x", "paper": [0, 0]}
    cfg = config.deep_merge(base(), {"table1": {"variants": [
        {**row, "overrides": {}}, {**row, "overrides": {"stage2": {"max_rois": 1}}}]}})
    with pytest.raises(config.ConfigError, match=r"table1.variants: the names \['v'\] are used twice"):
        experiments.plan_workflow(cfg)
