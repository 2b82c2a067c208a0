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

# Kernel dispatches actually executed, by implementation ("numpy", "numba", "vulkan"): a NumPy twin
# or fused kernel counts once per run, a recorded Vulkan dispatch once per submit.  Tests read it to
# prove which implementation ran.
launch_counts: collections.Counter = collections.Counter()

from .numpy_backend import NumpyBackend  # noqa: E402  (imports launch_counts)

_warned: set[str] = set()


def select_backend(use_gpu: bool, device=None):
    if not use_gpu:
        return NumpyBackend()
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
        warnings.warn(f"use_gpu=True but {reason}; running on NumPy", RuntimeWarning, stacklevel=4)
    return NumpyBackend()
