"""The distributed layer's pieces in one process: the rank mean, the block layout, comm=COMM_SELF,
Vulkan under comm=COMM_SELF, and a launch of tests/mpi under ``mpiexec -n 2`` (the full MPI runs with 2 and
4 ranks are .ci/mpi)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hyperopt import AdamW
from hyperopt.backends.numpy_backend import CHUNK
from hyperopt.distributed import Layout, rank_mean

ROOT = Path(__file__).resolve().parent.parent


def test_rank_mean_is_pairwise_in_rank_order():
    x = [np.float32(v) for v in (1e8, 1.0, -1e8, 1.0)]
    # (x0 + x1) + (x2 + x3): 1e8 + 1 rounds to 1e8 in float32, and so does -1e8 + 1
    assert rank_mean(x) == np.float32(0.0)
    assert rank_mean(x[::-1]) == np.float32(0.0)
    g = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    for n in (1, 2, 4, 8):
        assert np.array_equal(rank_mean([g] * n), g)      # equal inputs: exact for powers of two
    assert rank_mean([g, g, g]).dtype == np.float32


@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 7])
def test_layout_cuts_at_blocks_and_covers_everything_once(ranks):
    arrays = [np.zeros(n, np.float32) for n in (3 * CHUNK + 5, 10, 0, CHUNK, 2 * CHUNK - 1)]
    layout = Layout(arrays, ranks)
    seen = [np.zeros(a.size, int) for a in arrays]
    for pieces in layout.pieces:
        for i, a, b in pieces:
            assert a % CHUNK == 0 and (b % CHUNK == 0 or b == arrays[i].size) and a < b
            seen[i][a:b] += 1
    assert all((s == 1).all() for s in seen)
    assert list(layout.first) == sorted(layout.first) and layout.first[-1] == len(layout.block_segment)
    # balanced: no rank holds more than its share plus one block
    assert max(layout.elements) <= sum(a.size for a in arrays) / ranks + CHUNK


def test_segment_totals_add_block_partials_in_block_order():
    from hyperopt.kernels.core import segment_totals
    partials = np.array([[1e16], [1.0], [-1e16], [5.0], [2.0]])
    out = segment_totals(partials, [(0, 3), (3, 0), (3, 2)])
    assert out[:, 0].tolist() == [((0.0 + 1e16) + 1.0) - 1e16, 0.0, 7.0]


def test_comm_self_is_the_single_process_optimizer():
    MPI = pytest.importorskip("mpi4py.MPI")
    rng = np.random.default_rng(1)
    shapes = [(CHUNK + 7,), (4, 3)]
    a = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    b = [p.copy() for p in a]
    dist = AdamW(a, lr=0.01, use_gpu=False, comm=MPI.COMM_SELF)
    single = AdamW(b, lr=0.01, use_gpu=False)
    for _ in range(3):
        g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        dist.step(gradients=g)
        single.step(gradients=g)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(dist.state_of(a[0])["exp_avg_sq"], single.state_of(b[0])["exp_avg_sq"])


def test_vulkan_with_comm_self_is_the_single_process_vulkan_optimizer(vulkan_device):
    """comm= on a Vulkan device: the rank's shard runs the shaders, and with one rank the step is the
    single-process Vulkan optimizer's, bit for bit (HIOptimizer: sums over three blocks feed a
    control kernel on the device)."""
    MPI = pytest.importorskip("mpi4py.MPI")
    from hyperopt import HIOptimizer
    rng = np.random.default_rng(2)
    shapes = [(2 * CHUNK + 7,), (4, 3)]
    a = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    b = [p.copy() for p in a]
    dist = HIOptimizer(a, lr=0.01, grad_clip=0.5, device=vulkan_device, comm=MPI.COMM_SELF)
    single = HIOptimizer(b, lr=0.01, grad_clip=0.5, device=vulkan_device)
    assert dist.backend == single.backend and dist.backend.startswith("vulkan:")
    for _ in range(3):
        g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        dist.step(gradients=g)
        single.step(gradients=g)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for x, y in zip(a, b):
        for name, value in single.state_of(y).items():
            assert np.array_equal(dist.state_of(x)[name], value), name
    p = np.zeros(5, np.float32)
    cpu = AdamW([p.copy()], use_gpu=False).backend                 # "numba" or "numpy"
    assert AdamW([p], use_gpu="auto", comm=MPI.COMM_SELF).backend == cpu   # auto: the CPU path's kernels


@pytest.mark.timeout(320)
def test_mpi_agreement_tests_under_two_ranks():
    pytest.importorskip("mpi4py")
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests" / "mpi")]), HYPEROPT_NUMPY_THREADS="1")
    env.pop("HYPEROPT_REQUIRE_VULKAN", None)
    done = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "mpi_plugin",
                           "-o", "python_files=mpi_test_*.py", "tests/mpi/mpi_test_agreement.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "7 passed" in done.stdout
