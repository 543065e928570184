"""A one-node Slurm with accounting, in a temporary folder, from Debian's packages (``slurm-wlm``,
``slurmdbd``, ``mariadb-server``, ``munge``): the cluster of ``tests/cluster``.

Every daemon has its own config, state, socket, pid file, log and port under the folder:
``munged`` (as the munge user, key 0400), MariaDB (its own data directory), ``slurmdbd``,
``slurmctld`` and ``slurmd``, each in the foreground as a child of this process, in its own
session, so ``Cluster.stop`` ends them all (jobs first). Nothing of the system's own
configuration (``/etc/slurm``, ``/etc/munge``, ``/run``) is read or written. Clients find the
cluster through ``SLURM_CONF`` (``Cluster.env``), and the jobs they submit inherit it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "slurmdbd", "mariadb-server", "munge")
DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd")
# the states a job ends in (sacct's names); any other is still moving
FINAL_STATES = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                          "PREEMPTED", "BOOT_FAIL", "DEADLINE"})
CLIENTS = ("sbatch", "sacct", "sacctmgr", "scancel", "squeue", "sinfo", "scontrol", "mariadb")
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
CLUSTER = "burntest"
CPUS = 4  # the node's CPUs as Slurm sees them (config_overrides: more jobs at once than cores)
READY_S = 60  # a daemon that is not ready by then fails the fixture with its log


def _which(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def unavailable() -> str | None:
    """Why this machine cannot run the cluster (None: it can, maybe after ``install``)."""
    if not sys.platform.startswith("linux"):
        return f"a Slurm of Debian's packages needs Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "the cluster's daemons start as root (munged as munge, MariaDB as mysql)"
    if missing() and not _which("apt-get"):
        return f"{', '.join(missing())} missing and no apt-get to install {' '.join(PACKAGES)}"
    return None


def missing() -> list[str]:
    return [b for b in DAEMONS + CLIENTS if _which(b) is None]


def install() -> float:
    """``apt-get install`` the packages (without starting their services: Debian's
    ``policy-rc.d`` or no init system); returns the seconds it took. Raises with apt's output
    when it fails."""
    t0 = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": SBIN_PATH}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                               f"\n{done.stderr[-2000:]}")
    return time.monotonic() - t0


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now (the kernel's choice, so two clusters on
    one machine do not collide)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def slurm_conf(root: Path, host: str, ports: dict[str, int]) -> str:
    """slurm.conf of one node (``host`` at 127.0.0.1) with ``CPUS`` CPUs and no GPU,
    accounting through slurmdbd, no cgroups."""
    return f"""ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ports['slurmctld']}
SlurmdPort={ports['slurmd']}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports['slurmdbd']}
AccountingStoragePass={root}/munge/munge.socket
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
KillWait=2
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def slurmdbd_conf(root: Path, ports: dict[str, int]) -> str:
    return f"""AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort={ports['slurmdbd']}
SlurmUser=root
PidFile={root}/run/slurmdbd.pid
LogFile={root}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports['mysql']}
StorageUser=slurm
StoragePass=burn
StorageLoc=slurm_acct_db
"""


class Cluster:
    """The daemons of one cluster under ``root``; ``env``: what a client needs (``SLURM_CONF``)."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.env = {**os.environ, "PATH": SBIN_PATH, "SLURM_CONF": str(root / "etc" / "slurm.conf")}
        self.started_s = 0.0
        self.version = ""

    def log(self, name: str) -> Path:
        """The daemon's own log (MariaDB's beside its data: only the mysql user writes there)."""
        return self.root / ("mysql" if name == "mariadbd" else "log") / f"{name}.log"

    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, **kw)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def _spawn(self, name: str, cmd: list[str], **kw) -> None:
        out = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        out.close()
        self.procs.append((name, proc))

    def _wait(self, name: str, ready, timeout: float = READY_S) -> None:
        """Poll ``ready()`` until true; raise with the daemon's log if it exits or times out."""
        proc = dict(self.procs).get(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            try:
                if ready():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.2)
        tail = "".join(p.read_text(errors="replace")[-3000:] for p in
                       (self.log(name), self.root / "log" / f"{name}.out") if p.is_file())
        why = f"exited ({proc.returncode})" if proc is not None and proc.poll() is not None \
            else f"not ready in {timeout:.0f} s"
        raise RuntimeError(f"{name} {why}; its log:\n{tail}")

    def _ok(self, *cmd: str) -> bool:
        return self.run(*cmd, check=False, timeout=20).returncode == 0

    def jobs(self) -> list[str]:
        """The ids of the jobs queued or running."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def wait_idle(self, timeout: float = 240) -> float:
        """Seconds until no job is queued or running; raises after ``timeout``."""
        t0 = time.monotonic()
        while self.jobs():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"jobs still queued after {timeout} s:\n"
                                   + self.run("squeue", "-o", "%i %T %r").stdout)
            time.sleep(0.5)
        return time.monotonic() - t0

    def states(self, job_ids, timeout: float = 60) -> dict[str, str]:
        """``sacct``'s final state of each task of ``job_ids`` (array tasks one by one). The
        accounting daemon records a job's end after ``squeue`` stops listing it, so this reads
        again until no task is pending or running; raises after ``timeout``."""
        jobs = {str(j).split("_")[0] for j in job_ids}
        t0 = time.monotonic()
        while True:
            states = self._sacct_states(jobs)
            seen = {k.split("_")[0] for k in states}
            if seen >= jobs and FINAL_STATES.issuperset(states.values()):
                return states
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"job states not final after {timeout} s: {states}")
            time.sleep(0.5)

    def _sacct_states(self, jobs: set[str]) -> dict[str, str]:
        out = self.run("sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(sorted(jobs))).stdout
        states = {}
        for line in out.splitlines():
            job, state = line.split("|")[0], line.split("|")[1].split()[0]
            array, _, tasks = job.partition("_[")  # tasks never started: 12_[0-3,5]
            for task in _task_ids(tasks.rstrip("]")) if tasks else [None]:
                states[job if task is None else f"{array}_{task}"] = state
        return states

    # -------------------------------------------------------------------------- the daemons
    def _munge(self) -> None:
        d = self.root / "munge"
        d.mkdir()
        d.chmod(0o711)  # munged: clients need to reach its socket, not list the key
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        for p in (d, key):
            shutil.chown(p, "munge", "munge")
        key.chmod(0o400)
        self._spawn("munged", [_which("munged"), "--foreground", f"--socket={d}/munge.socket",
                               f"--key-file={key}", f"--pid-file={d}/munged.pid",
                               f"--log-file={self.log('munged')}", f"--seed-file={d}/munged.seed"],
                    user="munge", group="munge", extra_groups=[])
        self.log("munged").touch()
        self._wait("munged", lambda: (d / "munge.socket").exists() and self._ok(
            "sh", "-c", f"munge -n --socket={d}/munge.socket | unmunge --socket={d}/munge.socket"))

    def _mariadb(self, port: int) -> None:
        home = self.root / "mysql"  # the mysql user's: data, socket, pid file and log
        data, sock = home / "data", home / "mysql.sock"
        for d in (home, data):
            d.mkdir()
            shutil.chown(d, "mysql", "mysql")
        self.run(_which("mariadb-install-db"), "--no-defaults", "--user=mysql", f"--datadir={data}",
                 "--auth-root-authentication-method=socket", "--skip-test-db", timeout=120)
        self._spawn("mariadbd", [_which("mariadbd"), "--no-defaults", "--user=mysql",
                                 f"--datadir={data}", f"--socket={sock}", f"--port={port}",
                                 "--bind-address=127.0.0.1", "--skip-name-resolve",
                                 f"--pid-file={home}/mariadbd.pid",
                                 f"--log-error={self.log('mariadbd')}", "--innodb-buffer-pool-size=32M"])
        self._wait("mariadbd", lambda: self._ok("mariadb-admin", "--no-defaults", f"--socket={sock}",
                                                "-u", "root", "ping"))
        self.run("mariadb", "--no-defaults", f"--socket={sock}", "-u", "root", "-e",
                 "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'burn'; "
                 "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")

    def _slurm(self, host: str) -> None:
        self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
        self._wait("slurmdbd", lambda: self._ok("sacctmgr", "-n", "list", "cluster"))
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER)
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", self.env["SLURM_CONF"]])
        self._wait("slurmctld", lambda: self._ok("scontrol", "ping"))
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", host, "-f", self.env["SLURM_CONF"]])
        self._wait("slurmd", lambda: self.run("sinfo", "-h", "-o", "%t", check=False,
                                               timeout=20).stdout.strip() == "idle")

    def start(self) -> "Cluster":
        """Write the configs and start the daemons, each once the one it needs is ready."""
        t0 = time.monotonic()
        self.root.chmod(0o755)  # munged and mariadbd run as their users and must reach it
        for d in ("etc", "state", "spool", "run", "log"):
            (self.root / d).mkdir()
        ports = dict(zip(("slurmctld", "slurmd", "slurmdbd", "mysql"), free_ports(4)))
        host = socket.gethostname().split(".")[0]
        etc = self.root / "etc"
        (etc / "slurm.conf").write_text(slurm_conf(self.root, host, ports))
        (etc / "slurmdbd.conf").write_text(slurmdbd_conf(self.root, ports))
        (etc / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a conf others can read
        try:
            self._munge()
            self._mariadb(ports["mysql"])
            self._slurm(host)
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - t0
        self.version = self.run("sinfo", "--version").stdout.split()[-1]
        return self

    def stop(self) -> None:
        """Cancel every job, wait for the node to empty, then end the daemons in reverse
        order (SIGTERM, SIGKILL after 20 s), each with its session."""
        if any(n == "slurmctld" and p.poll() is None for n, p in self.procs):
            self.run("scancel", "--full", "-u", "root", check=False, timeout=20)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.run(
                    "squeue", "-h", "-o", "%i", check=False, timeout=20).stdout.strip():
                time.sleep(0.5)
        for name, proc in reversed(self.procs):
            _end(proc)
        self.procs.clear()


def _task_ids(spec: str) -> list[int]:
    """``0-3,5%2`` -> [0, 1, 2, 3, 5]."""
    out = []
    for part in spec.split("%")[0].split(","):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


def _end(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def start_cluster() -> Cluster:
    """A cluster in a new folder under the system's temporary directory (not pytest's, which
    the munge and mysql users cannot enter)."""
    return Cluster(Path(tempfile.mkdtemp(prefix="burn-slurm-"))).start()
