"""The workflow configuration: loading, defaults and validation against ``config/config.schema.yaml``.

The schema is the one source of defaults: package code reads the keys of a
validated config and never falls back to values of its own. Configs are
layered like Snakemake's ``--configfile a.yaml b.yaml``: later files override
earlier ones key by key (nested mappings merge, everything else is replaced).
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "config" / "config.schema.yaml"
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"


# A stage's training settings that decide how a job runs, not what it makes (on a GPU, cuDNN's kernel
# choice and the memory layout move results within float rounding only): they stay out of the
# shared folders' keys and of the rules' rerun triggers (moving to another GPU, or giving the loader
# more workers, retrains nothing), come from the workflow config at run time (``with_execution``),
# and may change between a training run and its resumption.
EXECUTION_KEYS = ("device", "num_workers", "prefetch_factor", "cudnn_benchmark", "channels_last", "checkpoint_every")


class ConfigError(ValueError):
    """A configuration value is not what the schema allows (one line naming the key)."""


# A stage's settings that only prediction reads: changing them predicts again and trains no network of their
# stage. Stage 1's also change its held-out masks of the training cases, and so stage 2's training, but for
# component_min_peak and inference.folds, which those predictions ignore (stage1.held_out_settings).
PREDICTION_KEYS = ("inference", "keep_components", "component_min_peak", "roi_growth_steps")


def training_settings(stage_cfg: dict) -> dict:
    """A stage section without its ``EXECUTION_KEYS`` and ``PREDICTION_KEYS`` (what a trained model depends on)."""
    return {k: v for k, v in without_execution(stage_cfg).items() if k not in PREDICTION_KEYS}


# Training keys added after models were trained without them, with the value that trains as before: at that
# value a key stays out of the settings, so the shared folders' names and the rules' params of such a config
# stay what they were (the code key, params.code, follows the code that reads the key, and changes with it).
NEUTRAL_TRAINING_VALUES = {"negative_volume_fraction": None, "train_on": "fold"}


def without_execution(stage_cfg: dict) -> dict:
    """A stage section without its ``EXECUTION_KEYS`` (what a job's output depends on), and without the
    training keys at their ``NEUTRAL_TRAINING_VALUES``."""
    training = {k: v for k, v in stage_cfg["training"].items() if k not in EXECUTION_KEYS
                and not (k in NEUTRAL_TRAINING_VALUES and v == NEUTRAL_TRAINING_VALUES[k])}
    return {**stage_cfg, "training": training}


def with_execution(stage_cfg: dict, config: dict, stage: str) -> dict:
    """A stage section (from ``without_execution``) with the ``EXECUTION_KEYS`` of ``config[stage]``."""
    execution = {k: config[stage]["training"][k] for k in EXECUTION_KEYS}
    return {**stage_cfg, "training": {**stage_cfg["training"], **execution}}


def sorted_keys(value):
    """``value`` with every mapping's keys in sorted order, recursively: the same settings compare equal as
    text (Snakemake's params) however the config files ordered them."""
    if isinstance(value, dict):
        return {k: sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sorted_keys(v) for v in value]
    return value


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` applied recursively (a new dict; inputs untouched)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _resolve(schema: dict, root: dict) -> dict:
    """A subschema with its local ``$ref`` (``#/$defs/name``) expanded; sibling keys win."""
    while "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _fill_defaults(instance, schema: dict, root: dict) -> None:
    schema = _resolve(schema, root)
    if isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            sub = _resolve(sub, root)
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                _fill_defaults(instance[key], sub, root)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            _fill_defaults(item, schema["items"], root)


def validate(config: dict, where: str = "config") -> dict:
    """A copy of ``config`` with every default of the schema filled in, checked against it.

    Raises ``ConfigError`` with one line: ``where``, the dotted key and what
    was wrong (e.g. ``config: stage2.network: Additional properties are not
    allowed ('residul' was unexpected)``).
    """
    import jsonschema  # only where configs are planned, not inside jobs

    schema = load_schema()
    filled = copy.deepcopy(config)
    _fill_defaults(filled, schema, schema)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(filled))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"{where}: {key}: {error.message}")
    return filled


def load_config(*sources) -> dict:
    """Layer config files (paths) and dicts in order, then :func:`validate` the result.

    ``load_config()`` is the demo config, ``load_config(DEFAULT_CONFIG,
    ROOT / "config/kits19.yaml")`` what ``--configfile config/kits19.yaml`` runs.
    """
    merged: dict = {}
    for source in sources or (DEFAULT_CONFIG,):
        layer = source if isinstance(source, dict) else yaml.safe_load(Path(source).read_text()) or {}
        merged = deep_merge(merged, layer)
    return validate(merged, where=", ".join(str(s) for s in sources if not isinstance(s, dict)) or "config")


def defaults() -> dict:
    """Every key at its schema default (experiment ``demo``): a complete config to start tests from."""
    return validate({"experiment": "demo"})
