"""The fused CPU backend (numba): the same bits as the NumPy twins, kernel by kernel and optimizer by
optimizer; sums independent of the thread count; selection; import cost; threads and fork."""
import multiprocessing
import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

from hyperopt.backends import launch_counts  # noqa: E402
from hyperopt.backends.numba_backend import NumbaBackend  # noqa: E402
from hyperopt.backends.numpy_backend import NumpyBackend  # noqa: E402
from hyperopt.kernels import ELEMENTWISE, KERNELS  # noqa: E402
from hyperopt.kernels.core import CHUNK, block_sum, lanes_total  # noqa: E402
from hyperopt.kernels.natural_grad import element_keys  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = [1, 255, 257, 2 ** 20 + 3]
DTYPES = [np.float32, np.float64]
ELEMENTWISE_KERNELS = sorted(k for k, v in KERNELS.items() if v.kind == ELEMENTWISE)


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_same_bits(a, b, what=""):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    same = bits(a) == bits(b)
    assert same.all(), f"{what}: {np.count_nonzero(~same)} of {a.size} elements differ, e.g. " \
                       f"{a.reshape(-1)[~same.reshape(-1)][:3]} vs {b.reshape(-1)[~same.reshape(-1)][:3]}"


# ---------------------------------------------------------------------------------------- sums
def test_block_sum_adds_lanes_in_order():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 1000, 4099):
        t = rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n)     # order-sensitive magnitudes
        lanes = [0.0] * 8
        for i, x in enumerate(t):
            lanes[i % 8] += float(x)
        assert block_sum(t) == lanes_total(lanes)


def test_every_elementwise_kernel_has_a_fused_body():
    missing = [name for name in ELEMENTWISE_KERNELS if KERNELS[name].fused is None]
    assert not missing


# ---------------------------------------------------------------------------------------- kernels
def _scalars(name, rng):
    """A table row for ``name`` with sensible values (flags and modes drawn)."""
    k = KERNELS[name]
    u = lambda: float(rng.uniform(0.05, 0.95))   # noqa: E731
    flag = lambda: float(rng.integers(0, 2))      # noqa: E731
    special = {
        "amsgrad": flag, "maximize": flag, "with_momentum": flag, "with_surprise": flag,
        "coupled": flag, "decoupled": u, "aopt": flag, "huber": flag, "apply_clip": flag,
        "costate_first": flag, "neg_step_size": lambda: -u(), "neg_weight_step": lambda: -u(),
        "metric_power": lambda: float(rng.choice([0.5, 1.0, 0.75])), "ctl_base": lambda: 0.0,
        "alpha_index": lambda: 1.0, "n_cols": lambda: float(rng.integers(1, 5)),
        "num_lrc": lambda: float(rng.integers(0, 5)), "bit0": lambda: float(rng.integers(0, 29)),
        "stream": lambda: float(rng.integers(0, 1 << 24)), "clip": lambda: 0.5,
        "wd": lambda: float(rng.choice([0.0, 0.01])), "gamma_i": lambda: float(rng.choice([0.0, 0.1])),
        "c0": lambda: -u(), "c1": lambda: u(), "c2": lambda: -u(), "c3": lambda: u(),
    }
    return [special.get(s, u)() for s in k.scalars]


def _buffers(name, n, dtype, rng):
    out = {}
    for b in KERNELS[name].buffers:
        if b in ("param", "grad", "exp_avg", "direction", "a", "b", "upd", "g_sm", "pcor", "grad_ema",
                 "costate") or b.startswith("proj"):
            out[b] = rng.standard_normal(n).astype(dtype)
        elif b == "key":
            out[b] = element_keys(n).astype(dtype)
        else:                               # second moments, metrics: non-negative
            out[b] = rng.uniform(0.0, 1.0, n).astype(dtype)
    return out


def _run_kernel(backend, name, bufs, row, ctl):
    k = KERNELS[name]
    params = [bufs["param"].copy()] if "param" in bufs else [np.zeros_like(next(iter(bufs.values())))]
    state = [b for b in k.buffers if b not in ("param", "grad")]
    backend.bind(params, state)
    for s in state:
        backend.write(s, 0, bufs[s])
    backend.ctl_array(ctl.size)[...] = ctl
    program = backend.program([(k, k.buffers)])
    program.tables[0][0] = row
    grad = bufs.get("grad", params[0]).copy()
    sums = backend.run(program, {0: grad})
    return {s: backend.read(s, 0) for s in state} | {"param": params[0]}, sums


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", ELEMENTWISE_KERNELS)
def test_kernel_bits_match_numpy_twin(name, dtype):
    rng = np.random.default_rng(zlib.crc32(name.encode()))   # the same cases in every run
    ctl = np.array([0.0, -0.01, 0, 0, 0, 1.0, 0.7, 0], np.float32)      # liquid, clip 0.7; alpha at 1
    for n in SIZES:
        for trial in range(3 if n < CHUNK else 1):
            bufs = _buffers(name, n, dtype, rng)
            row = _scalars(name, rng)
            ref, ref_sums = _run_kernel(NumpyBackend(), name, bufs, row, ctl)
            got, sums = _run_kernel(NumbaBackend(), name, bufs, row, ctl)
            for b in ref:
                assert_same_bits(got[b], ref[b], f"{name} n={n} {b} row={row}")
            for r, s in zip(ref_sums, sums):
                assert_same_bits(s, r, f"{name} n={n} sums row={row}")


# ---------------------------------------------------------------------------------------- optimizers
def _cases():
    from benchmarks.run import cases
    from hyperopt import AdamW, AutoSGM, HCNaturalGrad, HIOptimizer
    out = dict(cases())
    out["AdamW(amsgrad, maximize)"] = lambda p, use_gpu, device: AdamW(p, lr=1e-2, amsgrad=True, maximize=True,
                                                                        use_gpu=use_gpu, device=device)
    out["AutoSGM(num_lrc=1, huber)"] = lambda p, use_gpu, device: AutoSGM(
        p, lr_cfg=(True, 1e-3, 1), beta_cfg=(0.9999, 0.999, 0.9, 0.0, 0, True), eps_cfg=(1e-8,),
        wd_cfg=(1e-2, 0), use_gpu=use_gpu, device=device)
    out["AutoSGM(num_lrc=3)"] = lambda p, use_gpu, device: AutoSGM(
        p, lr_cfg=(True, 1e-3, 3), beta_cfg=(0.9999, 0.999, 0.9, 0.0, 0, True), use_gpu=use_gpu, device=device)
    out["HIOptimizer(power 0.75, clip)"] = lambda p, use_gpu, device: HIOptimizer(
        p, lr=0.01, metric_power=0.75, grad_clip=1.0, use_gpu=use_gpu, device=device)
    # nine projected directions: dispatches of four columns, which the fused backend runs in pairs
    branches = np.random.default_rng(0).standard_normal((12, 9))
    for projection in ("numpy", "hash"):
        out[f"HCNaturalGrad(D=9, {projection})"] = lambda p, use_gpu, device, projection=projection: HCNaturalGrad(
            p, lr=1e-3, fisher_damp=0.1, branches=branches, projection=projection, use_gpu=use_gpu, device=device)
    return out


CASES = _cases()


def _trajectory(kernels, make, shapes, dtype, steps, monkeypatch):
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", kernels)
    rng = np.random.default_rng(7)
    params = [(0.5 * rng.standard_normal(s)).astype(dtype) for s in shapes]
    opt = make(params, False, None)
    assert opt.backend == kernels
    for _ in range(steps):
        opt.step(gradients=[(0.1 * rng.standard_normal(s)).astype(dtype) for s in shapes])
    return params, [opt.state_of(i) for i in range(len(params))]


CONTROL_KERNELS = sorted(k for k, v in KERNELS.items() if v.kind != ELEMENTWISE and v.fused is not None)


def _control_case(name, rng, table_dtype):
    """Random (ctl, sums, table) for a control kernel, edge values included."""
    if name == "autosgm_control":
        n = 40
        table = np.stack([rng.integers(0, 3, n), rng.uniform(0.5, 20, n), rng.integers(1, 10 ** 6, n),
                          rng.standard_normal(n), rng.choice([-1.0, 1.0], n)], axis=1)
        return rng.standard_normal(2 * n).astype(np.float32), rng.standard_normal((n, 1)) * 10.0 ** rng.integers(-6, 6, (n, 1)), \
            table.astype(table_dtype)
    groups, per = 30, 3
    ctl = rng.uniform(0, 2, (groups, 8)).astype(np.float32)
    ctl[:, 1] = rng.uniform(-0.5, 1.5, groups)               # temperatures outside [0, 1] too
    ctl[:, 5] = rng.integers(0, 2, groups)                   # Liquid and Frozen groups
    begin = np.arange(groups) * per
    table = np.stack([begin, begin + per, rng.integers(0, 2, groups), rng.uniform(0, 0.1, groups),
                      rng.choice([0.0, 0.5, 5.0], groups), rng.uniform(0.9, 1, groups), rng.uniform(0.5, 1, groups),
                      rng.uniform(0, 0.5, groups), rng.uniform(0, 1, groups), rng.uniform(0.5, 2, groups),
                      rng.integers(0, 2, groups), rng.uniform(0.5, 1, groups), rng.uniform(1, 1.5, groups)], axis=1)
    return ctl.reshape(-1), rng.uniform(0, 4, (groups * per, 1)), table.astype(table_dtype)


@pytest.mark.parametrize("table_dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", CONTROL_KERNELS)
def test_control_bodies_match_their_twins(name, table_dtype):
    """A control kernel's compiled body updates the control array to the twin's bits."""
    from hyperopt.backends.numba_backend import _control
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    kernel = KERNELS[name]
    for _ in range(20):
        ctl, sums, table = _control_case(name, rng, table_dtype)
        ref, got = ctl.copy(), ctl.copy()
        kernel.numpy(ref, sums, table)
        _control(kernel)(got, sums, table)
        assert_same_bits(got, ref, name)


def test_control_kernels_run_compiled(monkeypatch):
    """On the fused backend a step's control kernels run their compiled bodies."""
    import hyperopt
    from hyperopt.backends import numba_backend
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", "numba")
    ran = []
    real = numba_backend._control
    monkeypatch.setattr(numba_backend, "_control", lambda kernel: ran.append(kernel.name) or real(kernel))
    p = [np.ones(100, np.float32)]
    hyperopt.HIOptimizer(p, lr=0.01, use_gpu=False).step(gradients=[np.full(100, 0.5, np.float32)])
    hyperopt.AutoSGM(p, lr_cfg=(True, 1e-3, 2), use_gpu=False).step(gradients=[np.full(100, 0.5, np.float32)])
    assert sorted(set(ran)) == CONTROL_KERNELS


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_bits_match_numpy_twins(case, dtype, monkeypatch):
    make = CASES[case]
    for shapes, steps in (([(1,), (255,), (257,), (3, 5)], 25), ([(2 ** 20 + 3,), (17,)], 4)):
        ref, ref_state = _trajectory("numpy", make, shapes, dtype, steps, monkeypatch)
        got, state = _trajectory("numba", make, shapes, dtype, steps, monkeypatch)
        for i, (a, b) in enumerate(zip(got, ref)):
            assert_same_bits(a, b, f"{case} param {i} shape {b.shape}")
        for i, (sa, sb) in enumerate(zip(state, ref_state)):
            for key, value in sb.items():
                if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                    assert_same_bits(sa[key], value, f"{case} state {key} of param {i}")


def test_two_kernels_in_a_row_run_as_one_pass(monkeypatch):
    """HypergradientAdamW's update, adamw_update then hypergradient_direction, is one compiled pass
    (its bits are the twins', test_optimizer_bits_match_numpy_twins); from the second step the
    reduction before it is a pass of its own (the host needs its sums first)."""
    from hyperopt import HypergradientAdamW
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", "numba")
    p = np.ones(3 * CHUNK, np.float32)
    opt = HypergradientAdamW([p], lr=1e-2, use_gpu=False)
    passes = []
    for _ in range(3):
        before = launch_counts["numba"]
        opt.step(gradients=[np.full_like(p, 0.5)])
        passes.append(launch_counts["numba"] - before)
    assert passes == [1, 2, 2]


def test_transposed_parameter_is_updated_in_place(monkeypatch):
    from hyperopt import AdamW
    out = {}
    for kernels in ("numpy", "numba"):
        monkeypatch.setenv("HYPEROPT_CPU_KERNELS", kernels)
        rng = np.random.default_rng(3)
        base = rng.standard_normal((300, 500)).astype(np.float32)
        p = base.T                                     # F-ordered view: updates must reach ``base``
        opt = AdamW([p], lr=0.1, use_gpu=False)
        for _ in range(3):
            opt.step(gradients=[rng.standard_normal(p.shape).astype(np.float32)])
        out[kernels] = base
    assert_same_bits(out["numba"], out["numpy"], "transposed parameter")


# ---------------------------------------------------------------------------------------- threads
_SUMS_SCRIPT = """
import sys, numpy as np
from hyperopt.backends.numba_backend import NumbaBackend
from hyperopt.kernels import KERNELS
k = KERNELS["hypergradient_reduce"]
rng = np.random.default_rng(0)
n = 5 * 2 ** 17 + 11
bufs = [rng.standard_normal(n).astype(np.float32) for _ in range(4)]
be = NumbaBackend()
be.bind([bufs[0]], ("direction", "exp_avg", "grad_ema"))
for name, b in zip(("direction", "exp_avg", "grad_ema"), bufs[1:]):
    be.write(name, 0, b)
prog = be.program([(k, k.buffers)])
prog.tables[0][0] = (1, 1)
if len(sys.argv) > 1:
    import numba
    numba.set_num_threads(int(sys.argv[1]))
print(be.run(prog, {0: bufs[0]})[0].tobytes().hex())
"""


@pytest.mark.timeout(600)
def test_sums_do_not_depend_on_thread_count():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = {}
    for threads in (1, 2, 4):
        env["NUMBA_NUM_THREADS"] = str(threads)
        runs[threads] = subprocess.run([sys.executable, "-c", _SUMS_SCRIPT, str(threads)], env=env, check=True,
                                       capture_output=True, text=True, timeout=300).stdout.strip()
    assert runs[1] == runs[2] == runs[4] and runs[1]


def _adamw_run(n, steps=5, seed=0):
    from hyperopt import AdamW
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    opt = AdamW([p], lr=1e-2, use_gpu=False)
    assert opt.backend == "numba"
    for _ in range(steps):
        opt.step(gradients=[rng.standard_normal(n).astype(np.float32)])
    return p


@pytest.mark.timeout(300)
def test_optimizers_in_four_threads(monkeypatch):
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", "numba")
    n = 3 * CHUNK + 5                       # parallel kernels, which must take turns
    expected = [_adamw_run(n, seed=s) for s in range(4)]
    results, errors = [None] * 4, []

    def work(s):
        try:
            results[s] = _adamw_run(n, seed=s)
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors and not any(t.is_alive() for t in threads)
    for got, want in zip(results, expected):
        assert_same_bits(got, want, "threaded AdamW")


_LAYER_SCRIPT = """
import numpy as np, numba
from hyperopt import AdamW
p = np.zeros(3 * 2 ** 17, np.float32)
AdamW([p], use_gpu=False).step(gradients=[np.ones_like(p)])
print(numba.threading_layer())
"""


@pytest.mark.timeout(300)
def test_parallel_kernels_run_on_tbb_where_it_is_installed():
    """The ``numba`` extra installs tbb on x86-64: parallel regions from several threads at once, safe
    across fork, quick to start.  Elsewhere numba's workqueue layer, serialised by a lock."""
    import importlib.metadata
    try:
        importlib.metadata.files("tbb")
        expected = "tbb"
    except importlib.metadata.PackageNotFoundError:
        expected = "workqueue"
    r = _python(_LAYER_SCRIPT, HYPEROPT_CPU_KERNELS="numba", NUMBA_THREADING_LAYER=None)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected


def test_many_tensors_of_mixed_dtypes_and_layouts_in_one_run(monkeypatch):
    """One compiled call serves every parameter: float32 and float64 ones, small and multi-block,
    a transposed one, and a Fortran-ordered gradient, with the twins' bits."""
    from hyperopt import HypergradientAdamW

    def run(kernels):
        monkeypatch.setenv("HYPEROPT_CPU_KERNELS", kernels)
        rng = np.random.default_rng(11)
        shapes = [(7,), (300, 500), (3, 4), (2 * CHUNK + 9,), (1,)]
        dtypes = [np.float32, np.float64, np.float32, np.float32, np.float64]
        params = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
        params[1] = np.asfortranarray(params[1])          # F-ordered: runs on a C-order copy
        opt = HypergradientAdamW(params, lr=1e-2, use_gpu=False)
        assert opt.backend == kernels
        for _ in range(4):
            grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
            grads[2] = np.asfortranarray(grads[2])
            opt.step(gradients=grads)
        return params

    for a, b in zip(run("numba"), run("numpy")):
        assert_same_bits(a, b, "mixed parameters")


@pytest.mark.parametrize("name", ["AdamW", "HypergradientAdamW"])
def test_gradient_buffers_refilled_in_place_every_step(name, monkeypatch):
    """A loop that writes each step's gradients into the same arrays (the backend then keeps their
    addresses from one step to the next): every step reads the new values, those of a gradient
    that runs on a C-order copy too, a NaN written into a buffer is still refused, and a parameter
    group added later starts from fresh addresses."""
    import hyperopt

    def run(kernels):
        monkeypatch.setenv("HYPEROPT_CPU_KERNELS", kernels)
        rng = np.random.default_rng(5)
        params = [np.ones(2 * CHUNK + 3, np.float32), np.ones((3, 5), np.float32)]
        opt = getattr(hyperopt, name)(params, lr=1e-2, use_gpu=False)
        assert opt.backend == kernels
        buffers = [np.empty_like(params[0]), np.empty((3, 5), np.float32, order="F")]   # F-ordered: runs on a copy
        for step in range(6):
            for b in buffers:
                b[...] = rng.standard_normal(b.shape)
            if step == 3:
                before = [p.copy() for p in params]
                buffers[0][CHUNK + 7] = np.nan
                with pytest.raises(ValueError, match="parameter 0 .*NaN or infinity"):
                    opt.step(gradients=buffers)
                assert all((p == q).all() for p, q in zip(params, before))
                buffers[0][CHUNK + 7] = 0.5
            opt.step(gradients=buffers)
        extra = np.ones(9, np.float32)
        opt.add_param_group({"params": [extra]})
        for _ in range(2):
            opt.step(gradients={id(params[0]): buffers[0], id(params[1]): buffers[1]})
            opt.step(gradients=buffers + [np.full(9, 0.25, np.float32)])
        return params + [extra]

    for a, b in zip(run("numba"), run("numpy")):
        assert_same_bits(a, b, f"{name} with refilled gradient buffers")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_gradient_check_finds_a_bad_element_anywhere(dtype, monkeypatch):
    """The compiled check (one parallel pass) refuses NaN, infinities and elements whose square
    overflows wherever they are, and nothing moves; the largest element with a finite square passes."""
    from hyperopt import AdamW
    from hyperopt.optimizer import _square_limit
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", "numba")
    shapes = [(3 * CHUNK + 5,), (7,), (4, 3)]
    params = [np.ones(s, dtype) for s in shapes]
    opt = AdamW(params, lr=0.1, use_gpu=False)
    limit = _square_limit(np.dtype(dtype))
    edge = np.array(limit, dtype)
    edge = edge if float(edge) <= limit else np.nextafter(edge, dtype(0))
    beyond = np.nextafter(edge, dtype(np.inf))
    for k, where in [(0, 0), (0, CHUNK + 1), (0, 3 * CHUNK + 4), (1, 6), (2, (3, 2))]:
        for value, message in [(np.nan, "NaN or infinity"), (-np.inf, "NaN or infinity"),
                               (-beyond, "square overflows"), (beyond, "square overflows")]:
            grads = [np.zeros(s, dtype) for s in shapes]
            grads[k][where] = value
            with pytest.raises(ValueError, match=f"parameter {k} .*{message}"):
                opt.step(gradients=grads)
    assert all((p == 1).all() for p in params) and len(opt.state) == 0
    grads = [np.zeros(s, dtype) for s in shapes]
    grads[0][-1] = -edge
    opt.step(gradients=grads)                  # accepted: its square is finite
    assert len(opt.state) == 3


@pytest.mark.parametrize("name", ["HypergradientAdamW", "AutoHypergradientAdamW"])
def test_gradient_check_rides_on_a_first_pass_that_only_reads(name, monkeypatch):
    """The hypergradient reduction only reads (with the surprise signal too: its EMA moves on in
    the update), so its pass checks the gradients too, no pass of their own; a bad element
    anywhere is refused with the usual message and nothing moves, the EMA included."""
    import hyperopt
    from hyperopt.backends import numba_backend
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", "numba")
    shapes = [(2 * CHUNK + 5,), (4, 3)]
    params = [np.ones(s, np.float32) for s in shapes]
    kwargs = dict(track_surprise=True, warmup_steps=0) if name.startswith("Auto") else {}
    opt = getattr(hyperopt, name)(params, lr=1e-2, use_gpu=False, **kwargs)
    rng = np.random.default_rng(2)
    for _ in range(2):
        opt.step(gradients=[rng.standard_normal(s).astype(np.float32) for s in shapes])
    before = opt.state_dict()
    saved = [p.copy() for p in params]
    checks = []
    real = numba_backend._Gradients.first_bad
    monkeypatch.setattr(numba_backend._Gradients, "first_bad", lambda self, limit: checks.append(1) or real(self, limit))
    for k, where in [(0, 0), (0, CHUNK + 1), (0, 2 * CHUNK + 4), (1, (3, 2))]:
        for value, message in [(np.nan, "NaN or infinity"), (np.float32(3e19), "square overflows")]:
            grads = [np.zeros(s, np.float32) for s in shapes]
            grads[k][where] = value
            with pytest.raises(ValueError, match=f"parameter {k} .*{message}"):
                opt.step(gradients=grads)
    assert all((p == q).all() for p, q in zip(params, saved))
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i, st in before["state"].items():
        for key, value in st.items():
            np.testing.assert_array_equal(after["state"][i][key], value, err_msg=f"state {key} of {i}")
    assert not checks
    opt.step(gradients=[rng.standard_normal(s).astype(np.float32) for s in shapes])   # and it steps on


def test_float16_parameters_run_on_the_numpy_twins_with_a_warning(monkeypatch):
    """numba compiles float32 and float64 only: float16 parameters take the NumPy twins, said once."""
    from hyperopt import AdamW
    from hyperopt.backends import _told
    monkeypatch.delenv("HYPEROPT_CPU_KERNELS", raising=False)
    _told.discard("float16 parameters have no fused CPU kernels")
    p = np.ones(10, np.float16)
    with pytest.warns(RuntimeWarning, match="float16 parameters have no fused CPU kernels: .*NumPy kernels"):
        opt = AdamW([p], lr=0.1, use_gpu=False)
    assert opt.backend == "numpy"
    opt.step(gradients=[np.ones(10, np.float16)])
    assert p.dtype == np.float16 and (p < 1).all()


def _child(queue):
    queue.put(bits(_adamw_run(3 * CHUNK + 5)).tobytes())


@pytest.mark.timeout(300)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_fork_child_after_parallel_use(monkeypatch):
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", "numba")
    want = bits(_adamw_run(3 * CHUNK + 5)).tobytes()          # the parent has run parallel kernels
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    got = queue.get(timeout=240)
    child.join(timeout=60)
    assert child.exitcode == 0 and got == want


# ---------------------------------------------------------------------------------------- selection
def _python(code, *args, timeout=240, **env):
    """``python -c code *args`` with this checkout importable; ``env`` adds variables (None: unset)."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    for k, v in env.items():
        if v is None:
            full.pop(k)
    return subprocess.run([sys.executable, "-c", code, *args], env=full, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(120)
def test_import_does_not_load_numba():
    r = _python("import sys, hyperopt; print('numba' in sys.modules)")
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


@pytest.mark.timeout(120)
def test_numpy_kernels_selected_by_env_never_load_numba():
    r = _python("import sys, numpy as np, hyperopt\n"
                "p = np.ones(10, np.float32); o = hyperopt.AdamW([p], use_gpu=False)\n"
                "o.step(gradients=[p]); print(o.backend, 'numba' in sys.modules)", HYPEROPT_CPU_KERNELS="numpy")
    assert r.returncode == 0 and r.stdout.split() == ["numpy", "False"], r.stderr


_BLOCK_NUMBA = "import sys; sys.modules['numba'] = None\n"     # as if numba were not installed


@pytest.mark.timeout(120)
def test_without_numba_the_default_is_numpy_silently():
    r = _python(_BLOCK_NUMBA + "import warnings, numpy as np, hyperopt\nwarnings.simplefilter('error')\n"
                "p = np.ones(10, np.float32); o = hyperopt.AdamW([p], use_gpu=False)\n"
                "o.step(gradients=[p]); print(o.backend)", HYPEROPT_CPU_KERNELS=None)
    assert r.returncode == 0 and r.stdout.strip() == "numpy", r.stderr


@pytest.mark.timeout(120)
def test_asking_for_numba_without_it_raises():
    r = _python(_BLOCK_NUMBA + "import numpy as np, hyperopt\nhyperopt.AdamW([np.ones(3)], use_gpu=False)",
                HYPEROPT_CPU_KERNELS="numba")
    assert r.returncode != 0 and "HYPEROPT_CPU_KERNELS=numba" in r.stderr


def test_selection_by_env(monkeypatch):
    from hyperopt import AdamW
    monkeypatch.delenv("HYPEROPT_CPU_KERNELS", raising=False)
    assert AdamW([np.ones(3)], use_gpu=False).backend == "numba"
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", "numpy")
    assert AdamW([np.ones(3)], use_gpu=False).backend == "numpy"
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", "fortran")
    with pytest.raises(ValueError, match="HYPEROPT_CPU_KERNELS"):
        AdamW([np.ones(3)], use_gpu=False)


def test_launch_counts_tell_which_implementation_ran(monkeypatch):
    from hyperopt import AdamW
    monkeypatch.setenv("HYPEROPT_CPU_KERNELS", "numba")
    p = np.ones(10, np.float32)
    opt = AdamW([p], use_gpu=False)
    before = launch_counts["numba"]
    for _ in range(3):
        opt.step(gradients=[p])
    assert launch_counts["numba"] == before + 3


_TWIN_RUNS = """
import os, sys, numpy as np, hyperopt
def run(name, dtype, kernels):
    os.environ["HYPEROPT_CPU_KERNELS"] = kernels
    p = np.linspace(-1, 1, 3001).astype(dtype)
    opt = getattr(hyperopt, name)([p], use_gpu=False)
    assert opt.backend == kernels, opt.backend
    for k in range(3):
        opt.step(gradients=[np.cos(p * (k + 3)).astype(dtype)])
    return p
for job in sys.argv[1:]:
    name, dtype = job.split(":")
    same = run(name, dtype, "numba").tobytes() == run(name, dtype, "numpy").tobytes()
    print(job, "same" if same else "different")
"""


@pytest.mark.timeout(600)
def test_drivers_cached_by_other_processes_run_their_own_bodies(tmp_path):
    """Each process compiles one optimizer's drivers into a shared cache, then one process loads
    them all.  Compiled symbols are numbered per process, so pieces of different drivers can carry
    the same number; if they also shared a name, the last process would run one optimizer's body
    in another's driver (it did, before every bound piece got a name of its own)."""
    def run(*jobs):
        r = _python(_TWIN_RUNS, *jobs, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
        assert r.returncode == 0 and r.stdout.split() == [w for job in jobs for w in (job, "same")], r.stdout + r.stderr

    jobs = ["AdamW:float32", "HIOptimizer:float32", "AutoSGM:float32", "AdamW:float64"]
    for job in jobs:
        run(job)
    run(*jobs)


_LAYER_AT_1E5 = ("import numpy as np, hyperopt\nfrom hyperopt.backends import numba_backend as nb\n"
                 "p = np.ones(100_000, np.float32); o = hyperopt.AdamW([p], use_gpu=False)\n"
                 "o.step(gradients=[p * 0.1]); assert o.backend == 'numba'\n"
                 "print(nb._threadsafe, sorted({par for name, par, _ in nb._compiled if name == 'adamw_update'}))")


@pytest.mark.timeout(300)
def test_workqueue_threads_keep_small_runs_serial():
    """A parallel region takes about 75 µs to start on numba's workqueue threads and 2 µs on tbb's,
    so AdamW on 1e5 elements runs on both threads on tbb and on the serial build on workqueue."""
    r = _python(_LAYER_AT_1E5, NUMBA_THREADING_LAYER="workqueue", HYPEROPT_CPU_KERNELS="numba")
    assert r.returncode == 0 and r.stdout.split() == ["False", "[False]"], r.stdout + r.stderr
    r = _python(_LAYER_AT_1E5, HYPEROPT_CPU_KERNELS="numba", NUMBA_THREADING_LAYER=None)   # the layer hyperopt picks
    assert r.returncode == 0, r.stderr
    threadsafe, used = r.stdout.split()
    assert used == ("[True]" if threadsafe == "True" else "[False]"), r.stdout


@pytest.mark.timeout(600)
def test_unwritable_cache_dir_still_works(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, so no directory can be made under it (even by root)")
    r = _python("import numpy as np, hyperopt\np = np.ones(10, np.float32)\n"
                "o = hyperopt.AdamW([p], use_gpu=False); o.step(gradients=[p]); print(o.backend, p[0])",
                NUMBA_CACHE_DIR=str(blocker / "numba"), HYPEROPT_CPU_KERNELS="numba")
    assert r.returncode == 0 and r.stdout.split()[0] == "numba", r.stderr
    assert blocker.is_file()
