"""The fused CPU backend: each elementwise kernel's fused body, compiled by numba, in one pass.

Same interface and state layout as the NumPy backend (it only replaces how elementwise kernels
run).  A kernel's run is one compiled call for all its parameters: the work is a list of items,
each a whole small parameter or one block of ``CHUNK`` elements (counted from the parameter's
start) of a large one (``PIECE`` elements where the kernels produce no sums), shared out over
numba's threads; each item's sums are totalled from its lanes, then a parameter's block partials
are added in block order, so the sums are the NumPy twins' bits whatever the thread count.  The
compiled code reaches each parameter's buffers through their addresses (a table of pointers, one
row per parameter), so one call serves any number of tensors; runs too small to share out take a
serial build of the same code (no thread launch).  Two fused kernels that follow each other in a
program run as one call, the second on each item right after the first, while the item's buffers
are in cache (``_drive_pair``).  A program is turned into these passes once (``_schedule``).
Control kernels with a fused body run it compiled (``_control``).

Gradients are checked (finite, squares finite) by a compiled pass too, before anything moves
(``check_gradients``), sharing the pointer table the run then uses; a loop that refills the same
gradient arrays every step keeps that table from one step to the next.  Where a step's first pass
only reads (the hypergradient AdamWs' reduction), the check rides on that pass instead, each work item's
gradient elements checked from cache right after the kernel has read them (``_drive_checked``).

Compilation is lazy (numba is imported when the first optimizer picks this backend, kernels are
compiled at their first run) and cached on disk in ``NUMBA_CACHE_DIR``, which defaults here to
``$XDG_CACHE_HOME/hyperopt/numba``; where that cannot be written, kernels compile in memory each
process.

Threads and processes: numba's ``tbb`` threading layer (PyPI ``tbb``, installed with the ``numba``
extra where wheels exist) is thread-safe and fork-safe and starts a parallel region in
microseconds.  Without it, ``workqueue`` (the one other layer that survives ``fork``) is used, and
since it must never run two parallel regions at once, one lock serialises them there (renewed in a
forked child).  ``NUMBA_THREADING_LAYER`` overrides the choice.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import inspect
import logging
import operator
import os
import sys
import tempfile
import threading
import types

import numpy as np

from ..kernels.core import CHUNK, CONTROL, FUSED_HELPERS, LANES, lanes_total
from . import launch_counts
from .numpy_backend import NumpyBackend

_log = logging.getLogger("hyperopt")
_numba = None
_cache = False
_compiled: dict[tuple, object] = {}
# IEEE arithmetic as NumPy does it: no fast-math (no reassociation, no FMA contraction), and
# division by zero gives inf/nan instead of raising.
_FLAGS = dict(fastmath=False, error_model="numpy")
_compile_lock = threading.Lock()
_parallel_lock = threading.Lock()
_threadsafe = False          # the threading layer runs parallel regions from several threads at once
#: elements per work item of a pass whose kernels produce no sums, and of the gradient check (only
#: sums tie items to the ``CHUNK``-element blocks): on tbb threads a tensor of 1e5 elements then runs
#: on two threads (13% faster for AdamW, in one process against whole blocks; no change measured at
#: 1e6 or 4e6)
PIECE = 1 << 15


def _renew_locks():
    global _parallel_lock, _compile_lock
    _parallel_lock, _compile_lock = threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_locks)   # a lock held by another thread at fork stays held


def cache_dir() -> str:
    """Where compiled kernels are kept: ``NUMBA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/hyperopt/numba``."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hyperopt", "numba")


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


def _load_tbb() -> bool:
    """Load the PyPI ``tbb`` wheel's library, if installed.  The wheel puts ``libtbb.so.12`` in the
    environment's ``lib`` folder, which the dynamic loader does not search; loaded first, it is the
    one numba's tbb layer finds."""
    try:
        files = importlib.metadata.files("tbb") or ()
    except importlib.metadata.PackageNotFoundError:
        return False
    names = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}
    wanted = names.get(sys.platform)
    for f in files:
        if f.name == wanted:
            try:
                ctypes.CDLL(str(f.locate()), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
                return True
            except OSError:
                return False
    return False


def load_numba():
    """Import and configure numba once (raises ImportError where it is missing or broken).

    Only numba's config is set, not the environment, and only what the user left unset."""
    global _numba, _cache, _threadsafe
    if _numba is not None:
        return _numba
    import numba
    path = cache_dir()
    _cache = _writable(path)
    if not _cache:
        _log.info("hyperopt: %s is not writable; numba kernels are compiled in memory in each process", path)
    elif not os.environ.get("NUMBA_CACHE_DIR"):
        numba.config.CACHE_DIR = path
    layer = os.environ.get("NUMBA_THREADING_LAYER")
    if not layer:
        layer = "tbb" if _load_tbb() else "workqueue"
        if layer == "workqueue":
            _log.info("hyperopt: the tbb package is not installed; numba's workqueue threads run one "
                      "parallel kernel at a time and start slower (pip install tbb)")
        numba.config.THREADING_LAYER = layer
    _threadsafe = layer in ("tbb", "threadsafe", "safe")
    _numba = numba
    return numba


# ------------------------------------------------------------------ the compiled driver
# ``items[w] = (segment, lo, hi)``; segment ``i`` has ``sizes[i]`` elements in the buffers whose
# addresses are ``addresses[i]``, its scalars in ``table[i]``.  ``partials[w]`` gets item ``w``'s
# sums; ``sums[i]`` (zeros on entry) their total over the segment's items, in item order.
# ``_item`` (``_run_item`` bound to a kernel's ``_body`` and ``_views``) and ``prange`` are bound
# per kernel, variant and buffer dtypes (see ``_driver``).
def _drive(items, addresses, sizes, table, ctl, partials, sums):
    for w in prange(items.shape[0]):  # noqa: F821 - bound by _driver
        i = items[w, 0]
        # unsigned bounds: indices the compiler knows are non-negative need no wraparound, so it vectorises
        lo, hi = np.uint64(items[w, 1]), np.uint64(items[w, 2])
        _item(lo, hi, addresses[i], sizes[i], table[i], ctl, partials[w])  # noqa: F821
    _add_partials(items, partials, sums)  # noqa: F821


# Two kernels that follow each other in a program, item by item: the second runs on an item right
# after the first, while the item's buffers are still in cache.  Elementwise kernels read and write
# element ``i`` alone, so this gives the bits of running one after the other.  The second kernel's
# arguments carry a 2 (``_item2``, ``addresses2``, ...).
def _drive_pair(items, addresses, sizes, table, ctl, partials, sums, addresses2, table2, partials2, sums2):
    for w in prange(items.shape[0]):  # noqa: F821 - bound by _driver
        i = items[w, 0]
        lo, hi = np.uint64(items[w, 1]), np.uint64(items[w, 2])
        _item(lo, hi, addresses[i], sizes[i], table[i], ctl, partials[w])  # noqa: F821
        _item2(lo, hi, addresses2[i], sizes[i], table2[i], ctl, partials2[w])  # noqa: F821
    _add_partials(items, partials, sums)  # noqa: F821
    _add_partials(items, partials2, sums2)  # noqa: F821


# One kernel on one work item: its body on elements ``lo:hi`` of the buffers at ``address`` (``n``
# elements each), its sums' lanes totalled into ``partials`` (one per sum).
def _run_item(lo, hi, address, n, row, ctl, partials):
    lanes = np.zeros((partials.shape[0], LANES))
    _body(lo, hi, _views(address, n), row, ctl, lanes)  # noqa: F821 - bound by _driver
    for k in range(partials.shape[0]):
        partials[k] = _lanes_total(lanes[k])  # noqa: F821 - bound by _driver


def _add_partials(items, partials, sums):
    """Each segment's sums: its items' partials added in item order (the same bits for any threads)."""
    for w in range(items.shape[0]):
        for k in range(partials.shape[1]):
            sums[items[w, 0], k] += partials[w, k]


# The gradient check: the first segment (in item order) holding an element that is not finite or
# whose square is not, else -1.  ``limit`` has the gradients' dtype (NaN compares False).
def _drive_check(items, addresses, sizes, limit):
    bad = np.zeros(items.shape[0], np.bool_)
    for w in prange(items.shape[0]):  # noqa: F821 - bound by _driver
        g = _views(addresses[items[w, 0]], sizes[items[w, 0]])[0]  # noqa: F821 - bound by _driver
        bad[w] = not _within(g, np.uint64(items[w, 1]), np.uint64(items[w, 2]), limit)  # noqa: F821
    return _first_bad(items, bad)  # noqa: F821


# One kernel whose pass only reads (its sums are all it gives) with the gradient check folded in:
# each item's gradient elements are checked right after the body has read them, from cache, instead
# of in a pass over memory of their own.  Returns what ``_drive_check`` returns; the sums are only
# added when every element passed.
def _drive_checked(items, addresses, sizes, table, ctl, partials, sums, grad_column, limit):
    bad = np.zeros(items.shape[0], np.bool_)
    for w in prange(items.shape[0]):  # noqa: F821 - bound by _driver
        i = items[w, 0]
        lo, hi = np.uint64(items[w, 1]), np.uint64(items[w, 2])
        _item(lo, hi, addresses[i], sizes[i], table[i], ctl, partials[w])  # noqa: F821
        g = _grad_view(addresses[i, grad_column:], sizes[i])[0]  # noqa: F821 - bound by _driver
        bad[w] = not _within(g, lo, hi, limit)  # noqa: F821
    first = _first_bad(items, bad)  # noqa: F821
    if first < 0:
        _add_partials(items, partials, sums)  # noqa: F821
    return first


def _within(g, lo, hi, limit):
    """Whether no element of ``g[lo:hi]`` exceeds ``limit`` in magnitude (a NaN compares False)."""
    ok = True
    for j in range(lo, hi):
        ok &= abs(g[j]) <= limit
    return ok


def _first_bad(items, bad):
    """The segment of the first item (in item order) marked bad, else -1."""
    for w in range(items.shape[0]):
        if bad[w]:
            return items[w, 0]
    return -1


def _views_factory(numba, dtypes):
    """A compiled ``views(row, n)``: the tuple of ``n``-element arrays at the addresses ``row[k]``, of
    ``dtypes[k]`` (a gradient may be wider than its parameter, e.g. HCNaturalGrad's float64 draws)."""
    from numba.core import types as nt
    from numba.extending import intrinsic

    def pointer_to(dtype):
        @intrinsic
        def pointer(typingctx, address):
            def codegen(context, builder, signature, args):
                return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
            return nt.CPointer(numba.from_dtype(dtype))(nt.int64), codegen
        return pointer

    env = {"carray": numba.carray, **{f"pointer{k}": pointer_to(d) for k, d in enumerate(dtypes)}}
    views = ", ".join(f"carray(pointer{k}(row[{k}]), n)" for k in range(len(dtypes)))
    exec(f"def views(row, n):\n    return ({views},)\n", env)
    return numba.njit(_renamed(env["views"], env, f"views_{_types_tag((dtypes,))}"), **_FLAGS)


def _jit_helpers(fn, numba, done):
    """``fn``'s globals with every fused helper it names replaced by its compiled version."""
    env = dict(fn.__globals__)
    for name in fn.__code__.co_names:
        helper = FUSED_HELPERS.get(name)
        if helper is not None and env.get(name) is helper:
            if name not in done:
                done[name] = None          # guards recursion
                done[name] = numba.njit(types.FunctionType(helper.__code__, _jit_helpers(helper, numba, done),
                                                           name, helper.__defaults__), **_FLAGS)
            env[name] = done[name]
    return env


@functools.lru_cache(maxsize=1)
def _kernels_hash() -> str:
    """A short hash of the source of every module of ``hyperopt.kernels`` (bodies and helpers)."""
    digest = hashlib.sha1()
    for name in sorted(m for m in sys.modules if m.startswith("hyperopt.kernels")):
        module = sys.modules[name]
        try:
            digest.update(inspect.getsource(module).encode())
        except (OSError, TypeError):       # no source shipped: the compiled file's bytes instead
            with open(module.__file__, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:12]


def _compiled_body(kernel, numba):
    body = kernel.fused
    return numba.njit(types.FunctionType(body.__code__, _jit_helpers(body, numba, {}), body.__name__), **_FLAGS)


def _types_tag(dtypes) -> str:
    """``dtypes`` (per kernel, one per buffer) as a name: ``float32_float64__float32``."""
    return "__".join("_".join(np.dtype(d).name for d in types_k) for types_k in dtypes)


def _renamed(fn, env, name):
    """``fn``'s code with the globals ``env``, named (and qualified) ``name``.

    A compiled function's symbol is its qualified name and a counter that restarts in every
    process, so two processes can give different bodies the same symbol; when the drivers that
    they cached on disk meet in a third process, one body runs in place of the other.  Every copy
    with bindings of its own therefore gets a name unique to what it runs."""
    copy = types.FunctionType(fn.__code__, env, name, fn.__defaults__)
    copy.__qualname__ = name
    return copy


def _driver(kernels, parallel: bool, dtypes, check_column=None):
    """The compiled driver of ``kernels`` (one kernel, or two run item by item; ``None``: the
    gradient check) for buffers of ``dtypes`` (per kernel, one per buffer), parallel over items or
    serial, built once per process.  ``check_column``: the one kernel's gradient buffer, checked
    in the same pass (``_drive_checked``)."""
    name = "+".join(k.name for k in kernels) if kernels is not None else "check"
    if check_column is not None:
        name += f"_checking_{check_column}"
    fn = _compiled.get((name, parallel, dtypes))      # callers pass tuples of np.dtype: no conversion
    if fn is not None:
        return fn
    key = (name, parallel, dtypes)
    with _compile_lock:
        if key not in _compiled:
            numba = load_numba()
            env = dict(_drive.__globals__, _lanes_total=numba.njit(lanes_total, **_FLAGS),
                       prange=numba.prange if parallel else range,
                       _within=numba.njit(_within, **_FLAGS), _first_bad=numba.njit(_first_bad, **_FLAGS))
            if kernels is None:
                template = _drive_check
                env["_views"] = _views_factory(numba, dtypes[0])
            else:
                template = (_drive, _drive_pair)[len(kernels) - 1]
                if check_column is not None:
                    template = _drive_checked
                    env["_grad_view"] = _views_factory(numba, (dtypes[0][check_column],))
                env["_add_partials"] = numba.njit(_add_partials, **_FLAGS)
                for k, (kernel, types_k) in enumerate(zip(kernels, dtypes)):
                    item_env = dict(env, _body=_compiled_body(kernel, numba), _views=_views_factory(numba, types_k))
                    item = _renamed(_run_item, item_env, f"run_item_{kernel.name}_{_types_tag((types_k,))}_{_kernels_hash()}")
                    env["_item" + (str(k + 1) if k else "")] = numba.njit(item, **_FLAGS)
            # numba's cache is keyed by the driver's name and file (whose stamp it checks): name it after
            # the kernels, the variant, the buffer dtypes and a hash of the kernel modules, so an edited
            # body or helper never meets a stale build.
            label = f"drive_{name.replace('+', '_and_')}_{'parallel' if parallel else 'serial'}_{_types_tag(dtypes)}_{_kernels_hash()}"
            _compiled[key] = numba.njit(_renamed(template, env, label), parallel=parallel, cache=_cache, **_FLAGS)
    return _compiled[key]


def _control(kernel):
    """The compiled fused body of a control kernel (``fn(ctl, sums, table)``, as its twin), built
    once per process and cached on disk under a name unique to the kernel modules' source."""
    fn = _compiled.get(kernel.name)
    if fn is None:
        with _compile_lock:
            if kernel.name not in _compiled:
                numba = load_numba()
                body = kernel.fused
                env = _jit_helpers(body, numba, {})
                _compiled[kernel.name] = numba.njit(_renamed(body, env, f"control_{kernel.name}_{_kernels_hash()}"),
                                                    cache=_cache, **_FLAGS)
            fn = _compiled[kernel.name]
    return fn


def _data_address(a):
    if a.flags.c_contiguous:
        return np.int64(a.ctypes.data)
    return np.int64(0)             # another layout: the caller takes a C-order copy


@functools.lru_cache(maxsize=1)
def _address_of():
    """A compiled ``address(array)`` of a C-contiguous array's data (0 for other layouts): a fifth of
    ``__array_interface__``'s cost, paid per gradient per step."""
    return load_numba().njit(_data_address, cache=_cache)


def _items(sizes, segments, size=CHUNK) -> np.ndarray:
    """Work items ``(segment, lo, hi)``: a segment of up to ``size`` elements whole, a larger one
    in ``size``-element blocks from its start, in segment then block order."""
    rows = []
    for i in segments:
        n = int(sizes[i])
        rows += [(i, lo, min(n, lo + size)) for lo in range(0, n, size)] if n > size else [(i, 0, n)]
    return np.array(rows, np.int64).reshape(-1, 3)


def _call(drive_for, total, args, item=CHUNK):
    """Run the serial or parallel build (``drive_for(parallel)``) on ``args``: serial below two
    items' worth of elements (``item`` per item), where a thread launch costs more than it saves,
    and below two blocks' worth on workqueue threads, whose launch costs about 75 µs (tbb's: 2)."""
    if total < 2 * (item if _threadsafe else CHUNK):
        return drive_for(False)(*args)
    drive = drive_for(True)
    if _threadsafe:
        return drive(*args)
    with _parallel_lock:
        return drive(*args)


def run_pieces(kernel, pieces, rows, ctl) -> np.ndarray:
    """``kernel``'s fused body on explicit pieces (each a list of C-contiguous 1-D buffers, one per
    kernel buffer, at most ``CHUNK`` elements, with its scalar row ``rows[w]``): its sums,
    float64 ``(len(pieces), n_sums)``, each from 0.0.  The distributed layer runs a rank's blocks so."""
    n_sums = len(kernel.sums)
    out = np.zeros((len(pieces), n_sums), np.float64)
    address = _address_of()
    by_dtype: dict = {}
    for w, bufs in enumerate(pieces):
        if not all(b.flags.c_contiguous for b in bufs):
            raise ValueError(f"{kernel.name}: run_pieces needs C-contiguous buffers (piece {w})")
        by_dtype.setdefault(tuple(b.dtype for b in bufs), []).append(w)
    for dtypes, idx in by_dtype.items():
        addresses = np.array([[address(b) for b in pieces[w]] for w in idx], np.int64)
        sizes = np.array([pieces[w][0].size for w in idx], np.int64)
        items = np.array([(k, 0, sizes[k]) for k in range(len(idx))], np.int64).reshape(-1, 3)
        table = np.array([rows[w] for w in idx]).reshape(len(idx), -1)
        partials = np.empty((len(idx), n_sums), np.float64)
        sums = np.zeros((len(idx), n_sums), np.float64)
        _call(lambda parallel: _driver((kernel,), parallel, (dtypes,)), int(sizes.sum()),
              (items, addresses, sizes, table, ctl, partials, sums))
        out[idx] = partials
    return out


class _Gradients:
    """One step's gradients as the compiled code reads them: an address per gradient, and the work
    items of each dtype's parameters (``plans``: the backend's cache of them, by active set and
    gradient dtypes)."""

    def __init__(self, grads: dict, sizes: np.ndarray, param_dtypes: list, plans: dict):
        self.source, self.arrays = grads, dict(grads)
        self.sizes = sizes
        arrays = list(grads.values())
        key = (tuple(grads), tuple([g.dtype for g in arrays]))
        plan = plans.get(key)
        if plan is None:
            by_dtype: dict = {}
            for i in sorted(grads):
                by_dtype.setdefault((param_dtypes[i], grads[i].dtype), []).append(i)
            plan = [(dtypes, _items(sizes, idx), int(sizes[idx].sum()), _items(sizes, idx, PIECE))
                    for dtypes, idx in by_dtype.items()]
            if len(plans) > 64:               # active sets that come and go
                plans.clear()
            plans[key] = plan
        self.plan = plan
        address = _address_of()
        addresses = [address(g) for g in arrays]
        self.keep = []                         # C-order copies the addresses point into
        if 0 in addresses:
            for k, a in enumerate(addresses):
                if a == 0:
                    self.keep.append(np.ascontiguousarray(arrays[k]))
                    addresses[k] = address(self.keep[-1])
        if key[0] == _in_order(len(sizes)):      # every parameter, in order: the list is the column
            self.address = np.array(addresses, np.int64)
        else:
            self.address = np.zeros(len(sizes), np.int64)
            self.address[list(grads)] = addresses

    def matches(self, grads) -> bool:
        """Whether ``grads`` is the dict these addresses were taken from, holding the same arrays."""
        return grads is self.source and self.holds(grads)

    def holds(self, grads) -> bool:
        """Whether ``grads`` holds the very arrays these addresses point into (a loop that fills
        the same gradient buffers every step), so that the addresses still hold for it."""
        arrays = self.arrays
        return not self.keep and grads.keys() == arrays.keys() and all(map(operator.is_, grads.values(), arrays.values()))

    def first_bad(self, limit) -> int | None:
        """The first parameter whose gradient has an element beyond ``limit(dtype)`` (or NaN), or None."""
        column = self.address.reshape(-1, 1)
        for (_, dtype), _, total, pieces in self.plan:
            bad = _call(lambda parallel: _driver(None, parallel, ((dtype,),)), total,
                        (pieces, column, self.sizes, limit(dtype)))
            if bad >= 0:
                return bad
        return None


@functools.lru_cache(maxsize=16)
def _in_order(n: int) -> tuple:
    return tuple(range(n))


@functools.lru_cache(maxsize=64)
def _nothing(rows: int) -> np.ndarray:
    """The sums (and partials) of a kernel that produces none: ``rows`` rows of no columns, which
    nothing can write to, so one array serves every run."""
    return np.zeros((rows, 0), np.float64)


class _Pass:
    """One compiled pass of a program: a fused kernel, or two that follow each other there (run
    item by item, ``_drive_pair``), with what stays the same from one step to the next."""

    def __init__(self, steps):               # [(kernel, buffer names, scalar table)]
        self.steps = steps
        self.kernels = tuple(kernel for kernel, _, _ in steps)
        self.item = CHUNK if any(kernel.sums for kernel in self.kernels) else PIECE    # elements per work item
        self._drivers: dict = {}

    def driver(self, dtype, grad_dtype, parallel: bool, check_column=None):
        """The compiled driver for parameters of ``dtype`` whose gradients have ``grad_dtype``
        (checking the gradient buffer ``check_column`` in the same pass, if given)."""
        key = (dtype, grad_dtype, parallel, check_column)
        drive = self._drivers.get(key)
        if drive is None:
            dtypes = tuple(tuple(grad_dtype if n == "grad" else dtype for n in names) for _, names, _ in self.steps)
            drive = self._drivers[key] = _driver(self.kernels, parallel, dtypes, check_column)
        return drive

    def can_check(self) -> bool:
        """Whether the gradient check can ride along (one kernel, reading the gradients)."""
        return len(self.steps) == 1 and "grad" in self.steps[0][1]


def _schedule(program) -> list:
    """A program's dispatches as they run here, built once per program: compiled passes (``_Pass``:
    consecutive fused kernels in pairs), and ``(kernel, buffer names, scalar table)`` for control
    kernels and for kernels without a fused body (their NumPy twins run)."""
    schedule = program.__dict__.get("numba_schedule")
    if schedule is None:
        steps = [(kernel, names, table) for (kernel, names), table in zip(program.dispatches, program.tables)]
        schedule = []
        while steps:
            kernel = steps[0][0]
            if kernel.kind == CONTROL or kernel.fused is None:
                schedule.append(steps[0])
                steps = steps[1:]
            else:           # two fused kernels in a row: one pass, item by item
                pair = len(steps) > 1 and steps[1][0].kind != CONTROL and steps[1][0].fused is not None
                schedule.append(_Pass(steps[:1 + pair]))
                steps = steps[1 + pair:]
        program.numba_schedule = schedule
    return schedule


class NumbaBackend(NumpyBackend):
    name = "numba"

    def __init__(self):
        load_numba()
        super().__init__()
        self._addresses: dict[tuple[str, ...], tuple] = {}
        self._plans: dict[tuple, list] = {}      # (active set, gradient dtypes) -> work plan
        self._sizes = np.zeros(0, np.int64)
        self._dtypes: list = []
        self._gradients: _Gradients | None = None
        self._pending_check = None              # (limit, refuse, reading): see check_gradients

    @staticmethod
    def unsupported(arrays) -> str | None:
        """Why these parameters cannot run here (numba compiles float32 and float64 only), or None."""
        other = sorted({a.dtype.name for a in arrays} - {"float32", "float64"})
        return f"{', '.join(other)} parameters have no fused CPU kernels" if other else None

    def bind(self, arrays, state_names):
        super().bind(arrays, state_names)
        for bufs in self._state.values():      # flat C-order state, whatever the parameter's layout
            for j, b in enumerate(bufs):
                if not b.flags.c_contiguous:
                    bufs[j] = np.ascontiguousarray(b)
        self._addresses, self._plans, self._gradients = {}, {}, None
        self._sizes = np.array([a.size for a in self._params], np.int64)
        self._dtypes = [a.dtype for a in self._params]

    def set_param(self, i, array):
        """The caller rebound parameter ``i`` to ``array`` (same shape and dtype); state is kept."""
        super().set_param(i, array)
        self._addresses = {}

    def check_gradients(self, grads, limit, refuse=None, reading=None) -> int | None:
        """The first parameter whose gradient is not finite or has an element whose square is not
        (``limit(dtype)``: the largest allowed magnitude, of that dtype), or None; one compiled pass.

        With ``refuse`` (a callable that raises for a bad parameter's index) the check waits for
        the next ``run``, which makes it before anything moves: inside its first pass when that
        run is of ``reading``, a program whose first kernel only reads, else as a pass of its own
        first.  It returns None then."""
        gradients = self._gradients
        if gradients is not None and gradients.holds(grads):
            gradients.source = grads
        else:
            gradients = self._gradients = _Gradients(grads, self._sizes, self._dtypes, self._plans)
        self._pending_check = None if refuse is None else (limit, refuse, reading)
        return None if refuse is not None else gradients.first_bad(limit)

    def run(self, program, grads=None, download=True, upload_params=False):
        if grads is not None:
            self._grads = grads
            if self._gradients is None or not self._gradients.matches(grads):
                self._gradients = _Gradients(grads, self._sizes, self._dtypes, self._plans)
        schedule = _schedule(program)
        check, self._pending_check = self._pending_check, None
        if check is not None:
            limit, refuse, reading = check
            if program is reading and type(schedule[0]) is _Pass and schedule[0].can_check():
                check = (limit, refuse)             # rides on the first pass
            else:
                check = None
                bad = self._gradients.first_bad(limit)
                if bad is not None:
                    refuse(bad)
        results, last = [], None
        for entry in schedule:
            if type(entry) is _Pass:
                sums, check = self._run_pass(entry, check), None
                for (kernel, _, _), last in zip(entry.steps, sums):
                    if kernel.sums:
                        results.append(last)
            elif entry[0].kind == CONTROL:
                kernel, _, table = entry
                if kernel.fused is not None and last is not None:
                    _control(kernel)(self._ctl, last, table)
                else:
                    kernel.numpy(self._ctl, last, table)
            else:
                last = self._run_elementwise(*entry)
                if entry[0].sums:
                    results.append(last)
        return results

    def _address_table(self, names, gradients):
        """Per parameter, the addresses of the buffers ``names``, the gradients' among them (filled
        in place when the gradients change: the backend runs one pass at a time), and the
        (parameter, buffer) entries that are not C-contiguous (they run on copies).  All but the
        gradients' column only change with ``bind``/``set_param``."""
        entry = self._addresses.get(names)
        if entry is None:
            table, gaps = np.zeros((len(self._params), len(names)), np.int64), []
            for i in range(len(self._params)):
                for j, n in enumerate(names):
                    if n != "grad":
                        a = self._arrays(n, i)
                        if a.flags.c_contiguous:
                            table[i, j] = _address_of()(a)
                        else:                  # e.g. a transposed parameter
                            gaps.append((i, j))
            entry = self._addresses[names] = [table, names.index("grad") if "grad" in names else None, gaps, None]
        table, grad_column, gaps, filled_by = entry
        if grad_column is not None and filled_by is not gradients:
            table[:, grad_column] = gradients.address
            entry[3] = gradients
        return table, gaps

    def _run_pass(self, fused: _Pass, check=None):
        """One compiled pass of one or two fused kernels: each kernel's per-segment sums.  With
        ``check`` (``(limit, refuse)``, a pass of one kernel that only reads), the gradients are
        checked in the same pass and ``refuse`` is called for the first bad parameter."""
        gradients = self._gradients
        copies: dict = {}       # (parameter, buffer name) -> (buffer, its C-order copy), shared by the pair
        addresses, sums = [], []
        for kernel, names, _ in fused.steps:
            address, gaps = self._address_table(names, gradients)
            if gaps:
                address = address.copy()
            for i, j in gaps:
                if i in gradients.source:
                    if (i, names[j]) not in copies:
                        a = self._arrays(names[j], i)
                        copies[i, names[j]] = (a, np.ascontiguousarray(a))
                    address[i, j] = _address_of()(copies[i, names[j]][1])
            addresses.append(address)
            sums.append(np.zeros((len(self._params), len(kernel.sums)), np.float64) if kernel.sums
                        else _nothing(len(self._params)))
        for (dtype, grad_dtype), items, total, pieces in gradients.plan:
            if fused.item != CHUNK:
                items = pieces
            args = [items]
            for (kernel, _, table), address, kernel_sums in zip(fused.steps, addresses, sums):
                rows = table if table.dtype == dtype else table.astype(dtype)  # float32 rows of a float64 table
                partials = np.empty((len(items), len(kernel.sums)), np.float64) if kernel.sums else _nothing(len(items))
                # _drive's arguments, then _drive_pair's for the second kernel
                args += (address, gradients.sizes, rows, self._ctl, partials, kernel_sums) if len(args) == 1 \
                    else (address, rows, partials, kernel_sums)
            if check is None:
                _call(lambda parallel: fused.driver(dtype, grad_dtype, parallel), total, args, fused.item)
            else:                 # one kernel that only reads: the gradient check rides along
                limit, refuse = check
                column = fused.steps[0][1].index("grad")
                bad = _call(lambda parallel: fused.driver(dtype, grad_dtype, parallel, column), total,
                            args + [column, limit(grad_dtype)], fused.item)
                if bad >= 0:
                    refuse(bad)
        for a, c in copies.values():
            a[...] = c.reshape(a.shape)
        launch_counts["numba"] += 1
        return sums
