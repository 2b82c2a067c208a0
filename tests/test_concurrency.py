"""Threads and processes: optimizers stepped from several threads, fork, close() and interpreter exit.

Several optimizers on one device stepped from several threads give the numbers of stepping them one
after another; one optimizer stepped from two threads runs one step after the other.  A forked child
builds and uses its own optimizers, an inherited Vulkan optimizer raises, and no exit hangs.  Every
test that starts a process or a thread has a timeout.
"""
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ProcessPoolExecutor
import multiprocessing

import numpy as np
import pytest

from hyperopt import AdamW, HypergradientAdamW

from conftest import DEVICE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(3000,), (70, 30), (5,)]


def _problem(seed, shapes=SHAPES, steps=12):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(steps)]
    return params, grads


def _build(kind, params, kwargs):
    if kind == "adamw":
        return AdamW(params, lr=1e-2, weight_decay=0.1, **kwargs)
    return HypergradientAdamW(params, lr=1e-2, **kwargs)     # control kernels and device-side scalars


def _train(kind, seed, kwargs, shapes=SHAPES):
    params, grads = _problem(seed, shapes)
    opt = _build(kind, params, kwargs)
    for g in grads:
        opt.step(gradients=g)
    return params, opt.state_of(params[0])


def _in_threads(fns, timeout=120):
    results, errors = [None] * len(fns), []

    def run(k):
        try:
            results[k] = fns[k]()
        except BaseException as exc:     # reported by the test, not lost in the thread
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["adamw", "hypergradient"])
def test_four_threads_four_optimizers_equal_the_sequential_results(opt_kwargs, kind):
    seeds = [11, 12, 13, 14]
    expected = [_train(kind, s, opt_kwargs) for s in seeds]
    for _ in range(4):
        got = _in_threads([lambda s=s: _train(kind, s, opt_kwargs) for s in seeds])
        for (p_ref, st_ref), (p, st) in zip(expected, got):
            for a, b in zip(p_ref, p):
                np.testing.assert_array_equal(a, b)
            for name in st_ref:
                np.testing.assert_array_equal(np.asarray(st_ref[name]), np.asarray(st[name]))


@pytest.mark.timeout(300)
def test_large_numpy_optimizers_share_the_thread_pool_from_several_threads():
    shapes = [(600_000,), (7,)]          # past the size where the chunks go to the thread pool
    expected = [_train("adamw", s, {"use_gpu": False}, shapes) for s in (1, 2, 3)]
    got = _in_threads([lambda s=s: _train("adamw", s, {"use_gpu": False}, shapes) for s in (1, 2, 3)])
    for (p_ref, _), (p, _) in zip(expected, got):
        for a, b in zip(p_ref, p):
            np.testing.assert_array_equal(a, b)


@pytest.mark.timeout(120)
def test_one_optimizer_stepped_from_two_threads_runs_step_after_step(opt_kwargs):
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(5000).astype(np.float32)
    g = rng.standard_normal(5000).astype(np.float32)
    ref = p0.copy()
    ref_opt = AdamW([ref], lr=1e-2, **opt_kwargs)
    for _ in range(40):
        ref_opt.step(gradients=[g])
    shared = p0.copy()
    opt = AdamW([shared], lr=1e-2, **opt_kwargs)
    _in_threads([lambda: [opt.step(gradients=[g]) for _ in range(20)] for _ in range(2)])
    assert opt.state[id(shared)]["step"] == 40
    np.testing.assert_array_equal(shared, ref)          # the same gradient each step: order is irrelevant


@pytest.mark.timeout(200)
def test_creating_and_closing_optimizers_while_another_steps(opt_kwargs):
    expected, _ = _train("adamw", 21, opt_kwargs)
    stop = threading.Event()

    def churn():
        n = 0
        while not stop.is_set() or n < 5:
            params, grads = _problem(n)
            opt = AdamW(params, **opt_kwargs)
            opt.step(gradients=grads[0])
            opt.close()
            n += 1
        return n

    def train():
        try:
            return _train("adamw", 21, opt_kwargs)
        finally:
            stop.set()
    (got, _), n = _in_threads([train, churn])
    assert n >= 5
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.timeout(60)
def test_use_after_close_raises_clearly(opt_kwargs):
    p = np.ones(10, np.float32)
    opt = AdamW([p], **opt_kwargs)
    opt.step(gradients=[np.ones(10, np.float32)])
    before = p.copy()
    opt.close()
    opt.close()                                  # twice is fine
    for call in (lambda: opt.step(gradients=[np.ones(10, np.float32)]), opt.state_dict,
                 lambda: opt.state_of(p), lambda: opt.add_param_group({"params": [np.ones(3, np.float32)]})):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    np.testing.assert_array_equal(p, before)


def _run_script(code, *args, timeout=180, env=None):
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    try:
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env,
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the script hung (killed after {timeout} s); output so far:\n{exc.stdout}\n{exc.stderr}")
    assert out.returncode == 0, f"exit status {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


FORK = """
    import os, sys, numpy as np
    from hyperopt import AdamW
    device = sys.argv[1]
    kwargs = {"use_gpu": False} if device == "numpy" else {"use_gpu": True, "device": device}

    def train(seed, n):
        rng = np.random.default_rng(seed)
        p = rng.standard_normal(n).astype(np.float32)
        opt = AdamW([p], lr=1e-2, **kwargs)
        for _ in range(3):
            opt.step(gradients=[rng.standard_normal(n).astype(np.float32)])
        return p

    big = 600_000                      # past the size where the NumPy chunks go to the thread pool
    inherited = train(1, big)          # the parent steps first: its pool and device are in use
    p = np.ones(8, np.float32)
    parent_opt = AdamW([p], **kwargs)
    parent_opt.step(gradients=[np.ones(8, np.float32)])
    expected = train(2, big)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            ok = np.array_equal(train(2, big), expected)
        except RuntimeError as exc:
            ok = f"refused: {exc}"
        try:
            parent_opt.step(gradients=[np.ones(8, np.float32)])
            inherited_msg = "stepped"
        except RuntimeError as exc:
            inherited_msg = str(exc)
        os.write(w, f"{ok}|{inherited_msg}".encode())
        os.close(w)
        os._exit(0)                    # as multiprocessing does (see the note in test_a_forked_child...)
    os.close(w)
    msg = os.read(r, 4096).decode()
    _, status = os.waitpid(pid, 0)
    parent_opt.step(gradients=[np.ones(8, np.float32)])     # the parent's optimizer still works
    print(msg)
    print("child exit", os.waitstatus_to_exitcode(status))
"""


def _fork_capable():
    """lavapipe runs in a forked child; SwiftShader does not (its worker threads stay in the parent),
    and the backend refuses it there with a clear error instead of hanging."""
    from hyperopt.backends import vulkan
    return "llvmpipe" in vulkan.context(DEVICE).name


@pytest.mark.no_launch   # its kernels run in the forked child, which checks its own backend
@pytest.mark.timeout(300)
def test_a_forked_child_builds_its_own_optimizers(backend):
    """The child leaves with os._exit, as multiprocessing's workers do and the os.fork documentation
    advises: a child that ends with sys.exit, after its parent used lavapipe, runs Mesa's C exit
    handler, which joins the parent's driver threads (absent in the child) and crashes or hangs
    after Python has finished; nothing in Python can skip that handler."""
    out = _run_script(FORK, "numpy" if backend == "numpy" else DEVICE).splitlines()
    ok, inherited = out[0].split("|", 1)
    if backend == "vulkan" and not _fork_capable():
        assert ok.startswith("refused:") and "forked child" in ok and "spawn" in ok
    else:
        assert ok == "True"
    assert out[1] == "child exit 0"
    if backend == "numpy":
        assert inherited == "stepped"     # plain arrays: the child owns its copy
    else:
        assert "belongs to the parent process" in inherited and "fork" in inherited


def _pool_task(args):
    device, seed = args
    kwargs = {"use_gpu": False} if device == "numpy" else {"use_gpu": True, "device": device}
    params, grads = _problem(seed, [(600_000,), (10,)], steps=3)
    opt = AdamW(params, lr=1e-2, **kwargs)
    for g in grads:
        opt.step(gradients=g)
    return opt.backend, [p.copy() for p in params]


@pytest.mark.timeout(300)
def test_a_fork_process_pool_runs_optimizers(backend):
    device = "numpy" if backend == "numpy" else DEVICE
    expected = [_pool_task((device, s)) for s in (3, 4)]     # the parent steps first (pool and device in use)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        if backend == "vulkan" and not _fork_capable():
            with pytest.raises(RuntimeError, match="forked child"):
                list(pool.map(_pool_task, [(device, s) for s in (3, 4)], timeout=240))
            return
        got = list(pool.map(_pool_task, [(device, s) for s in (3, 4)], timeout=240))
    for (name_ref, p_ref), (name, p) in zip(expected, got):
        assert name == name_ref
        for a, b in zip(p_ref, p):
            np.testing.assert_array_equal(a, b)


EXIT = """
    import atexit, sys, threading, time, numpy as np
    early = []
    atexit.register(lambda: early[0]() if early else None)     # registered before hyperopt: runs after it
    import hyperopt
    device = sys.argv[1]
    kwargs = {"use_gpu": False} if device == "numpy" else {"use_gpu": True, "device": device}
    p = np.ones(1000, np.float32)
    opt = hyperopt.AdamW([p], **kwargs)
    opt.step(gradients=[np.ones(1000, np.float32)])

    def save():                       # an exit hook registered by the user: the optimizer still works
        print("saved", len(opt.state_dict()["state"]), flush=True)
    atexit.register(save)

    def late():
        try:
            opt.state_dict()
            print("late: worked", flush=True)
        except RuntimeError as exc:
            print("late:", exc, flush=True)
    early.append(late)

    def spin():                       # a daemon thread still stepping its own optimizer at exit
        q = np.ones(50_000, np.float32)
        mine = hyperopt.AdamW([q], **kwargs)
        while True:
            try:
                mine.step(gradients=[np.ones(50_000, np.float32)])
            except RuntimeError as exc:
                print("daemon:", exc, flush=True)
                return
    threading.Thread(target=spin, daemon=True).start()
    time.sleep(0.5)
    print("main done", flush=True)
"""


@pytest.mark.no_launch   # its kernels run in a child process, which checks its own backend
@pytest.mark.timeout(200)
def test_exit_hooks_and_daemon_threads_at_interpreter_exit(backend):
    for _ in range(3):
        out = _run_script(EXIT, "numpy" if backend == "numpy" else DEVICE, timeout=120)
        assert "main done" in out and "saved 1" in out
        late = [line for line in out.splitlines() if line.startswith("late:")]
        if backend == "numpy":
            assert late == ["late: worked"]      # host arrays: nothing to release
        else:
            assert len(late) == 1 and "released at interpreter exit" in late[0], out
