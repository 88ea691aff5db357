"""A single-node SLURM cluster for tests: munged, slurmctld and slurmd as plain daemons.

Everything lives in one scratch folder: configuration, munge key and socket,
state, logs, pid files, and wrappers for the SLURM client commands. Nothing is
written to /etc and no service manager is involved, so a test can start the
cluster, run Snakemake through ``snakemake-executor-plugin-slurm`` against it
and stop it again by the daemons' pids.

The node has fake GPUs (GRES ``gpu:fake:N``, each backed by a character device
such as ``/dev/null``), so that jobs asking for ``--gpus=1`` are scheduled; two
by default, so that two GPU jobs run side by side on a two-core machine. Jobs
go to partition ``debug``; a job of partition ``urgent`` preempts them (see
:meth:`SlurmCluster.preempt`). There is no accounting database: ``sacct``
fails, job states come from ``squeue``/``scontrol``, and ``MinJobAge`` keeps
finished jobs visible to them for ten minutes.

By hand (the same code the tests use)::

    python tests/slurm_cluster.py start /tmp/slurm   # prints the variables to export
    python tests/slurm_cluster.py stop /tmp/slurm
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ["munged", "slurmctld", "slurmd"]
# client commands the executor plugin (and these tests) call; sacct/sacctmgr/sshare are
# optional, they fail without an accounting database and the plugin copes with that
CLIENTS = ["sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo", "sacct", "sacctmgr", "sshare"]
REQUIRED_CLIENTS = ["sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo"]
DEBIAN_PACKAGES = "slurm-wlm munge"
SEARCH_PATH = ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"]
# one device file per fake GPU: slurmd only needs them to exist (no cgroups here)
FAKE_GPU_FILES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"]


class SlurmUnavailable(RuntimeError):
    """The SLURM or munge programs are not installed, or the cluster did not come up."""


def find_program(name: str) -> str | None:
    """Absolute path of ``name`` in the system folders (daemons are in sbin), else on PATH."""
    return shutil.which(name, path=os.pathsep.join(SEARCH_PATH)) or shutil.which(name)


def missing_programs() -> list[str]:
    return [name for name in DAEMONS + REQUIRED_CLIENTS if find_program(name) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_memory_mb() -> int:
    """85 % of the machine's memory, in MB: what the node offers to jobs."""
    with open("/proc/meminfo") as f:
        total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return int(total_kb / 1024 * 0.85)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class SlurmCluster:
    """A one-node cluster in ``root``; :meth:`start` brings it up, :meth:`stop` ends its daemons."""

    def __init__(self, root, gpus: int = 2):
        if not 1 <= gpus <= len(FAKE_GPU_FILES):
            raise ValueError(f"gpus={gpus}: between 1 and {len(FAKE_GPU_FILES)} fake GPUs")
        self.root = Path(root).resolve()
        self.gpus = gpus
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "etc" / "slurm.conf"
        self.bin = self.root / "bin"
        self.munge_socket = self.root / "munge" / "run" / "munge.socket"
        self.munge_key = self.root / "munge" / "key" / "munge.key"
        self.pid_files = {name: self.root / "run" / f"{name}.pid" for name in DAEMONS}
        self.logs = {name: self.root / "log" / f"{name}.log" for name in DAEMONS}

    # --- environment ------------------------------------------------------------
    def env(self, base: dict | None = None) -> dict:
        """``base`` (default: os.environ) with the wrappers first on PATH and SLURM_CONF set.

        The jobstep plugin wipes ``SLURM_*`` variables before its nested ``srun``, so
        SLURM_CONF alone is not enough: the wrappers export it again for every call.
        """
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *args, check=True, timeout=30) -> subprocess.CompletedProcess:
        """A SLURM client command (``squeue``, ``scontrol``...) against this cluster."""
        return subprocess.run(
            [str(self.bin / args[0]), *map(str, args[1:])],
            env=self.env(), capture_output=True, text=True, check=check, timeout=timeout,
        )

    # --- set-up -----------------------------------------------------------------
    def write_config(self) -> None:
        for sub in ["etc", "run", "log", "state", "spool", "bin", "munge/run", "munge/key", "munge/lib"]:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses a socket folder writable by others and a readable key
        os.chmod(self.root / "munge" / "run", 0o755)
        os.chmod(self.root / "munge" / "key", 0o700)
        if not self.munge_key.exists():
            self.munge_key.write_bytes(os.urandom(1024))
        os.chmod(self.munge_key, 0o400)

        cpus = os.cpu_count() or 1
        # MinJobAge: squeue, the status command here, must still see finished jobs.
        # KillWait: a cancelled job is killed 5 s after SIGTERM (default 30 s).
        # JobRequeue=0: only jobs submitted with --requeue come back after a preemption.
        conf = f"""\
ClusterName=testcluster
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.root / "state"}
SlurmdSpoolDir={self.root / "spool"}
SlurmctldPidFile={self.pid_files["slurmctld"]}
SlurmdPidFile={self.pid_files["slurmd"]}
SlurmctldLogFile={self.logs["slurmctld"]}
SlurmdLogFile={self.logs["slurmd"]}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
JobRequeue=0
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
MailProg=/bin/true
GresTypes=gpu
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={node_memory_mb()} Gres=gpu:fake:{self.gpus} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes={self.host} MaxTime=INFINITE State=UP PriorityTier=2
"""
        self.conf.write_text(conf)
        (self.conf.parent / "gres.conf").write_text("".join(
            f"NodeName={self.host} Name=gpu Type=fake File={device}\n" for device in FAKE_GPU_FILES[: self.gpus]
        ))
        for name in CLIENTS:
            program = find_program(name)
            if program is None:
                continue
            wrapper = self.bin / name
            wrapper.write_text(f'#!/bin/sh\nexport SLURM_CONF="{self.conf}"\nexec {program} "$@"\n')
            wrapper.chmod(0o755)

    def start(self, timeout: float = 60) -> "SlurmCluster":
        """Write the configuration and start munged, slurmctld and slurmd (in that order)."""
        missing = missing_programs()
        if missing:
            raise SlurmUnavailable(
                f"cannot start a SLURM cluster: {', '.join(missing)} not found "
                f"(Debian: apt-get install -y {DEBIAN_PACKAGES}; .ci/run does this)"
            )
        self.write_config()
        env = self.env()
        try:
            self._daemon("munged", [
                find_program("munged"), f"--socket={self.munge_socket}", f"--key-file={self.munge_key}",
                f"--pid-file={self.pid_files['munged']}", f"--log-file={self.logs['munged']}",
                f"--seed-file={self.root / 'munge' / 'lib' / 'munge.seed'}", "--force",
            ], env)
            self._wait_for(lambda: self.munge_socket.exists(), "munged's socket", timeout)
            self._daemon("slurmctld", [find_program("slurmctld"), "-f", str(self.conf)], env)
            self._wait_for(lambda: self.run("scontrol", "ping", check=False).returncode == 0, "slurmctld", timeout)
            self._daemon("slurmd", [find_program("slurmd"), "-f", str(self.conf)], env)
            self._wait_for(self._node_ready, f"node {self.host} to be idle", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _daemon(self, name: str, cmd: list[str], env: dict) -> None:
        """Start a daemon that forks into the background and writes its pid file."""
        self.pid_files[name].unlink(missing_ok=True)
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise SlurmUnavailable(f"{name} did not start: {result.stdout}{result.stderr}{self._log_tail(name)}")
        try:
            self._wait_for(lambda: self._pid(name) is not None, f"{name}'s pid file", 30)
        except SlurmUnavailable as err:
            raise SlurmUnavailable(f"{err}{self._log_tail(name)}") from None

    def _node_ready(self) -> bool:
        state = self.run("sinfo", "--noheader", "--format=%t", check=False).stdout.strip()
        return state in {"idle", "mix", "alloc"}

    def _wait_for(self, condition, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"timed out after {timeout:.0f} s waiting for {what}{self._log_tail()}")

    def _log_tail(self, name: str | None = None, lines: int = 15) -> str:
        text = ""
        for daemon in [name] if name else DAEMONS:
            log = self.logs[daemon]
            if log.exists():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                text += f"\n--- {log} ---\n{tail}"
        return text

    # --- running ----------------------------------------------------------------
    def jobs(self) -> list[dict]:
        """Every job slurmctld still knows (finished ones for MinJobAge), as ``scontrol -d show job`` fields.

        ``JOB_GRES`` is what the job was given, e.g. ``gpu:fake:1``; ``Restarts`` counts requeues.
        """
        out = self.run("scontrol", "--details", "show", "job", "--oneliner").stdout
        jobs = []
        for line in out.splitlines():
            if "JobId=" not in line:
                continue
            fields = {}
            for token in line.split():
                key, sep, value = token.partition("=")
                if sep:
                    fields.setdefault(key, value)
            jobs.append(fields)
        return jobs

    def wait_until_no_job_runs(self, timeout: float = 60) -> None:
        """Wait until no job is pending, running or being killed (e.g. after scancel)."""
        self._wait_for(
            lambda: not self.run("squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING,CONFIGURING",
                                 check=False).stdout.strip(),
            "all jobs to end", timeout,
        )

    def preempt(self, timeout: float = 60) -> list[str]:
        """Preempt every running job, as a job of a higher-priority partition does; returns their ids.

        Jobs submitted with ``--requeue`` go back to the queue (``JobRequeue=0``: the
        others end PREEMPTED). SLURM holds a requeued job for two minutes before it may
        start again; here it is released at once.
        """
        running = {job["JobId"] for job in self.jobs() if job["JobState"] == "RUNNING"}
        urgent = self.run("sbatch", "--parsable", "--partition=urgent", "--exclusive", "--mem=100", "--time=1",
                          "--output=/dev/null", "--wrap=true").stdout.strip().split(";")[0]

        def urgent_job_ended() -> bool:
            return any(j["JobId"] == urgent and j["JobState"] in {"COMPLETED", "FAILED", "CANCELLED"}
                       for j in self.jobs())

        self._wait_for(urgent_job_ended, f"preempting job {urgent} to end", timeout)
        for job in self.jobs():
            if job["JobId"] in running and job["JobState"] == "PENDING":
                self.run("scontrol", "update", f"JobId={job['JobId']}", "StartTime=now")
        return sorted(running)

    # --- tear-down --------------------------------------------------------------
    def _pid(self, name: str) -> int | None:
        try:
            return int(self.pid_files[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 30) -> None:
        """Cancel what is left in the queue, then end slurmd, slurmctld and munged by their pids."""
        if self._pid("slurmctld") is not None and (self.bin / "scancel").exists():
            subprocess.run([str(self.bin / "scancel"), "--user", str(os.getuid())],
                           env=self.env(), capture_output=True, timeout=30)
        for name in reversed(DAEMONS):
            pid = self._pid(name)
            if pid is None or not pid_alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            self.pid_files[name].unlink(missing_ok=True)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in {"start", "stop"}:
        print(__doc__, file=sys.stderr)
        return 2
    cluster = SlurmCluster(argv[1])
    if argv[0] == "start":
        cluster.start()
        print(f'export PATH="{cluster.bin}:$PATH" SLURM_CONF="{cluster.conf}"')
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
