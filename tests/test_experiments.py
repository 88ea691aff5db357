import pytest
import yaml

from kitscascade import experiments, provenance
from tests.test_config import ROOT


def base():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_deep_merge_is_recursive_and_pure():
    a = {"x": {"y": 1, "z": 2}, "w": [1]}
    merged = experiments.deep_merge(a, {"x": {"y": 5}, "w": [2]})
    assert merged == {"x": {"y": 5, "z": 2}, "w": [2]} and a == {"x": {"y": 1, "z": 2}, "w": [1]}


def test_keys_follow_what_each_artifact_depends_on():
    cfg = base()
    ref = experiments.plan_experiment("a", cfg)
    s2 = experiments.plan_experiment("b", experiments.deep_merge(cfg, {"stage2": {"network": {"residual": False}}}))
    assert (s2.data_key, s2.pre_key, s2.stage1_key, s2.roi_key) == (ref.data_key, ref.pre_key, ref.stage1_key, ref.roi_key)
    s1 = experiments.plan_experiment("c", experiments.deep_merge(cfg, {"stage1": {"training": {"iterations": 7}}}))
    assert s1.pre_key == ref.pre_key and s1.stage1_key != ref.stage1_key and s1.roi_key != ref.roi_key
    pre = experiments.plan_experiment("d", experiments.deep_merge(cfg, {"stage1": {"spacing_factor": [1, 1, 1]}}))
    assert pre.data_key == ref.data_key and pre.pre_key != ref.pre_key
    data = experiments.plan_experiment("e", experiments.deep_merge(cfg, {"splits": {"seed": 5}}))
    assert data.data_key != ref.data_key and data.stage1_key != ref.stage1_key


def test_table1_variants():
    cfg = base()
    plans = experiments.plan_experiments(cfg)
    names = {experiments.variant_experiment(cfg, v) for v in cfg["table1"]["variants"]}
    assert cfg["experiment"] in names  # the rows that change nothing are the base experiment itself
    assert set(plans) == names
    stage2_rows = [plans[experiments.variant_experiment(cfg, v)] for v in cfg["table1"]["variants"] if v["stage"] == 2]
    assert len({p.stage1_key for p in stage2_rows}) == 1  # one stage-1 model set for all stage-2 rows
    bad = experiments.deep_merge(cfg, {"table1": {"variants": [
        {"name": "x", "stage": 2, "method": "x", "paper": [0, 0], "overrides": {"splits": {"seed": 1}}}]}})
    with pytest.raises(ValueError, match=r"table1.variants\[x\].overrides: \['splits'\]"):
        experiments.plan_experiments(bad)


def test_source_hash_changes_with_the_module_source(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path)
    (tmp_path / "train.py").write_text("x = 1\n")
    (tmp_path / "data.py").write_text("y = 1\n")
    before = provenance.source_hash("train", "data")
    assert provenance.source_hash("data", "train") == before
    (tmp_path / "train.py").write_text("x = 2\n")
    assert provenance.source_hash("train", "data") != before
