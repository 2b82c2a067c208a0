"""``VulkanBackend``: the backend interface (bind, read, write, clear, set_param, program, run, close)."""
from __future__ import annotations

import functools
import threading
import weakref

import numpy as np
import vulkan as vk

from .. import VulkanUnavailable
from . import device as _device     # _device._live_backends: replaced in a forked child, so read each time
from .device import context
from ...kernels.core import segment_totals
from .layout import ALIGN, plan_blocks
from .memory import Buffer
from .program import VulkanProgram


class PrecisionUnsupported(TypeError):
    """Parameters this device cannot update (float64 without shaderFloat64, mixed precisions):
    ``hyperopt.backends.fit_backend`` moves such an optimizer to the CPU path, with a warning."""


# ============================================================================ the backend
def _guarded(method):
    """A backend method: one call at a time per backend, never on a closed or inherited device."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        with self.lock:
            if self._closed is not None:
                raise RuntimeError(self._closed)
            if not self.ctx.owned:
                raise RuntimeError(
                    f"this optimizer's Vulkan device belongs to the parent process (pid {self.ctx.pid}): an "
                    "optimizer cannot be used across fork(); build a new optimizer in the child process")
            return method(self, *args, **kwargs)
    return guarded


class VulkanBackend:
    def __init__(self, device: str = "gpu"):
        try:
            self.ctx = context(str(device))
        except (VulkanUnavailable, ValueError):  # already says why
            raise
        except Exception as exc:   # a broken driver must not take the user's training loop down
            raise VulkanUnavailable(f"Vulkan initialisation failed: {exc!r}") from None
        self.lock = threading.RLock()
        self._closed: str | None = None      # why calls are refused, once closed
        self.name = f"vulkan:{self.ctx.name}"
        self.buffers: tuple[str, ...] = ()
        self._arenas: dict[str, Buffer] = {}
        self._staging: dict[str, Buffer] = {}
        # everything this backend allocated, shared with the finalizer (which must not hold the backend)
        self._owned: dict = {"buffers": [], "programs": [], "ctx": self.ctx}
        self._programs: list[VulkanProgram] = self._owned["programs"]
        self._params: list[np.ndarray] = []
        self.dtype, self.itemsize, self.variant = np.dtype(np.float32), 4, ""
        self._ctl = self._host(16)
        self._ctl_host = np.zeros(0, np.float32)   # the optimizer's copy: never a view of device memory
        self._active = None
        # None in one process; under ``comm`` the distributed layer's view of the whole layout (global
        # ``segment_blocks`` and ``n_blocks``, and ``gather``, which returns every rank's block partials)
        self.shard = None
        self._finalizer = weakref.finalize(self, _release, self._owned)
        self._finalizer.atexit = False     # the exit hook (shutdown) closes live backends in order
        _device._live_backends.add(self)

    # -------------------------------------------------------------- layout
    def unsupported(self, arrays) -> str | None:
        """Why this device cannot update ``arrays`` (None if it can)."""
        try:
            self._precision(arrays)
        except PrecisionUnsupported as exc:
            return str(exc)
        return None

    def _precision(self, arrays):
        for k, a in enumerate(arrays):
            if a.dtype not in (np.float32, np.float64):
                raise PrecisionUnsupported(f"the Vulkan backend updates float32 and float64 parameters; parameter {k} is {a.dtype}")
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise PrecisionUnsupported("the Vulkan backend runs one precision per optimizer; the parameters mix float32 and float64")
        dtype = np.dtype(dtypes.pop() if dtypes else np.float32)
        if dtype == np.float64 and not self.ctx.float64:
            raise PrecisionUnsupported(f"{self.ctx.name} has no shaderFloat64 feature (float64 parameters)")
        return dtype

    @_guarded
    def bind(self, arrays, state_names):
        dtype = self._precision(arrays)
        sizes = np.array([a.size for a in arrays], np.int64)
        offsets, rows, blocks, segment_blocks, total = plan_blocks(sizes, self.ctx.row_size)   # checked first
        old = {name: [self.read(name, i) for i in range(len(self._params))] for name in self.buffers} if self._arenas else {}
        old_ids = {id(a): i for i, a in enumerate(self._params)}
        self._free_layout()
        self.dtype, self.itemsize, self.variant = dtype, dtype.itemsize, ".f64" if dtype == np.float64 else ""
        self._params = list(arrays)
        self.buffers = tuple(state_names)
        self.offsets, self._rows, self.sizes = offsets, rows, sizes
        self.n_rows = len(self._rows)
        self._work = self._host(self._rows.nbytes)
        self._work.view.view(np.uint32).reshape(-1, 4)[:] = self._rows
        # reductions: rows -> block partials (``_blocks``: first row, row count per block), block
        # partials -> the segment totals that control kernels read (``_segment_blocks``)
        self.n_blocks, self.segment_blocks = len(blocks), segment_blocks
        self._blocks = self._host(blocks.nbytes)
        self._blocks.view.view(np.uint32).reshape(-1, 2)[: len(blocks)] = blocks
        self._segment_blocks = self._host(segment_blocks.nbytes)
        self._segment_blocks.view.view(np.uint32).reshape(-1, 2)[: len(arrays)] = segment_blocks
        self._windows = self._plan_windows(total)
        for name in ("param", "grad") + self.buffers:
            self._arenas[name] = self._arena(total * self.itemsize)
        if self.ctx.staging:     # device-local memory starts with whatever was there before
            arenas = list(self._arenas.values())
            self.ctx.one_shot(lambda cmd: [vk.vkCmdFillBuffer(cmd, a.buffer, 0, a.nbytes, 0) for a in arenas])
            for name in ("param", "grad"):
                self._staging[name] = self._host(total * self.itemsize)
        self._slices = [slice(int(o), int(o + n)) for o, n in zip(self.offsets, sizes)]
        self._grad_in = (self._staging.get("grad") or self._arenas["grad"]).floats(dtype)
        self._param_out = (self._staging.get("param") or self._arenas["param"]).floats(dtype)
        self._active = None
        self._touched: set[int] = set()     # segments whose state may be non-zero
        self.reload_params()
        # carry state of parameters that were bound before (matched by identity)
        new_ids = {id(a): i for i, a in enumerate(self._params)}
        for name, values in old.items():
            if name in self.buffers:
                for aid, j in old_ids.items():
                    if aid in new_ids:
                        self.write(name, new_ids[aid], values[j])

    def _plan_windows(self, total):
        """Split the rows into dispatches whose arena span fits one binding and one dispatch."""
        limit = self.ctx.max_binding_bytes // self.itemsize // ALIGN * ALIGN
        windows, start = [], 0
        while start < self.n_rows:
            base = int(self._rows[start, 1]) // ALIGN * ALIGN
            end = start
            while (end < self.n_rows and end - start < self.ctx.max_groups
                   and int(self._rows[end, 2]) - base <= limit):
                end += 1
            if end == start:
                raise RuntimeError("a work row does not fit the device's storage-buffer binding limit")
            span = (int(self._rows[end - 1, 2]) - base + ALIGN - 1) // ALIGN * ALIGN
            windows.append((start, end - start, base, max(span, ALIGN)))
            start = end
        return windows

    def _host(self, nbytes):
        b = Buffer(self.ctx, nbytes, host=True)
        self._owned["buffers"].append(b)
        return b

    def _arena(self, nbytes):
        b = Buffer(self.ctx, nbytes, host=not self.ctx.staging)
        self._owned["buffers"].append(b)
        return b

    def _free_layout(self):
        for p in self._programs:
            p.free()
        self._programs.clear()
        for b in self._owned["buffers"]:
            if b is not self._ctl:
                b.free()
        self._owned["buffers"][:] = [self._ctl]
        self._arenas.clear()
        self._staging.clear()

    # -------------------------------------------------------------- host <-> device
    def _copy(self, src: Buffer, dst: Buffer, src_offset=0, dst_offset=0, nbytes=None):
        nbytes = min(src.nbytes, dst.nbytes) if nbytes is None else nbytes
        if nbytes:
            self.ctx.one_shot(lambda cmd: vk.vkCmdCopyBuffer(cmd, src.buffer, dst.buffer, 1, [
                vk.VkBufferCopy(srcOffset=src_offset, dstOffset=dst_offset, size=nbytes)]))

    @_guarded
    def read(self, name, i):
        arena, r = self._arenas[name], self._slices[i]
        shape = self._params[i].shape
        if arena.view is not None:
            return arena.floats(self.dtype)[r].reshape(shape).copy()
        k = self.itemsize
        tmp = Buffer(self.ctx, (r.stop - r.start) * k, host=True)     # staging for this region only
        try:
            self._copy(arena, tmp, r.start * k, 0, (r.stop - r.start) * k)
            return tmp.floats(self.dtype)[: r.stop - r.start].reshape(shape).copy()
        finally:
            tmp.free()

    @_guarded
    def clear(self, i):
        """Zero parameter i's region of every state buffer (a fresh state), in one go."""
        if i not in self._touched:
            return                           # never written since allocation: still zero
        self._touched.discard(i)
        r = self._slices[i]
        arenas = [self._arenas[name] for name in self.buffers]
        if not self.ctx.staging:
            for arena in arenas:
                arena.floats(self.dtype)[r] = 0.0
        elif r.stop > r.start:
            k = self.itemsize
            self.ctx.one_shot(lambda cmd: [vk.vkCmdFillBuffer(cmd, a.buffer, r.start * k, (r.stop - r.start) * k, 0)
                                           for a in arenas])

    @_guarded
    def write(self, name, i, values):
        self._touched.add(i)
        arena, r = self._arenas[name], self._slices[i]
        values = np.broadcast_to(np.asarray(values, self.dtype), self._params[i].shape).reshape(-1)
        if arena.view is not None:
            arena.floats(self.dtype)[r] = values
            return
        k = self.itemsize
        tmp = Buffer(self.ctx, (r.stop - r.start) * k, host=True)
        try:
            tmp.floats(self.dtype)[: r.stop - r.start] = values
            self._copy(tmp, arena, 0, r.start * k, (r.stop - r.start) * k)
        finally:
            tmp.free()

    @_guarded
    def set_param(self, i, array):
        """The caller rebound parameter i to ``array`` (same shape and dtype); its state is kept.
        Runs with ``upload_params`` copy it in; nothing moves now."""
        self._params[i] = array

    @_guarded
    def reload_params(self):
        """Copy the user's parameter arrays to the device (runs with ``upload_params`` do it too)."""
        target = self._staging.get("param") or self._arenas["param"]
        view = target.floats(self.dtype)
        for i, a in enumerate(self._params):
            view[self._slices[i]] = a.reshape(-1)
        if self.ctx.staging:
            self._copy(target, self._arenas["param"])

    @_guarded
    def ctl_array(self, size):
        if self._ctl.nbytes != max(16, size * 4):
            for p in self._programs:
                p.free()
            self._programs.clear()
            self._ctl.free()
            self._owned["buffers"].remove(self._ctl)
            self._ctl = self._host(size * 4)
        if self._ctl_host.size != size:
            self._ctl_host = np.zeros(size, np.float32)
        return self._ctl_host

    # -------------------------------------------------------------- programs
    @_guarded
    def program(self, dispatches):
        p = VulkanProgram(self, dispatches)
        self._programs.append(p)
        return p

    @_guarded
    def run(self, program, grads=None, download=True, upload_params=False):
        if grads is not None:
            self._upload(grads)
        if upload_params:       # the caller's arrays are the truth (edits between steps are kept)
            view, slices, params = self._param_out, self._slices, self._params
            for i in self._active_list:
                view[slices[i]] = params[i].reshape(-1)
        if program.pool is None:
            raise RuntimeError("this program was freed (the parameters or the control buffer changed since it was built)")
        staging = self.ctx.staging
        self._last_program = program
        ctl = self._ctl.floats()[: self._ctl_host.size]
        ctl[:] = self._ctl_host
        for mapped, table in zip(program.mapped_tables, program.tables):
            mapped[...] = table
        sums = []

        def total(j):      # after the stage that ends with summing kernel j: its per-segment sums
            buf, n = program.sum_outputs[j]
            partials = buf.floats(self.dtype)[: self.n_blocks * n].reshape(-1, n).astype(np.float64)
            if self.shard is None:
                sums.append(segment_totals(partials, self.segment_blocks))
                return
            everyone = self.shard.gather(partials)         # every rank's block partials, in global block order
            program.global_partials[j][: everyone.size] = everyone.reshape(-1)
            sums.append(segment_totals(everyone, self.shard.segment_blocks))
        program.launch(upload=grads is not None and staging, upload_params=upload_params and staging,
                       download=download and staging, between=total)
        self._ctl_host[:] = ctl
        if download:
            view, slices, params = self._param_out, self._slices, self._params
            for i in self._active_list:
                p = params[i]
                p[...] = view[slices[i]].reshape(p.shape)
        if self.shard is None:
            for j in range(len(program.sum_outputs)):
                total(j)
        return sums

    @property
    def last_kernel_seconds(self):
        """GPU time of the last step's dispatches alone (timestamps on), else None."""
        program = getattr(self, "_last_program", None)
        return program.kernel_seconds if program is not None else None

    @property
    def last_submit_seconds(self):
        """GPU time of the last step's whole command buffer, copies included (timestamps on), else None."""
        program = getattr(self, "_last_program", None)
        return program.submit_seconds if program is not None else None

    def _upload(self, grads):
        view, slices = self._grad_in, self._slices
        for i, g in grads.items():
            view[slices[i]] = g.reshape(-1)
        active = frozenset(grads)
        self._touched |= active
        if active != self._active:
            self._active, self._active_list = active, sorted(active)
            mask = np.zeros(len(self._params), bool)
            mask[list(active)] = True
            rows = self._work.view.view(np.uint32).reshape(-1, 4)
            on = mask[self._rows[:, 0]]
            rows[:, 2] = np.where(on, self._rows[:, 2], self._rows[:, 1])

    def close(self):
        self._close("this optimizer was closed: close() released its Vulkan memory; build a new optimizer")

    def _close(self, reason, wait=None):
        if not self.lock.acquire(timeout=-1 if wait is None else wait):
            return       # a step that never finishes: its memory goes with the process
        try:
            if self._closed is None:
                self._closed = reason
                # detach, then release: a finalizer called after weakref's own exit hook does nothing
                if self._finalizer.detach() is not None:
                    _release(self._owned)       # skips the parent's objects (after fork)
        finally:
            self.lock.release()


def _release(res):
    if not res["ctx"].owned:
        return          # garbage collected in a forked child: the objects are the parent's
    with res["ctx"].lock:
        for p in res["programs"]:
            p.free()
        for b in res["buffers"]:
            b.free()
