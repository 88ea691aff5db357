"""The shipped configurations validate against the schema, which documents every key and holds every default."""

import ast
import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from snakemake.utils import validate

from kitscascade import config
from kitscascade.networks import pool_schedule, pools_per_axis

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "config.schema.yaml"


def load(name):
    return yaml.safe_load((ROOT / "config" / name).read_text())


def merged(*names):
    return config.load_config(*(ROOT / "config" / name for name in names))


@pytest.mark.parametrize("names", [("config.yaml",), ("config.yaml", "kits19.yaml"),
                                   ("config.yaml", "kits19.yaml", "kits23.yaml"),
                                   ("config.yaml", "kits19.yaml", "rehearsal.yaml")])
def test_shipped_configs_validate(names):
    validate(merged(*names), str(SCHEMA))


def test_paper_config_has_the_paper_sizes():
    cfg = merged("config.yaml", "kits19.yaml")
    assert pools_per_axis(pool_schedule(cfg["stage1"]["patch_size"])) == (4, 5, 5)
    assert pools_per_axis(pool_schedule(cfg["stage2"]["patch_size"])) == (3, 5, 5)
    assert cfg["stage1"]["network"]["base_features"] == cfg["stage2"]["network"]["base_features"] == 30
    assert cfg["stage1"]["training"]["batch_size"] == 2 and cfg["stage2"]["training"]["batch_size"] == 5
    assert cfg["splits"]["n_validation"] == 50 and cfg["stage1"]["training"]["learning_rate"] == 3e-4


def walk(schema, path=""):
    """Every property of the schema (following $ref into $defs), with its dotted path."""
    defs = yaml.safe_load(SCHEMA.read_text())["$defs"]
    if "$ref" in schema:
        schema = {**defs[schema["$ref"].split("/")[-1]], **{k: v for k, v in schema.items() if k != "$ref"}}
    for key, sub in schema.get("properties", {}).items():
        yield f"{path}{key}", sub, defs
        yield from walk(sub, f"{path}{key}.")


def test_every_key_has_a_description_and_a_default():
    schema = yaml.safe_load(SCHEMA.read_text())
    missing = []
    for key, sub, defs in walk(schema):
        full = {**defs.get(sub.get("$ref", "").split("/")[-1], {}), **sub}
        if "description" not in full or "default" not in full:
            missing.append(key)
    assert not missing, missing


def test_default_config_keys_are_all_in_the_schema():
    validate(load("config.yaml"), str(SCHEMA))  # additionalProperties: false everywhere


def test_a_typo_is_rejected():
    cfg = load("config.yaml")
    cfg["stage2"]["network"]["residul"] = False
    with pytest.raises(Exception, match="residul"):
        validate(cfg, str(SCHEMA))


def test_paper_table1_rows_build_at_paper_sizes():
    from kitscascade import experiments
    from kitscascade.networks import build_network

    cfg = merged("config.yaml", "kits19.yaml")
    plans = experiments.plan_experiments(cfg)
    assert len({p.folders["stage1"] for p in plans.values()}) == 2  # the 3-D and the 2-D localizer
    for variant in cfg["table1"]["variants"]:
        s = experiments.variant_config(cfg, variant)[f"stage{variant['stage']}"]
        net = {k: v for k, v in s["network"].items() if k != "spatial_prior"}
        build_network(**net, in_channels=2, num_classes=3, patch_size=s["patch_size"])  # sizes divide the pools


def test_the_package_fills_the_same_defaults_as_snakemake():
    for names in (("config.yaml",), ("config.yaml", "kits19.yaml")):
        raw = config.deep_merge(load(names[0]), load(names[-1]) if len(names) > 1 else {})
        by_snakemake = copy.deepcopy(raw)
        validate(by_snakemake, str(SCHEMA))
        assert config.validate(raw) == by_snakemake
    sparse = {"experiment": "x"}
    validate(sparse, str(SCHEMA))
    assert config.validate({"experiment": "x"}) == sparse


def schema_defaults() -> dict[str, set]:
    """Key name -> every default the schema gives a key of that name (anywhere)."""
    found: dict[str, set] = {}
    for key, sub, defs in walk(yaml.safe_load(SCHEMA.read_text())):
        full = {**defs.get(sub.get("$ref", "").split("/")[-1], {}), **sub}
        if "default" in full:
            found.setdefault(key.rsplit(".", 1)[-1], set()).add(repr(full["default"]))
    return found


def test_no_code_default_for_a_schema_key():
    """Package code reads config keys; `cfg.get("key", value)` would be a second source of defaults."""
    keys = schema_defaults()
    offenders = []
    for path in sorted((ROOT / "kitscascade").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in keys \
                    and (len(node.args) > 1 or node.keywords):
                offenders.append(f"{path.name}:{node.lineno} .get({node.args[0].value!r}, ...)")
    assert not offenders, offenders


def test_the_rehearsal_is_the_paper_config_at_kits19_size():
    """config/rehearsal.yaml over kits19.yaml: the paper's networks, patches, batches and folds, on
    8-12 phantoms of 60-140 x 512 x 512 at 0.7-0.9 mm in-plane and 3-5 mm slices, one of 400+ slices."""
    from kitscascade import phantoms

    paper = merged("config.yaml", "kits19.yaml")
    cfg = merged("config.yaml", "kits19.yaml", "rehearsal.yaml")
    for stage in ("stage1", "stage2"):
        assert cfg[stage]["network"] == paper[stage]["network"]
        assert cfg[stage]["patch_size"] == paper[stage]["patch_size"] and cfg[stage]["inference"] == paper[stage]["inference"]
        assert cfg[stage]["training"]["batch_size"] == paper[stage]["training"]["batch_size"]
        assert 100 <= cfg[stage]["training"]["iterations"] <= 500
    assert cfg["splits"]["n_folds"] == 5 and cfg["data_dir"] == ""
    p = cfg["phantoms"]
    assert 8 <= p["n_cases"] <= 12
    geometry = [phantoms.case_plan(f"case_{i:05d}", p["shape"], p["spacing"], p["seed"], p["single_kidney_fraction"],
                                   p["slice_thickness_mm"], p["scan_length_mm"])[:2] for i in range(p["n_cases"])]
    thick = [(shape, spacing) for shape, spacing in geometry if spacing[0] >= 3]
    assert len(thick) >= 6 and all(60 <= shape[0] <= 140 and 3 <= spacing[0] <= 5 for shape, spacing in thick)
    assert any(shape[0] >= 400 for shape, _ in geometry)
    assert all(shape[1:] == (512, 512) and 0.7 <= spacing[1] == spacing[2] <= 0.9 for shape, spacing in geometry)


def test_the_kits23_config_plans_a_kits23_folder(tmp_path):
    """config/kits23.yaml over kits19.yaml on a folder laid out as KiTS23's dataset/ (cyst label 3)."""
    from kitscascade import check, experiments, io

    root = tmp_path / "kits23" / "dataset"
    label = np.zeros((4, 8, 8), np.uint8)
    label[1:3, 2:6, 2:6] = 1
    label[1, 2:4, 2:4] = 2
    label[2, 4:6, 4:6] = 3
    for i in (0, 1, 2, 400, 588):
        for name, array in ((io.IMAGING_NAME, label.astype(np.float32)), (io.SEGMENTATION_NAME, label)):
            io.save_nifti(array, io.kits19_affine((3.0, 0.8, 0.8)), root / f"case_{i:05d}" / name)
    cfg = merged("config.yaml", "kits19.yaml", "kits23.yaml")
    assert cfg["labels"] == {"kidney": 1, "tumor": 2, "cyst": 3} and cfg["stage2"]["cyst"] == "own_class"
    cfg = config.validate(config.deep_merge(cfg, {"data_dir": str(root), "splits": {"n_validation": 1, "n_folds": 2},
                                                  "table1": {"variants": []}}))
    plan = experiments.plan_workflow(cfg)
    assert plan.cases == ["case_00000", "case_00001", "case_00002", "case_00400", "case_00588"]
    table = check.check_dataset(io.dataset_files(root), cfg["labels"], tmp_path / "check.csv")
    assert set(table["label_values"]) == {"0 1 2 3"}


def test_the_paper_config_augments_as_nnunet_and_the_demo_milder():
    """kits19.yaml trains with the schema's augmentation (nnU-Net's); the demo config with its milder,
    measured one (README: nnU-Net's cost tumor Dice at the demo's CPU budget)."""
    paper, demo, schema = merged("config.yaml", "kits19.yaml"), merged("config.yaml"), config.defaults()
    for stage in ("stage1", "stage2"):
        def without_flips(cfg):
            return {k: v for k, v in cfg[stage]["training"]["augmentation"].items() if k != "flip_axes"}
        assert without_flips(paper) == without_flips(schema)
        assert demo[stage]["training"]["augmentation"]["gamma_probability"] == 0.0


def test_the_paper_config_predicts_as_the_paper_and_the_demo_with_its_measured_additions():
    """kits19.yaml, layered over config.yaml, keeps the paper's prediction: the two largest stage-1
    components however unsure, and stage 2 in the ROIs as cropped; the demo grows an ROI its tumor
    reaches and keeps the two components too (README: both measured on the cross-family benchmark)."""
    paper, demo, schema = merged("config.yaml", "kits19.yaml"), merged("config.yaml"), config.defaults()
    for cfg in (paper, schema):
        assert cfg["stage1"]["component_min_peak"] is None and cfg["stage2"]["roi_growth_steps"] == 0
    assert demo["stage1"]["component_min_peak"] is None and demo["stage2"]["roi_growth_steps"] == 3
