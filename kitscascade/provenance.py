"""What a result was made with: source hashes for rerun triggers, and a provenance record."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path

from kitscascade import io

PACKAGE_DIR = Path(__file__).resolve().parent
RECORDED_PACKAGES = ("kitscascade", "torch", "numpy", "scipy", "nibabel", "pandas", "connected-components-3d",
                     "snakemake")


def source_hash(*modules: str) -> str:
    """Hash of the source of ``kitscascade.<module>`` files: a rule's params include it, so
    editing a module the rule uses reruns the rule (Snakemake's code trigger sees only scripts)."""
    digest = hashlib.sha1()
    for module in sorted(modules):
        digest.update(module.encode())
        digest.update((PACKAGE_DIR / f"{module}.py").read_bytes())
    return digest.hexdigest()[:12]


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
