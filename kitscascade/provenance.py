"""What a result was made with: the provenance record of an experiment (code keys: ``codekey``)."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess

from kitscascade import io

RECORDED_PACKAGES = ("kitscascade", "torch", "numpy", "scipy", "nibabel", "pandas", "connected-components-3d",
                     "snakemake")


def git_commit(folder=".") -> str:
    """The checkout's commit (with ``-dirty`` for uncommitted changes), or ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_provenance(path, experiment: str, config: dict, keys: dict) -> dict:
    """Record the effective config, the shared artifact keys, seeds, versions and commit of a run."""
    record = {
        "experiment": experiment,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "seeds": {
            "phantoms": config["phantoms"]["seed"],
            "splits": config["splits"]["seed"],
            "statistics": config["statistics"]["seed"],
            "stage1_training": config["stage1"]["training"]["seed"],
            "stage2_training": config["stage2"]["training"]["seed"],
        },
        "shared_artifacts": keys,
        "config": config,
    }
    io.save_json(record, path)
    return record
