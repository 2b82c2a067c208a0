"""Every optimizer under comm=: the same bits as one process, for any rank count.

Each rank gives the local gradient ``base + c_r * delta`` with dyadic values and offsets ``c_r``
that add to zero, so the rank mean is exactly ``base`` for 1, 2 and 4 ranks: the single-process
optimizer fed ``base`` is then the reference of every run, and the distributed optimizer must equal
it bit for bit (parameters after every step, then its whole consolidated state).
"""
import numpy as np
import pytest

from hyperopt import AdamW, AutoHypergradientAdamW, AutoSGM, HCNaturalGrad, HIOptimizer, HL, HypergradientAdamW
from hyperopt.backends.numpy_backend import CHUNK
from hyperopt.distributed import rank_mean

# two multi-block segments (split between ranks) and two small ones
SHAPES = [(2 * CHUNK + 3000,), (5, 3), (400, 700), (7,)]
STEPS = 3


def _dyadic(rng, shape, scale):
    return (rng.integers(-512, 512, size=shape) * scale).astype(np.float32)


def _local_and_mean(step, comm, shapes=SHAPES):
    rng = np.random.default_rng(100 + step)
    base = [_dyadic(rng, s, 2.0 ** -10) for s in shapes]
    delta = [_dyadic(rng, s, 2.0 ** -12) for s in shapes]
    c = comm.rank - (comm.size - 1) / 2                 # offsets add to zero over the ranks
    local = [b + np.float32(c) * d for b, d in zip(base, delta)]
    assert all(np.array_equal(rank_mean([b + np.float32(r - (comm.size - 1) / 2) * d for r in range(comm.size)]), b)
               for b, d in zip(base, delta))
    return local, base


def _start(shapes=SHAPES, dtype=np.float32):
    rng = np.random.default_rng(7)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _groups(ps, two):
    return [{"params": ps[:2]}, {"params": ps[2:], **two}]


CASES = {
    "adamw": lambda ps, **k: AdamW(ps, lr=0.01, **k),
    "adamw_amsgrad_groups": lambda ps, **k: AdamW(_groups(ps, {"lr": 0.003, "amsgrad": True}), lr=0.01, **k),
    "hypergradient": lambda ps, **k: HypergradientAdamW(ps, lr=0.01, beta_hyper=1e-4, **k),
    "auto_hypergradient": lambda ps, **k: AutoHypergradientAdamW(ps, lr=0.01, warmup_steps=1, **k),
    "hysterograd_groups_clip": lambda ps, **k: HIOptimizer(_groups(ps, {"grad_clip": 0.5, "lr": 0.02}), lr=0.01, **k),
    "autosgm": lambda ps, **k: AutoSGM(ps, **k),
    "autosgm_estimator": lambda ps, **k: AutoSGM(ps, lr_cfg=(True, 1e-2, 3), **k),
    "natural_grad_descent_clip": lambda ps, **k: HCNaturalGrad(ps, lr=0.05, clip=1.5, **k),
    "natural_grad_branches": lambda ps, **k: HCNaturalGrad(ps, lr=0.05, branches=np.arange(12.0).reshape(4, 3) ** 0.5, **k),
    "natural_grad_hash": lambda ps, **k: HCNaturalGrad(ps, lr=0.05, projection="hash", seed=3,
                                                     branches=np.arange(30.0).reshape(5, 6) % 7, **k),
    "hl": lambda ps, **k: HL.for_params(ps, **k),
}


def assert_resumes_in_fewer_ranks(comm, path, ps, ref, single, make, grads):
    """The checkpoint at ``path`` (of the optimizer over ``ps``) loaded by half of the ranks and by
    one process (``make(params, comm)``): each holds ``ref``'s values, then steps exactly as
    ``single``, the one-process optimizer over ``ref``, does with ``grads(t)``, t = 2, 3."""
    import hyperopt
    half = comm.Split(color=comm.rank % 2, key=comm.rank)
    for c in (half, None):
        resumed = [np.zeros_like(p) for p in ps]
        other = make(resumed, c)
        hyperopt.load(other, path)
        assert all(np.array_equal(a, b) for a, b in zip(resumed, ref))
        mirror = [p.copy() for p in ref]
        follow = make(mirror, None)
        follow.load_state_dict(single.state_dict())
        for t in range(2, 4):
            g = grads(t)
            other.step(gradients=g)
            follow.step(gradients=g)
            assert all(np.array_equal(a, b) for a, b in zip(resumed, mirror))
        assert_same_state(other.state_dict(), follow.state_dict())
        other.close()
        follow.close()
    half.Free()


def assert_same_state(a, b):
    """Two state_dict()s hold the same bits (arrays, scalars and group entries)."""
    assert sorted(a["state"]) == sorted(b["state"])
    for i in a["state"]:
        assert sorted(a["state"][i]) == sorted(b["state"][i]), i
        for k, v in a["state"][i].items():
            w = b["state"][i][k]
            if isinstance(v, np.ndarray):
                assert v.dtype == w.dtype and np.array_equal(v, w), (i, k)
            else:
                assert v == w or (v != v and w != w), (i, k, v, w)
    assert repr(a["param_groups"]) == repr(b["param_groups"])
    assert repr(a.get("extra")) == repr(b.get("extra"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_bits_as_one_process(case, comm):
    make = CASES[case]
    mine, ref = _start(), _start()
    dist = make(mine, use_gpu=False, comm=comm)
    single = make(ref, use_gpu=False)
    assert dist.backend == single.backend          # the kernels one process would run: fused or twins
    for t in range(STEPS):
        local, mean = _local_and_mean(t, comm)
        dist.step(gradients=local)
        single.step(gradients=mean)
        for k, (a, b) in enumerate(zip(mine, ref)):
            assert np.array_equal(a, b), f"parameter {k} after step {t + 1}"
    assert_same_state(dist.state_dict(), single.state_dict())
    # each rank keeps state for its shard only
    backend = dist._backend
    held = sum(b.size for bufs in backend._state.values() for b in bufs)
    assert held == len(backend.buffers) * backend.layout.elements[comm.rank]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["adamw", "auto_hypergradient"])
def test_mean_of_different_gradients(case, comm):
    """Arbitrary float gradients: the distributed step equals one process fed rank_mean of them."""
    mine, ref = _start(), _start()
    dist = CASES[case](mine, use_gpu=False, comm=comm)
    single = CASES[case](ref, use_gpu=False)
    for t in range(2):
        every = [[np.random.default_rng((t, r, k)).standard_normal(s).astype(np.float32) for k, s in enumerate(SHAPES)]
                 for r in range(comm.size)]
        dist.step(gradients=every[comm.rank])
        single.step(gradients=[rank_mean([g[k] for g in every]) for k in range(len(SHAPES))])
        for a, b in zip(mine, ref):
            assert np.array_equal(a, b)


@pytest.mark.timeout(120)
def test_add_param_group_reshards_the_state(comm):
    mine, ref = _start(), _start()
    dist = AdamW(mine[:1], lr=0.01, use_gpu=False, comm=comm)
    single = AdamW(ref[:1], lr=0.01, use_gpu=False)
    for t in range(2):
        local, mean = _local_and_mean(t, comm)
        dist.step(gradients=local[:1])
        single.step(gradients=mean[:1])
    dist.add_param_group({"params": mine[1:], "lr": 0.02})     # the blocks move between ranks
    single.add_param_group({"params": ref[1:], "lr": 0.02})
    local, mean = _local_and_mean(5, comm)
    dist.step(gradients=local)
    single.step(gradients=mean)
    for a, b in zip(mine, ref):
        assert np.array_equal(a, b)
    assert_same_state(dist.state_dict(), single.state_dict())


@pytest.mark.timeout(60)
def test_sums_have_the_single_process_bits(comm):
    """Per-segment sums gathered from the ranks' block partials equal the NumPy backend's, with block
    scales far apart so that any other order of addition would round differently."""
    from hyperopt.backends.numpy_backend import NumpyBackend
    from hyperopt.distributed import DistributedBackend
    from hyperopt.kernels.reductions import reduce_dot
    rng = np.random.default_rng(11)
    shapes = [(5 * CHUNK + 17,), (3,), (3 * CHUNK,)]
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    for a in arrays:
        flat = a.reshape(-1)
        for k in range(0, flat.size, CHUNK):                  # every block at its own scale and sign
            flat[k:k + CHUNK] *= np.float32(rng.choice([-1, 1]) * 10.0 ** rng.integers(-6, 7))
    grads = {i: rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    single, dist = NumpyBackend(), DistributedBackend(comm)
    single.bind(arrays, ())
    dist.bind([a.copy() for a in arrays], ())
    out = [b.run(b.program([(reduce_dot, ("param", "grad"))]), grads, download=False)[0] for b in (single, dist)]
    assert out[0].tobytes() == out[1].tobytes()
    partials = [[float(np.dot(a.reshape(-1)[k:k + CHUNK].astype(np.float64), grads[i].reshape(-1)[k:k + CHUNK]))
                 for k in range(0, a.size, CHUNK)] for i, a in enumerate(arrays)]
    assert out[1][0, 0] != sum(partials[0][::-1]) or out[1][2, 0] != sum(partials[2][::-1])   # the order shows


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", ["adamw", "auto_hypergradient", "hysterograd_groups_clip", "autosgm_estimator",
                                  "natural_grad_branches", "hl"])
@pytest.mark.parametrize("kernels", [("numba", "numpy"), ("numpy", "numba")])
def test_fused_shards_and_twins_give_the_same_bits(case, kernels, comm, monkeypatch):
    """The distributed optimizer on one kind of CPU kernels equals one process on the other kind."""
    pytest.importorskip("hyperopt.backends.numba_backend")
    pytest.importorskip("numba")
    mine, ref = _start(), _start()
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", kernels[0])
    dist = CASES[case](mine, use_gpu=False, comm=comm)
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", kernels[1])
    single = CASES[case](ref, use_gpu=False)
    assert (dist.backend, single.backend) == kernels
    from hyperopt.backends import launch_counts
    before = launch_counts[kernels[0]]
    for t in range(STEPS):
        local, mean = _local_and_mean(t, comm)
        dist.step(gradients=local)
        single.step(gradients=mean)
        for k, (a, b) in enumerate(zip(mine, ref)):
            assert np.array_equal(a, b), f"parameter {k} after step {t + 1}"
    assert launch_counts[kernels[0]] > before      # the distributed optimizer ran that implementation
    assert_same_state(dist.state_dict(), single.state_dict())
