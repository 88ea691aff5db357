"""The workflow on a real one-node SLURM cluster, through the cluster profile (profiles/slurm).

One scenario, run once per module and checked piece by piece below:

1. ``snakemake --cores 2 --profile profiles/slurm`` starts the tiny cascade
   (tests/configs/tiny.yaml + slurm.yaml) on the cluster. When stage-1
   training of fold 0 has written a resume file, a job of a higher-priority
   partition preempts the running jobs; SLURM requeues them (the profile
   submits with ``--requeue``) and fold 0 resumes. Then the run gets SIGINT
   (Ctrl-C): Snakemake scancels its jobs and stops.
2. ``snakemake --cores 2 --profile slurm``, the short name, with the profile
   linked as the README says (into a private XDG config folder), finishes
   the run: finished files stay, training resumes again.
3. A local ``--cores 2`` run of the same configuration, never interrupted
   (alongside run 2, which mostly waits), gives exactly the same evaluation.

Two more tests need no cluster: the workflow profile (profiles/default, applied
to every run) must not override the cluster profile, and every key of the
cluster profile must be an option of the installed Snakemake and plugin.

The profile is used as a user would: copied with the workflow, its two
EDIT_ME values (partition, account) filled in. Only what this test cluster
needs is added on the command line: ``squeue`` for job states (no accounting
database, so no ``sacct``), a 2 s first status check instead of 40 s, and
keeping the SLURM logs of successful jobs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kitscascade import config, experiments
from tests.slurm_cluster import DEBIAN_PACKAGES, SlurmCluster, missing_programs
from tests.test_workflow import copy_workflow

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
SLURM_CONFIG = ROOT / "tests" / "configs" / "slurm.yaml"
EXP = "slurm"
TARGETS = [f"results/{EXP}/evaluation/summary.csv"]
CONFIG_ARGS = ["--configfile", "tiny.yaml", "slurm.yaml"]
CLUSTER_ARGS = [
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
    "--slurm-keep-successful-logs",
]
# predict_stage1_fold_<k>: stage 1's out-of-fold predictions, one job per fold (tiny.yaml has 2)
GPU_RULES = {"train_stage1", "train_stage2", "predict_stage1", "predict_stage1_fold_0", "predict_stage1_fold_1",
             "predict_stage2"}
PARTITION, ACCOUNT = "debug", "kits"

pytestmark = pytest.mark.workflow


def local_rules() -> set[str]:
    """The rules the Snakefile lists under localrules: (they run where Snakemake runs)."""
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", (ROOT / "Snakefile").read_text(), re.MULTILINE)
    return set(re.findall(r"\w+", block.group(1)))


def stage1_folder() -> str:
    """The shared stage-1 folder of the test configuration (config.yaml + tiny.yaml + slurm.yaml)."""
    cfg = config.load_config(config.DEFAULT_CONFIG, ROOT / "tests" / "configs" / "tiny.yaml", SLURM_CONFIG)
    return experiments.plan_experiments(cfg)[EXP].folders["stage1"]


STAGE1 = f"results/shared/{stage1_folder()}"
TRAIN_LOG = f"logs/shared/{stage1_folder()}/train/fold_0.log"
FOLD0_COMMENT = f"rule_train_stage1_wildcards_{stage1_folder()}_0"


def slurm_workflow(dest: Path, fill_in_profile: bool = True) -> Path:
    """A copy of the workflow with the test configs; its SLURM profile filled in as the README says."""
    wf = copy_workflow(dest)
    shutil.copy(SLURM_CONFIG, wf / "slurm.yaml")
    if not fill_in_profile:
        return wf
    profile = wf / "profiles" / "slurm" / "config.yaml"
    settings = yaml.safe_load(profile.read_text())
    assert settings["default-resources"]["slurm_partition"] == "EDIT_ME"
    assert settings["default-resources"]["slurm_account"] == "EDIT_ME"
    settings["default-resources"].update(slurm_partition=PARTITION, slurm_account=ACCOUNT)
    profile.write_text(yaml.safe_dump(settings, sort_keys=False))
    return wf


def run_snakemake(args, cwd, env, log: Path, timeout=600) -> str:
    with open(log, "w") as out:
        result = subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout)
    text = log.read_text()
    if result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{text[-4000:]}")
    return text


def wait_for(condition, what: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def ctrl_c_as_in_a_terminal() -> None:
    """SIGINT back to its default in the child: a shell without job control starts background commands
    (``make test &``) with SIGINT ignored, the children inherit that, and Python then installs no
    KeyboardInterrupt handler, so Snakemake would not see the interrupt at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_id(log_text: str) -> str:
    """The SLURM run ID Snakemake gives all its jobs as their job name."""
    return re.search(r"SLURM run ID: (\S+)", log_text).group(1)


def rule_of(job: dict) -> str:
    """Rule name of a Snakemake SLURM job, from its comment ``rule_<rule>[_wildcards_<values>]``."""
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def profile_install_commands() -> list[str]:
    """The README's commands that link the profile under its short name."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running on a SLURM cluster"):]
    section = section[: section.index("\n## ", 1)]
    commands = [line for line in section.splitlines() if line.startswith(("mkdir -p", "ln -s"))]
    assert any(c.startswith("ln -s") for c in commands), "README: no command linking the SLURM profile"
    return commands


def planned_jobs(wf: Path) -> Counter:
    """Jobs per rule of a dry run, from Snakemake's job stats table."""
    result = subprocess.run([SNAKEMAKE, *TARGETS, "-n", *CONFIG_ARGS], cwd=wf, capture_output=True, text=True,
                            check=True)
    out = result.stdout + result.stderr
    counts = Counter()
    for line in out[out.index("Job stats:"):].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


# --- the profiles, without a cluster ---------------------------------------------------------------------

def test_workflow_profile_leaves_the_cluster_profile_alone():
    """profiles/default applies to every run and its keys win over --profile's: no clash allowed."""
    default = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    cluster = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    # a default-resources entry in the workflow profile would discard the cluster profile's
    assert "default-resources" not in default and "set-resources" not in default
    assert {key: default[key] for key in default.keys() & cluster.keys()} == {
        key: cluster[key] for key in default.keys() & cluster.keys()}
    assert not {"cores", "jobs", "executor"} & default.keys()


def test_cluster_profile_is_understood_by_the_installed_plugin(tmp_path):
    """Every key of profiles/slurm, and of its commented set-resources example, is an option of this
    Snakemake and executor plugin (dry runs, no cluster needed)."""
    wf = slurm_workflow(tmp_path / "wf", fill_in_profile=False)
    profile = wf / "profiles" / "slurm" / "config.yaml"
    text = profile.read_text()
    example = re.search(r"^# set-resources:\n(?:#   .*\n)+", text, re.MULTILINE).group(0)
    uncommented = re.sub(r"^# ", "", example, flags=re.MULTILINE)
    (wf / "profiles" / "example").mkdir()
    (wf / "profiles" / "example" / "config.yaml").write_text(text.replace(example, uncommented))
    for name in ["slurm", "example"]:
        result = subprocess.run([SNAKEMAKE, *TARGETS, "-n", "--profile", f"profiles/{name}", *CONFIG_ARGS], cwd=wf,
                                capture_output=True, text=True)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out[-3000:]
        assert f"Using profiles profiles/{name} and workflow specific profile profiles/default" in out
        assert "train_stage1" in out


# --- the scenario on the cluster ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_programs()
    if missing:
        message = (f"SLURM tests need {', '.join(missing)}: apt-get install -y {DEBIAN_PACKAGES} "
                   "(as root; .ci/run does it)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with SlurmCluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture(scope="module")
def scenario(cluster, tmp_path_factory):
    """Runs 1 and 2 of the module docstring; returns what the tests check."""
    tmp = tmp_path_factory.mktemp("slurm_run")
    wf = slurm_workflow(tmp / "wf")
    env = cluster.env()
    plan = planned_jobs(wf)
    models = wf / STAGE1 / "models"
    resume_file, final_model = models / "fold_0.resume.pt", models / "fold_0.pt"
    train_log = wf / TRAIN_LOG

    # 1. --profile profiles/slurm, preempted during training, then interrupted
    log1 = tmp / "run1.log"
    with open(log1, "w") as out:
        proc = subprocess.Popen([SNAKEMAKE, *TARGETS, "--cores", "2", "--profile", "profiles/slurm", *CONFIG_ARGS,
                                 *CLUSTER_ARGS], cwd=wf, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=ctrl_c_as_in_a_terminal)
    try:
        wait_for(resume_file.exists, "stage-1 training wrote a resume file", proc, log1)
        preempted = cluster.preempt()
        wait_for(lambda: "resuming" in (train_log.read_text() if train_log.exists() else ""),
                 "the requeued training job resumed", proc, log1)
        resumed_after_preemption = train_log.read_text()
        proc.send_signal(signal.SIGINT)
        interrupt_rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cluster.wait_until_no_job_runs(timeout=120)
    after_interrupt = {
        "final_model_exists": final_model.exists(),
        "resume_file_exists": resume_file.exists(),
        # phantoms, splits, statistics, preprocessed cases: all made before training
        "mtimes": {p: p.stat().st_mtime_ns for p in (wf / "results").rglob("*")
                   if p.is_file() and models not in p.parents},
        "log": log1.read_text(),
    }
    assert any(p.suffix == ".npz" for p in after_interrupt["mtimes"]), "no preprocessed case before the interrupt"

    # 3. the local run, started now: run 2 spends most of its time waiting for job states
    local_wf = slurm_workflow(tmp / "local")
    local_log = tmp / "local.log"
    with open(local_log, "w") as out:
        local = subprocess.Popen([SNAKEMAKE, *TARGETS, "--cores", "2", *CONFIG_ARGS], cwd=local_wf,
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        # 2. --profile slurm (linked as the README says), to the end
        xdg = tmp / "xdg"
        env2 = dict(env, XDG_CONFIG_HOME=str(xdg))
        for command in profile_install_commands():
            subprocess.run(["bash", "-c", command], cwd=wf, env=env2, check=True)
        log2 = run_snakemake([*TARGETS, "--cores", "2", "--profile", "slurm", *CONFIG_ARGS, *CLUSTER_ARGS], wf,
                             env2, tmp / "run2.log")
        local.wait(timeout=600)
    finally:
        if local.poll() is None:
            local.kill()
            local.wait()
    assert local.returncode == 0, f"local run failed:\n{local_log.read_text()[-4000:]}"
    jobs = cluster.jobs()
    runs = {run_id(after_interrupt["log"]): 1, run_id(log2): 2}
    return {
        "wf": wf, "plan": plan, "preempted": preempted, "interrupt_rc": interrupt_rc,
        "resumed_after_preemption": resumed_after_preemption, "after_interrupt": after_interrupt,
        "log2": log2, "xdg": xdg, "local_wf": local_wf,
        "jobs": [dict(job, run=runs[job["JobName"]]) for job in jobs if job["JobName"] in runs],
    }


@pytest.mark.slurm
def test_short_profile_name_resolves_to_the_linked_profile(scenario):
    link = scenario["xdg"] / "snakemake" / "slurm"
    assert link.is_symlink() and link.resolve() == (scenario["wf"] / "profiles" / "slurm").resolve()
    assert "Using profiles slurm and workflow specific profile profiles/default" in scenario["log2"]
    # the second run only had the short name: its jobs went through SLURM
    assert any(job["run"] == 2 for job in scenario["jobs"])


@pytest.mark.slurm
def test_every_computing_job_ran_as_a_slurm_job(scenario):
    plan, jobs, wf = scenario["plan"], scenario["jobs"], scenario["wf"]
    local = local_rules()
    assert {"make_splits", "aggregate_evaluation"} <= local & set(plan)
    completed = [job for job in jobs if job["JobState"] == "COMPLETED"]
    # each planned job exactly once (the preempted and the cancelled training jobs ran again)
    assert Counter(rule_of(job) for job in completed) == Counter({r: n for r, n in plan.items() if r not in local})
    for job in completed:
        assert job["Partition"] == PARTITION and job["Account"] == ACCOUNT
        assert job["Requeue"] == "1", "slurm-requeue: true did not reach sbatch"
        # --slurm-keep-successful-logs: .snakemake/slurm_logs/rule_<rule>/<wildcards>/<SLURM_JOB_ID>.log
        slurm_logs = list((wf / ".snakemake" / "slurm_logs" / f"rule_{rule_of(job)}").rglob(f"{job['JobId']}.log"))
        assert len(slurm_logs) == 1 and "rule " + rule_of(job) in slurm_logs[0].read_text()


@pytest.mark.slurm
def test_rule_resources_become_sbatch_requests(scenario):
    settings = yaml.safe_load(SLURM_CONFIG.read_text())["resources"]
    for job in scenario["jobs"]:
        rule = rule_of(job)
        if rule in {"train_stage1", "train_stage2"}:
            mem, minutes = settings["network_mem_mb"], settings["train_runtime"]
        elif rule in GPU_RULES:
            mem, minutes = settings["network_mem_mb"], settings["network_runtime"]
        elif rule == "make_phantoms":  # no resources of its own: the profile's default-resources
            defaults = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())["default-resources"]
            mem, minutes = defaults["mem_mb"], defaults["runtime"]
        else:
            mem, minutes = settings["imaging_mem_mb"], settings["imaging_runtime"]
        assert job["MinMemoryNode"] == f"{mem}M", rule
        assert job["TimeLimit"] == f"00:{minutes:02d}:00", rule
        assert job["NumCPUs"] == str(settings["threads"]), rule


@pytest.mark.slurm
def test_gpu_rules_ran_on_the_fake_gpu(scenario):
    jobs = [job for job in scenario["jobs"] if job["JobState"] == "COMPLETED"]
    assert GPU_RULES <= {rule_of(job) for job in jobs}
    for job in jobs:
        if rule_of(job) in GPU_RULES:
            assert job["TresPerJob"] == "gres:gpu:1" and job["JOB_GRES"] == "gpu:fake:1", job
        else:
            assert job.get("JOB_GRES", "(null)") == "(null)" and "gpu" not in job.get("TresPerJob", ""), job


@pytest.mark.slurm
def test_preempted_training_was_requeued_and_resumed(scenario):
    fold0 = [job for job in scenario["jobs"] if job["run"] == 1 and job["Comment"] == FOLD0_COMMENT]
    assert len(fold0) == 1 and fold0[0]["JobId"] in scenario["preempted"]
    assert fold0[0]["Restarts"] == "1"
    match = re.search(r"resuming \S+fold_0\.pt from iteration (\d+)", scenario["resumed_after_preemption"])
    assert match and int(match.group(1)) >= 10, scenario["resumed_after_preemption"]
    assert "Error in rule" not in scenario["after_interrupt"]["log"]


@pytest.mark.slurm
def test_interrupt_cancels_the_jobs_and_keeps_the_resume_file(scenario):
    after = scenario["after_interrupt"]
    assert scenario["interrupt_rc"] != 0
    assert not after["final_model_exists"] and after["resume_file_exists"]
    fold0 = [job for job in scenario["jobs"] if job["run"] == 1 and job["Comment"] == FOLD0_COMMENT]
    assert fold0[0]["JobState"] == "CANCELLED"


@pytest.mark.slurm
def test_rerun_keeps_finished_files_and_resumes_training(scenario):
    wf, after = scenario["wf"], scenario["after_interrupt"]
    assert {p: p.stat().st_mtime_ns for p in after["mtimes"]} == after["mtimes"]
    rerun = Counter(rule_of(job) for job in scenario["jobs"] if job["run"] == 2)
    assert rerun["train_stage1"] >= 1
    assert not {"make_phantoms", "dataset_statistics", "preprocess_stage1"} & set(rerun)
    log = (wf / TRAIN_LOG).read_text()
    match = re.search(r"resuming \S+fold_0\.pt from iteration (\d+)", log)
    assert match, log
    training = config.load_config(config.DEFAULT_CONFIG, ROOT / "tests" / "configs" / "tiny.yaml",
                                  SLURM_CONFIG)["stage1"]["training"]
    iterations, log_every = training["iterations"], training["log_every"]
    assert 10 <= int(match.group(1)) < iterations
    curve = pd.read_csv(wf / STAGE1 / "models" / "fold_0_loss.csv")
    assert curve["iteration"].tolist() == sorted({*range(log_every, iterations + 1, log_every), iterations})
    assert not (wf / STAGE1 / "models" / "fold_0.resume.pt").exists()
    result = subprocess.run([SNAKEMAKE, *TARGETS, "-n", *CONFIG_ARGS], cwd=wf, capture_output=True, text=True)
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slurm
def test_results_equal_an_uninterrupted_local_run(scenario):
    """Training on the CPU with fixed seeds and one thread is deterministic, resumed or not."""
    for table in [f"results/{EXP}/evaluation/per_case.csv", f"{STAGE1}/models/fold_0_loss.csv",
                  f"results/{EXP}/stage2/models/fold_0_loss.csv"]:
        local = pd.read_csv(scenario["local_wf"] / table)
        slurm = pd.read_csv(scenario["wf"] / table)
        timing = ["seconds", "batch_wait_seconds"]
        local, slurm = (t.drop(columns=timing) if "seconds" in t else t for t in (local, slurm))
        pd.testing.assert_frame_equal(slurm, local, check_exact=True, obj=table)
