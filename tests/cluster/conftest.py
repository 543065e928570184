"""The cluster tests' Slurm (``slurm_cluster``): started once for the session, where the tests
run as root and the packages are installed or apt-get can install them, and only when asked
for (``make test-cluster`` sets BURN_TEST_SLURM=1); stopped, every daemon, at the end."""

import os
import shutil

import pytest

from slurm_cluster import PACKAGES, install, missing, start_cluster, unavailable

WANTED = "BURN_TEST_SLURM"


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.environ.get(WANTED) != "1":
        pytest.skip(f"the real-Slurm tests run with `make test-cluster` ({WANTED}=1): they "
                    f"install {' '.join(PACKAGES)} with apt-get and start daemons as root")
    why = unavailable()
    if why:
        pytest.skip(f"no one-node Slurm here: {why}")
    if missing():
        print(f"\ninstalling {' '.join(PACKAGES)}: {install():.0f} s")
    cluster = start_cluster()
    print(f"\nslurm {cluster.version} up in {cluster.started_s:.1f} s under {cluster.root}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def slurm(slurm_cluster, monkeypatch):
    """The session's cluster, its clients on PATH and SLURM_CONF set for this test (and for
    the jobs it submits, which inherit the environment)."""
    for key in ("PATH", "SLURM_CONF"):
        monkeypatch.setenv(key, slurm_cluster.env[key])
    yield slurm_cluster
    slurm_cluster.run("scancel", "--full", "-u", "root", check=False)  # none outlives its test

