"""Backend selection: ``use_gpu`` and ``device`` (keyword-only in every optimizer).

``use_gpu``
    ``"auto"`` (default): a hardware GPU through Vulkan if there is one, else the CPU path with no
    warning (a one-time notice on the ``"hyperopt"`` logger).  ``True``: a hardware GPU; without
    one, a ``RuntimeWarning`` once per process (pointing at the caller's line), then the CPU path,
    or an error with ``HYPEROPT_REQUIRE_VULKAN=1``.  ``False``: the CPU path.
``device`` (``None``: the environment variable ``HYPEROPT_DEVICE``, if set, else the GPU or CPU path)
    ``"cpu"``          the CPU path (fused numba kernels or the NumPy twins);
    ``"gpu"``          a hardware GPU (discrete, integrated or virtual) through Vulkan;
    ``"vulkan:cpu"``   a CPU Vulkan driver (lavapipe, SwiftShader), for tests and portability;
    ``"vulkan:<n>"``   the n-th Vulkan device; ``"vulkan:<text>"`` the first whose name contains it.
    A CPU Vulkan driver is only ever taken through an explicit ``vulkan:`` name, and an explicit
    ``vulkan:`` device that matches nothing raises.

Contradictions between the arguments raise ``ValueError``: ``use_gpu=False`` with ``"gpu"`` or a
``vulkan:`` device, ``use_gpu=True`` with ``"cpu"``.  ``HYPEROPT_DEVICE`` is read only when
``use_gpu`` is not ``False``, and picks the device even against ``use_gpu=True`` (the person running
the script has the last word).  ``opt.backend`` always names what really runs.
"""
from __future__ import annotations

import atexit
import collections
import logging
import os
import sys
import warnings

# Kernel dispatches actually executed, by implementation ("numpy", "numba", "vulkan"): a NumPy twin
# or fused kernel counts once per run, a recorded Vulkan dispatch once per submit.  Tests read it to
# prove which implementation ran.  (Defined before the backends, which import it.)
launch_counts: collections.Counter = collections.Counter()

from .numpy_backend import NumpyBackend  # noqa: E402

logger = logging.getLogger("hyperopt")
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_told: set[str] = set()              # one-time warnings and notices already given in this process


class VulkanUnavailable(RuntimeError):
    """No usable Vulkan device for the request (the message says why)."""


@atexit.register
def _release_devices():
    # Registered when hyperopt is imported, so it runs after the exit hooks a user registers later
    # (say, one that saves a checkpoint): devices are released only once those are done.
    vulkan = sys.modules.get(__name__ + ".vulkan")
    if vulkan is not None:
        vulkan.shutdown()


def select_backend(use_gpu="auto", device=None):
    """The backend an optimizer built with ``use_gpu`` and ``device`` runs on (see the module doc)."""
    if use_gpu not in (True, False, "auto") or isinstance(use_gpu, int) and not isinstance(use_gpu, bool):
        raise ValueError(f"use_gpu must be True, False or 'auto', got {use_gpu!r}")
    if device is not None and not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu', 'gpu' or 'vulkan:0', got {type(device).__name__}")
    if device is not None:
        device = device.strip() or None      # "" is "not given" (as an empty environment variable is)
    if device is not None:
        if device not in ("cpu", "gpu") and not device.startswith("vulkan:"):
            raise ValueError(f"unknown device {device!r}: expected 'cpu', 'gpu', 'vulkan:cpu', "
                             "'vulkan:<index>' or 'vulkan:<part of the device name>'")
        if device.startswith("vulkan:") and not device[len("vulkan:"):]:
            raise ValueError("device 'vulkan:' names no device: use 'vulkan:cpu', 'vulkan:<index>' or 'vulkan:<name>'")
    if use_gpu is False and device not in (None, "cpu"):
        raise ValueError(f"use_gpu=False contradicts device={device!r} (which runs on Vulkan); "
                         "drop one of them")
    if use_gpu is True and device == "cpu":
        raise ValueError("use_gpu=True contradicts device='cpu' (the CPU path); drop one of them")
    if device is None and use_gpu is not False:
        device = _device_from_environment()
    if use_gpu is False or device == "cpu":
        return cpu_backend()
    if device is not None and device.startswith("vulkan:"):
        return _vulkan(device)           # explicit: a device that matches nothing raises
    try:
        return _vulkan("gpu")
    except VulkanUnavailable as exc:
        reason = str(exc)
    if use_gpu == "auto" and device is None:
        if "auto" not in _told:
            _told.add("auto")
            logger.info("hyperopt: no hardware GPU found (%s); optimizers run on the CPU path", reason)
        return cpu_backend()
    if os.environ.get("HYPEROPT_REQUIRE_VULKAN") == "1":
        raise VulkanUnavailable(f"HYPEROPT_REQUIRE_VULKAN=1 but no hardware GPU is usable: {reason}")
    if "gpu" not in _told:
        _told.add("gpu")
        warnings.warn(f"a GPU was requested but {reason}; running on the CPU path "
                      f"(use_gpu='auto' says this without a warning)", RuntimeWarning, stacklevel=caller_stacklevel())
    return cpu_backend()


def _device_from_environment():
    device = os.environ.get("HYPEROPT_DEVICE", "").strip() or None
    if device is not None and device not in ("cpu", "gpu") and not device.startswith("vulkan:"):
        raise ValueError(f"HYPEROPT_DEVICE={device!r} is not a device: expected 'cpu', 'gpu' or 'vulkan:...'")
    return device


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
        if getattr(exc, "name", None) != "numba" and "numba" not in _told:   # installed but broken
            _told.add("numba")
            warnings.warn(f"numba is installed but failed to import ({exc}); running the NumPy kernels",
                          RuntimeWarning, stacklevel=caller_stacklevel())
        return NumpyBackend()


def fit_backend(backend, arrays):
    """``backend``, or the CPU path where it cannot update ``arrays`` (float64 parameters on a device
    without shaderFloat64, mixed float32/float64 parameters on Vulkan; float16 ones have no fused
    kernels): then a ``RuntimeWarning`` once per reason (at the caller's line) and a CPU backend
    carrying over the state already kept."""
    reason = getattr(backend, "unsupported", lambda arrays: None)(arrays)
    if reason is None:
        return backend
    cpu = cpu_backend()
    if getattr(cpu, "unsupported", lambda arrays: None)(arrays) is not None:
        cpu = NumpyBackend()
    if reason not in _told:
        _told.add(reason)
        where = "the NumPy kernels" if backend.name == "numba" else "the CPU path"
        warnings.warn(f"{reason}: this optimizer runs on {where} (opt.backend says so)", RuntimeWarning,
                      stacklevel=caller_stacklevel())
    if backend.buffers and getattr(backend, "_params", None):
        cpu.bind(backend._params, backend.buffers)
        for i in range(len(backend._params)):
            for name in backend.buffers:
                cpu.write(name, i, backend.read(name, i))
    backend.close()
    return cpu


def _vulkan(device: str):
    try:
        from .vulkan import VulkanBackend
    except OSError as exc:   # the `vulkan` binding raises OSError when no loader is installed
        raise VulkanUnavailable(f"the Vulkan loader could not be loaded ({exc})") from None
    return VulkanBackend(device)


def caller_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning to the first frame outside this package."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE + os.sep):
        frame, level = frame.f_back, level + 1
    return level
