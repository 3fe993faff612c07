"""A one-node Slurm cluster for the tests: munged, slurmctld and slurmd started by hand, state in one folder.

    python tests/slurm_cluster.py start /tmp/slurm    # prints the SLURM_CONF to export, then returns
    python tests/slurm_cluster.py stop /tmp/slurm     # cancels the jobs, stops the daemons by their PIDs

Debian 12's Slurm 22.05 (packages slurmctld, slurmd, slurm-client, munge; `install` gets them, waiting on the apt
lock as `make install` does). Runs as root, with no systemd: everything lives in the state folder, ports are a free
pair. No accounting database (slurmdbd needs MariaDB): `sacct`, which submitit reads job states from, is answered
from slurmctld's own memory of recent jobs by a stand-in on the jobs' PATH (sacct.sh, `scontrol show job`).
The node claims 8 CPUs and 64 GB (SlurmdParameters=config_overrides), so conf/hydra/launcher's requests fit.
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

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
NODE = "node1"
HERE = Path(__file__).resolve().parent


class ClusterUnavailable(Exception):
    """Why the cluster cannot start here (tests then skip, saying so; on CI they fail: see must_start)."""


def must_start(environ: dict[str, str] | None = None) -> bool:
    """On CI (CI set, as CI services set it, and not "false" or "0"), where the runner is root with apt-get: a
    cluster that does not start is a failure there, not a reason to skip the Slurm tests."""
    ci = (os.environ if environ is None else environ).get("CI", "")
    return ci.strip().lower() not in ("", "false", "0")


def install() -> None:
    """The Debian packages, if missing (root and apt-get needed)."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if not sys.platform.startswith("linux") or shutil.which("apt-get") is None:
        raise ClusterUnavailable("Slurm's Debian packages need Linux with apt-get")
    if os.geteuid() != 0:
        raise ClusterUnavailable("starting a Slurm cluster needs root (its daemons, munge's key)")
    wait = ["-o", "DPkg::Lock::Timeout=300"]
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", *wait, "update", "-qq"], ["apt-get", *wait, "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(command)} failed: {done.stderr.strip()[-300:]}")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _write_config(state: Path) -> Path:
    controller_port, node_port = _free_ports(2)
    for folder in ("ctld", "spool", "munge"):
        (state / folder).mkdir(parents=True, exist_ok=True)
    (state / "munge").chmod(0o755)  # munged refuses a socket folder others may write to
    conf = state / "slurm.conf"
    conf.write_text(f"""\
ClusterName=fashionlenet
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it runs again (120 s by default)
AuthInfo=socket={state}/munge/munge.socket.2,cred_expire=5
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
SlurmdParameters=config_overrides
NodeName={NODE} NodeAddr=127.0.0.1 CPUs=8 RealMemory=65536 State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _run(command: list[str], env: dict) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    if done.returncode != 0:
        raise ClusterUnavailable(f"{command[0]} failed: {(done.stderr or done.stdout).strip()[-500:]}")


def environment(state: Path) -> dict[str, str]:
    """What a process needs to use the cluster: its config, and sacct's stand-in first on PATH."""
    return {"SLURM_CONF": str(state / "slurm.conf"), "PATH": f"{state / 'bin'}:{os.environ['PATH']}"}


def start(state: Path, timeout: float = 30) -> dict[str, str]:
    """Start munged, slurmctld and slurmd; return once the node takes jobs. Returns `environment(state)`."""
    install()
    state.mkdir(parents=True, exist_ok=True)
    conf = _write_config(state)
    (state / "bin").mkdir(exist_ok=True)
    sacct = state / "bin" / "sacct"
    shutil.copy(HERE / "sacct.sh", sacct)
    sacct.chmod(0o755)
    env = os.environ | environment(state)
    munge = state / "munge"
    _run(["mungekey", "--create", "--force", f"--keyfile={munge / 'munge.key'}"], env)
    _run(["munged", "--force", f"--socket={munge / 'munge.socket.2'}", f"--key-file={munge / 'munge.key'}",
          f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
          f"--seed-file={munge / 'munged.seed'}"], env)  # fmt: skip
    _run(["slurmctld", "-f", str(conf), "-i"], env)  # -i: no state from an earlier cluster
    _run(["slurmd", "-f", str(conf), "-N", NODE], env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=env)
        if shown.stdout.strip() == "idle":
            return environment(state)
        time.sleep(0.5)
    stop(state)
    raise ClusterUnavailable(f"the node did not become idle in {timeout:.0f} s (logs in {state})")


def stop(state: Path) -> None:
    """Cancel every job (a killed slurmd leaves its jobs running), then stop the daemons by their PIDs."""
    env = os.environ | environment(state)
    subprocess.run(["scancel", "--full", "--user=root"], capture_output=True, env=env, timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=env, timeout=30)
        if queued.returncode != 0 or not queued.stdout.strip():
            break
        time.sleep(0.5)
    for pid_file in (state / "slurmd.pid", state / "slurmctld.pid", state / "munge" / "munged.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            pass


if __name__ == "__main__":
    action, folder = sys.argv[1], Path(sys.argv[2]).absolute()
    if action == "start":
        print(f"export SLURM_CONF={start(folder)['SLURM_CONF']} PATH={folder / 'bin'}:$PATH")
    elif action == "stop":
        stop(folder)
    else:
        sys.exit("usage: slurm_cluster.py start|stop STATE_FOLDER")
