"""The kernel table: every device kernel is declared once, next to its NumPy twin.

A declaration names the kernel's arena buffers (binding order), its per-segment scalars (the field
order of the ``Scalars`` struct in the GLSL), the sums it produces per segment, and whether it reads
the optimizer's small control buffer.  Both backends read the same declaration: the NumPy backend
calls the twin, the Vulkan backend derives bindings and the scalar-table layout from it and runs
``shaders/<name with dashes>.glsl``.  ``tests/test_kernel_table.py`` checks every GLSL file against
its declaration, so the two can never disagree silently.

Kinds of kernel
---------------
``elementwise``  runs over every element of every active parameter (one "segment" per parameter).
                 Twin: ``fn(*buffers, **scalars) -> tuple of sums | None``, called on matching
                 slices (possibly chunks) of the buffers, updating them in place.  When
                 ``ctl=True`` it also gets ``ctl=`` (the control array) and ``segment=`` (its index).
``control``      runs once per step on small per-segment/per-group data (scalar logic that must
                 stay on the device to keep one submit per step).  Twin:
                 ``fn(ctl, sums, table)`` with ``sums`` the per-segment sums of the previous
                 sum-producing kernel and ``table`` this kernel's scalar table, updating ``ctl``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

ELEMENTWISE = "elementwise"
CONTROL = "control"

KERNELS: dict[str, "Kernel"] = {}


@dataclass(frozen=True)
class Kernel:
    name: str
    kind: str
    buffers: tuple[str, ...]
    scalars: tuple[str, ...]
    sums: tuple[str, ...] = ()
    ctl: bool = False
    numpy: Callable = field(default=None, repr=False, compare=False)

    @property
    def shader(self) -> str:
        """File stem of the GLSL twin: ``adamw_update`` -> ``adamw-update``."""
        return self.name.replace("_", "-")

    def __call__(self, *args, **kwargs):
        return self.numpy(*args, **kwargs)


def dispatch(kernel: Kernel, names) -> tuple[Kernel, tuple[str, ...]]:
    """A program entry: the kernel and the buffer names bound to its buffers (default: its own)."""
    names = tuple(names) if names else kernel.buffers
    if len(names) != len(kernel.buffers):
        raise ValueError(f"kernel {kernel.name} takes buffers {kernel.buffers}, got {names}")
    return kernel, names


def kernel(name: str, *, kind: str = ELEMENTWISE, buffers=(), scalars=(), sums=(), ctl=False):
    """Declare a kernel and register its NumPy twin (used as a decorator)."""
    if kind not in (ELEMENTWISE, CONTROL):
        raise ValueError(f"unknown kernel kind {kind!r}")

    def register(fn: Callable) -> Kernel:
        if name in KERNELS:
            raise ValueError(f"kernel {name!r} declared twice")
        k = Kernel(name, kind, tuple(buffers), tuple(scalars), tuple(sums), bool(ctl), fn)
        KERNELS[name] = k
        return k

    return register


_scratch: dict[tuple, np.ndarray] = {}


def scratch(like: np.ndarray, slot: int) -> np.ndarray:
    """A reusable temporary shaped like ``like`` (twins run on cache-sized chunks, so reusing a
    few buffers avoids an allocation, and its page faults, per operation)."""
    key = (like.shape, like.dtype.str, slot, threading.get_ident())
    buf = _scratch.get(key)
    if buf is None:
        if len(_scratch) > 256:
            _scratch.clear()
        buf = _scratch[key] = np.empty(like.shape, like.dtype)
    return buf
