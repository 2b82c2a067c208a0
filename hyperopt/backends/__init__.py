"""Backend selection.

``use_gpu=False`` runs the NumPy twins.  ``use_gpu=True`` looks for a Vulkan device:

* ``device=None`` reads the environment variable ``HYPEROPT_DEVICE`` (default ``"gpu"``).
* ``"gpu"``: a hardware GPU (discrete, integrated or virtual); a CPU implementation such as lavapipe
  is *not* taken, because NumPy is faster on the CPU.
* ``"cpu"``: a CPU Vulkan implementation (lavapipe), for tests and portability checks.
* ``"any"``: the first device of any type; an integer or any other string picks by index or by a
  substring of the device name.

If nothing suitable is found (or no Vulkan loader is installed) the optimizer warns once and runs on
NumPy; ``opt.backend`` says which backend really runs.  With ``HYPEROPT_REQUIRE_VULKAN=1`` that
fallback raises instead (the test suite uses this to prove the shaders ran).
"""
from __future__ import annotations

import collections
import os
import warnings

from .numpy_backend import NumpyBackend

_warned: set[str] = set()

#: kernel runs per implementation ("numpy", "numba", "vulkan"): tests read it to prove which ran
launch_counts: collections.Counter = collections.Counter()


def cpu_backend():
    """The CPU backend: the fused numba kernels when numba imports, else the NumPy twins.

    ``HYPEROPT_CPU_KERNELS=numpy`` picks the twins, ``=numba`` insists on the fused kernels."""
    choice = os.environ.get("HYPEROPT_CPU_KERNELS", "").strip().lower()
    if choice not in ("", "numba", "numpy"):
        raise ValueError(f"HYPEROPT_CPU_KERNELS must be 'numba' or 'numpy', got {choice!r}")
    if choice == "numpy":
        return NumpyBackend()
    try:
        from .numba_backend import NumbaBackend
        return NumbaBackend()
    except ImportError as exc:
        if choice == "numba":
            raise RuntimeError(f"HYPEROPT_CPU_KERNELS=numba but numba cannot be imported ({exc})") from exc
        if getattr(exc, "name", None) != "numba" and "numba" not in _warned:   # installed but broken
            _warned.add("numba")
            warnings.warn(f"numba is installed but failed to import ({exc}); running the NumPy kernels",
                          RuntimeWarning, stacklevel=4)
        return NumpyBackend()


def select_backend(use_gpu: bool, device=None):
    if not use_gpu:
        return cpu_backend()
    device = os.environ.get("HYPEROPT_DEVICE", "gpu") if device is None else device
    try:
        from .vulkan import VulkanBackend, VulkanUnavailable
    except OSError as exc:   # pragma: no cover - the `vulkan` binding raises OSError without a loader
        return _fallback(f"the Vulkan loader could not be loaded ({exc})")
    try:
        return VulkanBackend(device)
    except VulkanUnavailable as exc:
        return _fallback(str(exc))


def _fallback(reason: str):
    if os.environ.get("HYPEROPT_REQUIRE_VULKAN") == "1":
        raise RuntimeError(f"HYPEROPT_REQUIRE_VULKAN=1 but the Vulkan backend is unavailable: {reason}")
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"use_gpu=True but {reason}; running on the CPU", RuntimeWarning, stacklevel=4)
    return cpu_backend()
