"""The per-rule conda environments (envs/*.yaml), checked without creating them (no conda channels here).

How ``kitscascade`` is found inside them: not installed there at all. Snakemake
starts every ``script:`` with a preamble that appends its own ``sys.path`` to the
script's, and that path holds the folder of the ``Snakefile``, where
``kitscascade/`` lives (in conda jobs Snakemake clears PYTHONPATH, not this).
``test_a_job_script_imports_kitscascade_from_the_workflow_folder`` runs a real
job script, preamble included, with an interpreter that has no kitscascade.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENVS = sorted((ROOT / "envs").glob("*.yaml"))
# conda-forge names whose PyPI distribution is called otherwise
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib"}
UNPINNED = {"pip"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[normalize(name)] = version.strip()
    return pins


def env_packages(env_file: Path) -> dict[str, str | None]:
    """PyPI name -> pinned version (None if unpinned) of a conda env file, its pip section included."""
    packages = {}
    for dep in yaml.safe_load(env_file.read_text())["dependencies"]:
        if isinstance(dep, dict):
            for requirement in dep["pip"]:
                name, _, version = requirement.partition("==")
                packages[normalize(name)] = version.strip() or None
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(?:==?\s*(\S+))?", dep.strip())
        assert match, f"{env_file.name}: cannot read dependency {dep!r}"
        name = normalize(match.group(1))
        packages[normalize(CONDA_TO_PYPI.get(name, name))] = match.group(2)
    return packages


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_file_pins_every_package(env_file):
    env = yaml.safe_load(env_file.read_text())
    assert set(env) == {"channels", "dependencies"}, "a name: or prefix: would tie the env to one machine"
    assert env["channels"] == ["conda-forge", "nodefaults"]
    unpinned = [name for name, version in env_packages(env_file).items() if version is None and name not in UNPINNED]
    assert not unpinned, f"{env_file.name}: pin {unpinned}"


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_pins_match_requirements_lock(env_file):
    lock = lock_pins()
    for name, version in env_packages(env_file).items():
        if name == "python" or version is None:
            continue
        assert name in lock, f"{env_file.name}: {name} is not in requirements.lock"
        assert version == lock[name], f"{env_file.name}: {name} {version}, requirements.lock has {lock[name]}"


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_python_is_the_workflows_python(env_file):
    """Job scripts unpickle Snakemake's job data and fall back to its module path: same Python minor."""
    assert env_packages(env_file)["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"


# --- what each rule's script imports, and its environment ----------------------------------------------

def rule_scripts_and_envs() -> list[tuple[str, Path, Path]]:
    """(rule, script, env file) of every rule in rules/*.smk with a script: and a conda: directive."""
    found = []
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=[ \t]*(?:rule |use rule ))", smk.read_text()):
            rule = re.match(r"\s*rule (\w+):", block)
            script = re.search(r"\n\s+script:\s*\n\s+\"([^\"]+)\"", block)
            conda = re.search(r"\n\s+conda:\s*\n\s+\"([^\"]+)\"", block)
            if rule and script:
                assert conda, f"rule {rule.group(1)} has a script: but no conda:"
                found.append((rule.group(1), (smk.parent / script.group(1)).resolve(),
                              (smk.parent / conda.group(1)).resolve()))
    return found


def module_file(module: str) -> Path | None:
    """The source file of a kitscascade module, None for anything else."""
    parts = module.split(".")
    if parts[0] != "kitscascade":
        return None
    path = ROOT.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports_in(nodes) -> set[str]:
    """Modules imported by these statements when they run (function bodies are not run)."""
    found, todo = set(), list(nodes)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            for alias in node.names:  # `from kitscascade import stage1` imports a module
                submodule = f"{node.module}.{alias.name}"
                if (file := module_file(submodule)) is not None and file.exists():
                    found.add(submodule)
        todo.extend(ast.iter_child_nodes(node))
    return found


def function_imports(module: str, function: str) -> set[str]:
    """Modules a kitscascade function imports when called (the lazy imports in its body)."""
    tree = ast.parse(module_file(module).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return imports_in(node.body) | {
                m for sub in ast.walk(node) if isinstance(sub, ast.FunctionDef) and sub is not node
                for m in imports_in(sub.body)
            }
    return set()


def third_party_imports(script: Path) -> set[str]:
    """Top-level third-party modules a job script needs: its imports, the lazy imports of the
    kitscascade functions it calls, and everything those kitscascade modules import."""
    tree = ast.parse(script.read_text())
    modules = imports_in(tree.body)
    aliases = {alias.asname or alias.name: f"{node.module}.{alias.name}" for node in tree.body
               if isinstance(node, ast.ImportFrom) and node.module == "kitscascade" for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id in aliases:
            modules |= function_imports(aliases[node.func.value.id], node.func.attr)
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if (file := module_file(module)) is not None and file.exists():
            todo.extend(imports_in(ast.parse(file.read_text()).body))
    top = {m.split(".")[0] for m in seen}
    return {m for m in top if m not in sys.stdlib_module_names and m not in {"kitscascade", "__future__"}}


RULES = rule_scripts_and_envs()


@pytest.mark.parametrize("rule, script, env_file", RULES, ids=[rule for rule, _, _ in RULES])
def test_rule_env_provides_what_its_script_imports(rule, script, env_file):
    distributions = importlib.metadata.packages_distributions()
    provided = set(env_packages(env_file))
    for module in third_party_imports(script):
        names = {normalize(d) for d in distributions.get(module, [module])}
        assert names & provided, f"rule {rule}: {script.name} imports {module}, not in {env_file.name}"


def test_imaging_rules_do_not_import_torch():
    """Imaging steps import torch lazily, so that their environment does without it."""
    imaging = [(rule, script) for rule, script, env in RULES if env.name == "imaging.yaml"]
    assert imaging
    for rule, script in imaging:
        assert "torch" not in third_party_imports(script), rule


# --- kitscascade inside a job whose Python knows nothing of it --------------------------------------------

@pytest.mark.workflow
def test_a_job_script_imports_kitscascade_from_the_workflow_folder(tmp_path):
    wf = tmp_path / "wf"
    wf.mkdir()
    for part in ["Snakefile", "rules", "workflow_scripts", "config", "envs", "profiles", "kitscascade"]:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, wf / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, wf / part)
    shutil.copy(ROOT / "tests" / "configs" / "tiny.yaml", wf / "tiny.yaml")
    snakemake = Path(sys.executable).parent / "snakemake"
    subprocess.run([str(snakemake), "make_splits", "--cores", "1", "--configfile", "tiny.yaml",
                    "--skip-script-cleanup"], cwd=wf, check=True, capture_output=True)
    [splits] = (wf / "results" / "shared").glob("data-*/splits.json")
    expected = splits.read_text()
    splits.unlink()
    [script] = (wf / ".snakemake" / "scripts").glob("*.make_splits.py")

    # as a conda job runs it: `python script` with the env's Python, PYTHONPATH cleared
    python = sys._base_executable
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    probe = subprocess.run([python, "-c", "import kitscascade"], env=env, capture_output=True, cwd=tmp_path)
    assert probe.returncode != 0, f"{python} has kitscascade installed: not a test of the job preamble"
    result = subprocess.run([python, str(script)], cwd=wf, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert splits.read_text() == expected
    origin = subprocess.run(
        [python, "-c", "import runpy, sys; runpy.run_path(sys.argv[1]); print(sys.modules['kitscascade'].__file__)",
         str(script)], cwd=wf, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(origin) == wf / "kitscascade" / "__init__.py"
