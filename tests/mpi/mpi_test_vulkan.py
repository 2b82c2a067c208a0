"""Every optimizer under comm= on a Vulkan device: the bits of the single-process Vulkan optimizer.

Each rank runs its shard's kernels on the device (lavapipe in CI); the
device's per-segment sums are per-block partials (blocks of ``CHUNK`` elements from each segment's
start) totalled on the host, so a rank holding some of a segment's blocks produces exactly the
partials one process would.  The first shape spans three blocks, so shards split inside it (and with
4 ranks one rank holds nothing at all).  Kept small: 4 ranks of lavapipe share the CI's two cores.

The device is HYPEROPT_TEST_DEVICE (default "vulkan:cpu"), as for tests/conftest.py.  Skipped, on
every rank, where it does not open on every rank, unless HYPEROPT_REQUIRE_VULKAN=1 (as in CI).
"""
import os

import numpy as np
import pytest

import hyperopt
from hyperopt import AdamW, HIOptimizer
from hyperopt.backends.numpy_backend import CHUNK

from mpi_test_agreement import BAD, _every_rank_raised, _snapshot, _unchanged
from mpi_test_optimizers import CASES, _local_and_mean, _start, assert_resumes_in_fewer_ranks, assert_same_state

DEVICE = os.environ.get("HYPEROPT_TEST_DEVICE", "vulkan:cpu")      # as tests/conftest.py
SHAPES = [(2 * CHUNK + 3000,), (5, 3), (120, 70), (7,)]
STEPS = 3


@pytest.fixture
def vulkan_device(comm):
    """The device name, once every rank has opened it; else a skip (or a failure) on every rank."""
    from hyperopt.backends import select_backend
    try:
        select_backend(True, DEVICE).close()
        why = ""
    except Exception as exc:     # no loader, no such device: the same on every rank of a machine
        why = f"{type(exc).__name__}: {exc}"
    whys = [w for w in comm.allgather(why) if w]
    if whys:
        if os.environ.get("HYPEROPT_REQUIRE_VULKAN") == "1":
            pytest.fail(f"HYPEROPT_REQUIRE_VULKAN=1 but {DEVICE} did not open: {whys[0]}")
        pytest.skip(f"no Vulkan device {DEVICE} on every rank ({whys[0]})")
    return DEVICE


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", sorted(CASES) + ["adamw_float64"])
def test_same_bits_as_one_vulkan_process(case, vulkan_device, comm):
    dtype = np.float64 if case.endswith("float64") else np.float32
    make = CASES[case.removesuffix("_float64")]
    mine, ref = _start(SHAPES, dtype), _start(SHAPES, dtype)
    dist = make(mine, device=vulkan_device, comm=comm)
    single = make(ref, device=vulkan_device)
    assert dist.backend == single.backend and dist.backend.startswith("vulkan:")
    for t in range(STEPS):
        local, mean = _local_and_mean(t, comm, SHAPES)
        dist.step(gradients=[g.astype(dtype) for g in local])
        single.step(gradients=[g.astype(dtype) for g in mean])
        for k, (a, b) in enumerate(zip(mine, ref)):
            assert np.array_equal(a, b), f"parameter {k} after step {t + 1}"
    assert_same_state(dist.state_dict(), single.state_dict())
    backend = dist._backend          # the device holds this rank's pieces only
    assert int(backend.engine.sizes.sum()) == backend.layout.elements[comm.rank]
    dist.close()
    single.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bad", ["nan", "shape"])
def test_bad_gradient_on_the_last_rank(bad, vulkan_device, comm):
    kind, words, spoil = BAD[bad]
    ps = _start(SHAPES)
    opt = HIOptimizer(ps, lr=0.01, device=vulkan_device, comm=comm)
    local, _ = _local_and_mean(0, comm, SHAPES)
    opt.step(gradients=local)
    before = _snapshot(opt, ps)
    local, _ = _local_and_mean(1, comm, SHAPES)
    if comm.rank == comm.size - 1:
        spoil(local)
    with pytest.raises(kind, match=words) as info:
        opt.step(gradients=local)
    _every_rank_raised(comm, info.value, kind)
    _unchanged(opt, ps, before)
    local, _ = _local_and_mean(1, comm, SHAPES)
    opt.step(gradients=local)        # the next good step runs: no rank was left in a collective
    opt.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shards", [False, True], ids=["consolidated", "shards"])
def test_checkpoint_round_trip(shards, vulkan_device, comm, tmp_path):
    """hyperopt.save of a Vulkan run under comm (one file, or a shard set), loaded by half of the
    ranks on Vulkan and by one process on Vulkan: both continue as the single-process Vulkan
    optimizer does."""
    path = comm.bcast(str(tmp_path / "adamw.ckpt") if comm.rank == 0 else None, root=0)
    ps, ref = _start(SHAPES), _start(SHAPES)
    world = AdamW(ps, lr=0.01, amsgrad=True, device=vulkan_device, comm=comm)
    single = AdamW(ref, lr=0.01, amsgrad=True, device=vulkan_device)
    for t in range(2):
        local, mean = _local_and_mean(t, comm, SHAPES)
        world.step(gradients=local)
        single.step(gradients=mean)
    hyperopt.save(world, path, include_params=True, shards=shards)
    assert_same_state(world.state_dict(), single.state_dict())
    comm.Barrier()
    assert_resumes_in_fewer_ranks(comm, path, ps, ref, single,
                                  lambda p, c: AdamW(p, lr=0.01, amsgrad=True, device=vulkan_device, comm=c),
                                  lambda t: _local_and_mean(t, comm, SHAPES)[1])


@pytest.mark.no_launch      # checks backend selection: no kernel runs
@pytest.mark.timeout(60)
def test_ranks_on_different_kinds_of_backend_are_refused_on_every_rank(vulkan_device, comm):
    if comm.size < 2:
        pytest.skip("needs two ranks")
    ps = _start(SHAPES)
    kw = dict(device=vulkan_device) if comm.rank == 0 else dict(use_gpu=False)
    with pytest.raises(ValueError, match="same kind of backend") as info:
        AdamW(ps, lr=0.01, comm=comm, **kw)
    _every_rank_raised(comm, info.value, ValueError)
    AdamW(ps, lr=0.01, device=vulkan_device, comm=comm).close()     # no rank was left in a collective
