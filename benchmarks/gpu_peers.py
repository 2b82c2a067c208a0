"""The peers a GPU user would pick instead of hyperopt's AdamW: torch CUDA and a CuPy kernel.

Each runs the same AdamW step (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 1e-2) two ways:
``resident`` (parameters, gradients and state stay on the GPU: the kernel's own speed) and
``numpy`` (NumPy gradients go in and NumPy parameters come back every step, as hyperopt's
``step(gradients=...)`` does).  ``e2e_ms`` is the wall time of a step with the device synchronised;
``kernel_ms`` the device-event time of the update alone.  A peer that cannot run here raises
``PeerUnavailable`` with the reason.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

LR, BETA1, BETA2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 1e-2


class PeerUnavailable(Exception):
    pass


def _repeat(step, budget_s, min_reps=3, max_reps=100, warmup=2):
    for _ in range(warmup):
        step()
    out, start = [], time.perf_counter()
    while len(out) < min_reps or (len(out) < max_reps and time.perf_counter() - start < budget_s):
        out.append(step())
    return out


_cache: dict = {}


def _data(shapes, seed=0):
    """(params, grads) NumPy arrays, made once per shape list (the peers write into the params)."""
    key = tuple(map(tuple, shapes))
    if key not in _cache:
        rng = np.random.default_rng(seed)
        params = [(rng.random(s, dtype=np.float32) - 0.5) * np.float32(0.2) for s in shapes]
        grads = [(rng.random(s, dtype=np.float32) - 0.5) * np.float32(0.02) for s in shapes]
        _cache[key] = (params, grads)
    return _cache[key]


def torch_cuda(shapes, mode: str, budget_s: float) -> dict:
    """torch.optim.AdamW(fused=True) on CUDA; mode "resident" or "numpy"."""
    try:
        import torch
    except ImportError as exc:
        raise PeerUnavailable(f"torch is not importable ({exc})") from None
    if not torch.cuda.is_available():
        raise PeerUnavailable(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)")
    params_np, grads_np = _data(shapes)
    dev = torch.device("cuda")
    params = [torch.tensor(p, device=dev, requires_grad=True) for p in params_np]
    for p, g in zip(params, grads_np):
        p.grad = torch.tensor(g, device=dev)
    opt = torch.optim.AdamW(params, lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=WD, fused=True)
    grads_host = [torch.from_numpy(g) for g in grads_np]
    params_host = [torch.from_numpy(p) for p in params_np]     # the user's NumPy arrays, written in place
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def step():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            if mode == "numpy":
                for p, g in zip(params, grads_host):
                    p.grad.copy_(g)
            start.record()
            opt.step()
            end.record()
            if mode == "numpy":
                for p, h in zip(params, params_host):
                    h.copy_(p)
        torch.cuda.synchronize()
        return time.perf_counter() - t0, start.elapsed_time(end) * 1e-3

    times = _repeat(step, budget_s)
    if not all(np.isfinite(p).all() for p in params_np[:3]):
        raise RuntimeError("torch CUDA AdamW produced non-finite parameters")
    return dict(e2e_ms=statistics.median(t for t, _ in times) * 1e3, kernel_ms=statistics.median(k for _, k in times) * 1e3,
                backend=f"torch {torch.__version__} {torch.cuda.get_device_name(0)}")


_CUPY_ADAMW = None


def cupy_elementwise(shapes, mode: str, budget_s: float) -> dict:
    """One CuPy ElementwiseKernel launch per tensor doing the whole AdamW update."""
    global _CUPY_ADAMW
    try:
        import cupy as cp
    except Exception as exc:       # ImportError, or a CUDA library that fails to load
        raise PeerUnavailable(f"cupy is not importable ({type(exc).__name__}: {exc})") from None
    try:
        n_devices = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise PeerUnavailable(f"cupy finds no CUDA device ({type(exc).__name__}: {exc})") from None
    if n_devices == 0:
        raise PeerUnavailable("cupy finds no CUDA device")
    if _CUPY_ADAMW is None:
        _CUPY_ADAMW = cp.ElementwiseKernel(
            "T g, T decay, T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T neg_step_size, T bc2_sqrt",
            "T p, T m, T v",
            """
            m = m + (g - m) * one_minus_beta1;
            v = v * beta2 + one_minus_beta2 * g * g;
            p = p * decay + (neg_step_size * m) / (sqrt(v) / bc2_sqrt + eps);
            """, "hyperopt_peer_adamw")
    params_np, grads_np = _data(shapes)
    params = [cp.asarray(p) for p in params_np]
    grads = [cp.asarray(g) for g in grads_np]
    m = [cp.zeros_like(p) for p in params]
    v = [cp.zeros_like(p) for p in params]
    f32 = np.float32
    state = {"t": 0}
    start, end = cp.cuda.Event(), cp.cuda.Event()

    def step():
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        state["t"] += 1
        t = state["t"]
        scal = (f32(1 - LR * WD), f32(1 - BETA1), f32(BETA2), f32(1 - BETA2), f32(EPS),
                f32(-LR / (1 - BETA1 ** t)), f32(np.sqrt(1 - BETA2 ** t)))
        if mode == "numpy":
            for g_dev, g in zip(grads, grads_np):
                g_dev.set(g)
        start.record()
        for p, g, mm, vv in zip(params, grads, m, v):
            _CUPY_ADAMW(g, *scal, p, mm, vv)
        end.record()
        if mode == "numpy":
            for p, h in zip(params, params_np):
                p.get(out=h)
        cp.cuda.Device().synchronize()
        return time.perf_counter() - t0, cp.cuda.get_elapsed_time(start, end) * 1e-3

    times = _repeat(step, budget_s)
    if not bool(cp.isfinite(params[0]).all()):
        raise RuntimeError("the CuPy AdamW kernel produced non-finite parameters")
    return dict(e2e_ms=statistics.median(t for t, _ in times) * 1e3, kernel_ms=statistics.median(k for _, k in times) * 1e3,
                backend=f"cupy {cp.__version__}")


PEERS = {"torch-cuda fused": torch_cuda, "cupy elementwise": cupy_elementwise}
