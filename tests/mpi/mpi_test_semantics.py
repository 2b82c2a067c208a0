"""The core step semantics under comm=: the caller's arrays are the truth on every rank (in-place
edits, rebound ``.data``, a replaced entry of ``param_groups``), and a step refused on one rank by
any of the checks that run before the gradients move (step arguments, hyperparameters, rebinding,
``h_grad``, a new group) raises the same error on every rank with nothing changed anywhere."""
import numpy as np
import pytest

from hyperopt import AdamW, HL, AutoSGM

from mpi_test_agreement import _every_rank_raised, _snapshot, _unchanged
from mpi_test_optimizers import CASES, SHAPES, _local_and_mean, _start, assert_same_state


class Param:
    """A torch-like parameter: ``.data`` and ``.grad``."""

    def __init__(self, data):
        self.data, self.grad = data, None


def _edit(ps, k):
    """The same in-place edits on every rank (and on the single-process reference)."""
    ps[0][: 1000 + k] *= np.float32(0.5)
    ps[2][3, :] = np.float32(0.25 * k)
    np.clip(ps[1], -0.5, 0.5, out=ps[1])


def _adamw_after_one_step(ps, comm):
    """AdamW over ``ps`` under ``comm``, after one step with each rank's part of gradient 0."""
    opt = AdamW(ps, lr=0.01, use_gpu=False, comm=comm)
    opt.step(gradients=_local_and_mean(0, comm)[0])
    return opt


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", ["adamw", "autosgm", "hysterograd_groups_clip", "natural_grad_branches", "hl"])
def test_in_place_edits_between_steps_are_seen(case, comm):
    mine, ref = _start(), _start()
    dist = CASES[case](mine, use_gpu=False, comm=comm)
    one = CASES[case](ref, use_gpu=False)
    for k in range(3):
        local, mean = _local_and_mean(k, comm)
        dist.step(gradients=local)
        one.step(gradients=mean)
        _edit(mine, k)
        _edit(ref, k)
    local, mean = _local_and_mean(3, comm)
    dist.step(gradients=local)
    one.step(gradients=mean)
    for a, b in zip(mine, ref):
        assert np.array_equal(a, b)
    assert_same_state(dist.state_dict(), one.state_dict())


@pytest.mark.timeout(300)
def test_rebound_data_and_replaced_entries_keep_state(comm):
    mine = [Param(a) for a in _start()]
    ref = [Param(a) for a in _start()]
    dist = AdamW(mine, lr=0.01, use_gpu=False, comm=comm)
    one = AdamW(ref, lr=0.01, use_gpu=False)
    for k in range(4):
        local, mean = _local_and_mean(k, comm)
        for p, g in zip(mine, local):
            p.grad = g
        for p, g in zip(ref, mean):
            p.grad = g
        dist.step()
        one.step()
        if k == 1:                               # .data rebinding: a fresh array, the same values
            for ps in (mine, ref):
                ps[2].data = ps[2].data.copy() + np.float32(0.125)
        if k == 2:                               # a replaced entry of param_groups
            for opt, ps in ((dist, mine), (one, ref)):
                ps[0] = Param(ps[0].data.copy())
                opt.param_groups[0]["params"][0] = ps[0]
    for a, b in zip(mine, ref):
        assert np.array_equal(a.data, b.data)
    assert_same_state(dist.state_dict(), one.state_dict())
    every = comm.allgather(mine[2].data.tobytes())
    assert len(set(every)) == 1                  # the rebound array is updated alike on every rank


@pytest.mark.timeout(300)
def test_zero_dimensional_parameters(comm):
    shapes = SHAPES + [()]
    mine, ref = _start(shapes), _start(shapes)
    dist = AdamW(mine, lr=0.01, use_gpu=False, comm=comm)
    one = AdamW(ref, lr=0.01, use_gpu=False)
    for k in range(3):
        local, mean = _local_and_mean(k, comm, shapes)
        dist.step(gradients=local)
        one.step(gradients=mean)
    for a, b in zip(mine, ref):
        assert np.array_equal(a, b)
    assert_same_state(dist.state_dict(), one.state_dict())


def _last(comm):
    return comm.rank == comm.size - 1


def _refused_everywhere(comm, opt, params, kind, words, act, restore=None, before=None):
    """``act()`` (with the last rank's input spoilt) is refused on every rank with nothing changed
    (``before``: the snapshot taken before spoiling); after ``restore()`` the next good step runs."""
    before = before or _snapshot(opt, params)
    with pytest.raises(kind, match=words) as info:
        act()
    _every_rank_raised(comm, info.value, kind)
    if comm.size > 1:
        assert str(info.value).startswith(f"rank {comm.size - 1}:")
    if restore is not None:
        restore()
    _unchanged(opt, params, before)
    local, _ = _local_and_mean(5, comm)
    opt.step(gradients=local)                    # no rank was left waiting in a collective


@pytest.mark.timeout(120)
def test_a_list_in_the_closure_slot_on_one_rank(comm):
    ps = _start()
    opt = _adamw_after_one_step(ps, comm)
    local, _ = _local_and_mean(1, comm)
    _refused_everywhere(comm, opt, ps, TypeError, "where the closure goes",
                        lambda: opt.step(local) if _last(comm) else opt.step(gradients=local))


@pytest.mark.timeout(120)
def test_a_bad_hyperparameter_on_one_rank(comm):
    ps = _start()
    opt = _adamw_after_one_step(ps, comm)
    before = _snapshot(opt, ps)
    if _last(comm):
        opt.param_groups[0]["lr"] = -1.0

    def restore():
        opt.param_groups[0]["lr"] = 0.01
    local, _ = _local_and_mean(1, comm)
    _refused_everywhere(comm, opt, ps, ValueError, "Invalid learning rate", lambda: opt.step(gradients=local), restore,
                        before)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["shape", "dtype", "strided"])
def test_a_bad_rebinding_on_one_rank(how, comm):
    ps = [Param(a) for a in _start()]
    opt = _adamw_after_one_step(ps, comm)
    good = ps[2].data
    if _last(comm):
        ps[2].data = {"shape": lambda: np.zeros((700, 400), np.float32),
                      "dtype": lambda: good.astype(np.float64),
                      "strided": lambda: np.zeros((400, 1400), np.float32)[:, ::2]}[how]()
    words = {"shape": "was rebound to an array of shape", "dtype": "was rebound to an array of shape",
             "strided": "not C-contiguous"}[how]

    def restore():
        ps[2].data = good
    local, _ = _local_and_mean(1, comm)
    arrays = [p.data for p in ps]
    arrays[2] = good                             # what every rank must still hold afterwards
    _refused_everywhere(comm, opt, arrays, ValueError, words, lambda: opt.step(gradients=local), restore)


@pytest.mark.timeout(120)
def test_a_bad_h_grad_on_one_rank(comm):
    ps = _start()
    opt = HL.for_params(ps, use_gpu=False, comm=comm)
    local, _ = _local_and_mean(0, comm)
    opt.step(gradients=local)
    before = _snapshot(opt, ps)
    costate = opt.neuron_costate()
    h = np.full(opt._xi_costates[0].shape, np.nan if _last(comm) else 0.0)
    local, _ = _local_and_mean(1, comm)
    with pytest.raises(ValueError, match="h_grad of group 0") as info:
        opt.step(gradients=local, h_grad=h)
    _every_rank_raised(comm, info.value, ValueError)
    _unchanged(opt, ps, before)
    assert np.array_equal(opt.neuron_costate(), costate)
    opt.step(gradients=local)


@pytest.mark.timeout(120)
def test_a_bad_new_group_on_one_rank(comm):
    ps = _start()
    opt = AutoSGM(ps[:3], use_gpu=False, comm=comm)
    extra = np.ones((5, 6), np.float32)
    bad = {"params": [ps[0][:10]]} if _last(comm) else {"params": [extra]}   # aliases parameter 0
    with pytest.raises(ValueError, match="share memory") as info:
        opt.add_param_group(bad)
    _every_rank_raised(comm, info.value, ValueError)
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [extra]})
    assert len(opt.param_groups) == 2 and len(opt.params()) == 4


@pytest.mark.timeout(120)
def test_a_step_refused_after_the_exchange_changes_nothing_anywhere(comm):
    """A hyperparameter beyond float32: refused by the scalar tables, on every rank alike."""
    ps = _start()
    opt = _adamw_after_one_step(ps, comm)
    before = _snapshot(opt, ps)
    opt.param_groups[0]["eps"] = 1e300           # a valid float, not a float32
    local, _ = _local_and_mean(1, comm)
    with pytest.raises(FloatingPointError, match="not finite") as info:
        opt.step(gradients=local)
    _every_rank_raised(comm, info.value, FloatingPointError)
    opt.param_groups[0]["eps"] = 1e-8
    _unchanged(opt, ps, before)
    opt.step(gradients=local)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", ["adamw", "auto_hypergradient", "autosgm", "hl"])
def test_float64_parameters(case, comm):
    """float64 parameters: the scalar tables at the single-process CPU backend's precision."""
    mine, ref = _start(dtype=np.float64), _start(dtype=np.float64)
    dist = CASES[case](mine, use_gpu=False, comm=comm)
    one = CASES[case](ref, use_gpu=False)
    for k in range(3):
        local, mean = _local_and_mean(k, comm)
        dist.step(gradients=[g.astype(np.float64) for g in local])
        one.step(gradients=[g.astype(np.float64) for g in mean])
    for a, b in zip(mine, ref):
        assert a.dtype == np.float64 and np.array_equal(a, b)
    assert_same_state(dist.state_dict(), one.state_dict())
