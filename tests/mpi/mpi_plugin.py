"""The pytest plugin of tests/mpi, run as ``mpiexec -n N python -m pytest -p mpi_plugin tests/mpi`` with
tests/mpi on PYTHONPATH (see .ci/mpi).  Not a conftest.py: plain pytest never collects these tests
(their files are named mpi_test_*.py), and a second ``conftest`` module would shadow tests/conftest.py.

Every rank runs every test in the same order; a failure on any rank aborts the whole job
(``MPI_Abort``), so a rank never waits for a partner that has left a collective.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))                 # benchmarks.*


def _world():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def pytest_configure(config):
    # the rank from the launcher's environment (MPICH's PMI, Open MPI): MPI is not started for this
    rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "0"
    if rank != "0":                           # one report, from rank 0
        config.option.verbose = -2
        config.option.reportchars = ""


def pytest_collectreport(report):
    pytest_runtest_logreport(report)


def pytest_runtest_logreport(report):
    if report.failed:
        comm = _world()
        sys.stderr.write(f"\n[rank {comm.rank} of {comm.size}] {report.nodeid} failed ({getattr(report, 'when', 'collect')}):\n"
                         f"{report.longreprtext}\n")
        sys.stderr.flush()
        comm.Abort(1)


@pytest.fixture
def comm():
    return _world()


@pytest.fixture
def rank(comm):
    return comm.rank
