"""Bad input on one rank: every rank raises the same error, nothing changes anywhere, nobody hangs."""
import numpy as np
import pytest

from hyperopt import AdamW, HCNaturalGrad

from mpi_test_optimizers import _local_and_mean, _start, assert_same_state


def _snapshot(opt, params):
    return opt.state_dict(), [p.copy() for p in params]


def _unchanged(opt, params, before):
    state, values = before
    assert_same_state(opt.state_dict(), state)
    assert all(np.array_equal(a, b) for a, b in zip(params, values))


def _every_rank_raised(comm, exc, kind):
    """Every rank raised, the same type and message (gathered as text: the check itself agrees)."""
    got = comm.allgather(f"{type(exc).__name__}: {exc}")
    assert len(set(got)) == 1, got
    assert type(exc) is kind


BAD = {
    "nan": (ValueError, "contains NaN or infinity", lambda g: g[2].__setitem__((3, 4), np.nan)),
    "shape": (ValueError, "has shape", lambda g: g.__setitem__(1, np.zeros((3, 5), np.float32))),
    "dtype": (TypeError, "has dtype", lambda g: g.__setitem__(3, np.array(["x"] * 7))),
    "missing": (ValueError, "same ones", lambda g: g.__setitem__(0, None)),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_gradient_on_the_last_rank(bad, comm):
    kind, words, spoil = BAD[bad]
    ps = _start()
    opt = AdamW(ps, lr=0.01, use_gpu=False, comm=comm)
    local, _ = _local_and_mean(0, comm)
    opt.step(gradients=local)
    before = _snapshot(opt, ps)
    local, _ = _local_and_mean(1, comm)
    if comm.rank == comm.size - 1:
        spoil(local)
    with pytest.raises(kind, match=words) as info:
        opt.step(gradients=local)
    _every_rank_raised(comm, info.value, kind)
    if comm.size > 1:
        assert str(info.value).startswith(f"rank {comm.size - 1}:") or "rank 0 has gradients" in str(info.value)
    _unchanged(opt, ps, before)
    local, _ = _local_and_mean(1, comm)
    opt.step(gradients=local)        # the next good step runs: no rank was left in a collective


@pytest.mark.timeout(120)
def test_branches_must_agree(comm):
    ps = _start()
    opt = HCNaturalGrad(ps, lr=0.05, use_gpu=False, comm=comm)
    local, _ = _local_and_mean(0, comm)
    B = np.arange(12.0).reshape(4, 3)
    opt.step(gradients=local, branches=B)
    before = _snapshot(opt, ps)
    if comm.size > 1:
        mine = B + (comm.rank == 1)
        with pytest.raises(ValueError, match="every rank must share") as info:
            opt.step(gradients=local, branches=mine)
        _every_rank_raised(comm, info.value, ValueError)
        _unchanged(opt, ps, before)
    bad = B.copy()
    if comm.rank == 0:
        bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity") as info:
        opt.step(gradients=local, branches=bad)
    _every_rank_raised(comm, info.value, ValueError)
    _unchanged(opt, ps, before)


@pytest.mark.timeout(60)
def test_different_parameters_are_refused_on_every_rank(comm):
    if comm.size == 1:
        pytest.skip("needs two ranks")
    shapes = [(4, 3), (5,)] if comm.rank == 0 else [(4, 3), (6,)]
    with pytest.raises(ValueError, match="different parameters") as info:
        AdamW([np.zeros(s, np.float32) for s in shapes], use_gpu=False, comm=comm)
    _every_rank_raised(comm, info.value, ValueError)


@pytest.mark.timeout(60)
def test_a_strided_parameter_on_one_rank_is_refused_on_every_rank(comm):
    base = np.zeros((6, 4), np.float32)
    p = base[:, ::2] if comm.rank == comm.size - 1 else np.zeros((6, 2), np.float32)
    with pytest.raises(ValueError, match="not C-contiguous") as info:
        AdamW([p], use_gpu=False, comm=comm)
    _every_rank_raised(comm, info.value, ValueError)
