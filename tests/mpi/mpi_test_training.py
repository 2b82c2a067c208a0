"""A short data-parallel training run, and checkpoints that load with any number of ranks."""
import numpy as np
import pytest

from benchmarks.train_mpi import run
from hyperopt import AdamW, HIOptimizer

from mpi_test_optimizers import SHAPES, _dyadic, _start, assert_resumes_in_fewer_ranks, assert_same_state


@pytest.mark.timeout(300)
@pytest.mark.parametrize("optimizer", ["AdamW", "HIOptimizer"])
def test_training_matches_one_process(optimizer, comm):
    losses, acc, checksum, _ = run("moons", optimizer, epochs=15, comm=comm)
    e_losses, e_acc, e_checksum, _ = run("moons", optimizer, epochs=15, emulate=comm.size)
    assert checksum == e_checksum and acc == e_acc        # the emulation computes the same mean
    _, one_acc, _, _ = run("moons", optimizer, epochs=15)  # whole batches in one process
    assert acc > 0.9 and abs(acc - one_acc) <= 0.02, (acc, one_acc)


def _same_grads(t):
    rng = np.random.default_rng(200 + t)
    return [_dyadic(rng, s, 2.0 ** -10) for s in SHAPES]     # equal on every rank: the mean is exact


@pytest.mark.timeout(180)
@pytest.mark.parametrize("make", [lambda ps, **k: AdamW(ps, lr=0.01, amsgrad=True, **k),
                                  lambda ps, **k: HIOptimizer([{"params": ps[:2]}, {"params": ps[2:]}], **k)],
                         ids=["adamw", "hysterograd"])
def test_checkpoint_loads_with_another_rank_count(make, comm):
    """state_dict() of the world, loaded by half of it (and by one process), continues identically."""
    ps, ref = _start(), _start()
    world = make(ps, use_gpu=False, comm=comm)
    single = make(ref, use_gpu=False)
    for t in range(2):
        world.step(gradients=_same_grads(t))
        single.step(gradients=_same_grads(t))
    saved = world.state_dict()                             # collective: the full state on every rank
    assert_same_state(saved, single.state_dict())
    half = comm.Split(color=comm.rank % 2, key=comm.rank)  # size // 2 ranks each (or 1)
    resumed = [p.copy() for p in ps]
    other = make(resumed, use_gpu=False, comm=half)
    other.load_state_dict(saved)                           # each rank keeps its shard of the new layout
    assert other._backend.ranks == max(1, comm.size // 2)
    for t in range(2, 4):
        other.step(gradients=_same_grads(t))
        single.step(gradients=_same_grads(t))
        assert all(np.array_equal(a, b) for a, b in zip(resumed, ref))
    assert_same_state(other.state_dict(), single.state_dict())
    # and the other way: a one-process state dict loaded by every rank
    world.load_state_dict(single.state_dict())
    for p, q in zip(ps, ref):
        p[...] = q
    world.step(gradients=_same_grads(9))
    single.step(gradients=_same_grads(9))
    assert all(np.array_equal(a, b) for a, b in zip(ps, ref))
    half.Free()


@pytest.mark.timeout(180)
def test_save_and_load_a_file_with_another_rank_count(comm, tmp_path):
    """hyperopt.save by every rank (rank 0 writes one consolidated file), hyperopt.load by half of
    them and by one process: all continue as the single-process optimizer does."""
    import hyperopt
    path = comm.bcast(str(tmp_path / "adamw.ckpt") if comm.rank == 0 else None, root=0)
    ps, ref = _start(), _start()
    world = AdamW(ps, lr=0.01, amsgrad=True, use_gpu=False, comm=comm)
    single = AdamW(ref, lr=0.01, amsgrad=True, use_gpu=False)
    for t in range(2):
        world.step(gradients=_same_grads(t))
        single.step(gradients=_same_grads(t))
    hyperopt.save(world, path, include_params=True)
    comm.Barrier()
    assert_resumes_in_fewer_ranks(comm, path, ps, ref, single,
                                  lambda p, c: AdamW(p, lr=0.01, amsgrad=True, use_gpu=False, comm=c), _same_grads)
    # a file that is missing on every rank: every rank raises, nobody waits
    with pytest.raises(FileNotFoundError, match="rank 0:" if comm.size > 1 else ""):
        hyperopt.load(world, path + ".missing")
