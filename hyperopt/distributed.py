"""Data-parallel optimizers over MPI, with the same bits for any number of ranks.

An optimizer built with ``comm=`` (an mpi4py communicator) runs on every rank of it:

1. ``step()`` checks each rank's local gradients, and the ranks agree on the outcome (a small
   ``Allgather`` of error codes, messages and active sets, never floats) before any data moves, so
   bad input on one rank makes every rank raise the same error with nothing changed anywhere.
2. The gradients are averaged in a fixed order: ``Alltoallv`` sends each rank the pieces of every
   rank's gradient that fall in its shard, the pieces are added pairwise in rank order
   (``(g0 + g1) + (g2 + g3)``) and divided by the rank count.  Optimizers whose host logic reads
   gradient values (AutoSGM, HCNaturalGrad) get the averaged shards gathered into the full averaged
   gradient, as in one process; the others (``_host_reads_gradients = False``: AdamW and the
   hypergradient classes, HIOptimizer, HL) keep just their shard, one exchange fewer per step.
3. Each rank keeps per-element optimizer state only for its shard and runs the kernels there: the
   fused bodies compiled by numba where one process would use them (``HYPEROPT_CPU_KERNELS``, numba
   importable), called once per block, else the NumPy twins; or, when ``use_gpu=True``/``device``
   gives a Vulkan device (on every rank), that device's shaders over the shard's pieces (one device
   segment per parameter, holding this rank's piece of it).  Every per-segment sum is rebuilt from
   per-block partials gathered from all ranks (``Allgatherv`` of float64) and added in global block
   order starting from 0.0, the definition every backend shares, so every global quantity has the
   bits of the single-process optimizer on the same kind of backend.  On Vulkan a block's partial is
   its rows' partials added on the device in a fixed order, and a block's rows depend on its length
   only, so a rank's blocks give the partials one process's would; a step there pauses after each
   summing kernel for the exchange, and device control kernels read the gathered partials (their
   per-segment sums made on the device from them, as in one process).
4. The updated parameter pieces are gathered, so after ``step()`` every rank's arrays are equal.

The flat layout: each parameter is a segment cut into blocks of ``CHUNK`` elements from its start;
blocks are numbered in global order, and each rank owns a contiguous run of them, balanced by
element count.  For parameter ``i`` a rank holds the slice ``[a_i, b_i)`` (possibly empty).

``state_dict()``/``state_of()`` are collective: every rank gets the full, consolidated state.
``load_state_dict()`` takes that full dict on every rank and keeps its own shard, so a checkpoint
written with any number of ranks loads with any other.  Checkpoints (``hyperopt.save``/``load``)
never materialise the whole state on every rank: they work on each rank's ``ShardPiece``s
(``read_piece``), gathered to rank 0 one buffer at a time for a consolidated file
(``gather_piece``), or written by each rank to its own shard file.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np

from . import backends as _backends
from .backends import numpy_backend as _numpy_backend
from .backends.numpy_backend import CHUNK, _parallel
from .kernels.core import CONTROL, dispatch, segment_totals
from .state_checks import ShardPiece

def _exception_class(kind: str):
    """The exception class named ``module:qualname`` (builtins and hyperopt's own), else RuntimeError."""
    module, _, name = kind.partition(":")
    if module == "builtins" or module.startswith("hyperopt"):
        import importlib
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, type) and issubclass(obj, Exception):
            return obj
    return RuntimeError


def rank_mean(pieces):
    """The average of per-rank arrays as the distributed step computes it: a pairwise sum in rank
    order (``(x0 + x1) + (x2 + x3)``; an odd rank out is carried up), then one division by the
    rank count, in the arrays' dtype.  For equal inputs and a power-of-two count it is exact."""
    pieces = list(pieces)
    n = len(pieces)
    while len(pieces) > 1:
        pieces = [pieces[k] + pieces[k + 1] if k + 1 < len(pieces) else pieces[k]
                  for k in range(0, len(pieces), 2)]
    out = np.array(pieces[0], copy=True)
    if n > 1:
        out /= out.dtype.type(n)
    return out


def distributed_backend(comm, use_gpu, device):
    """The backend of an optimizer built with ``comm``: this rank's shard, on the CPU kernels or on
    the Vulkan device that ``use_gpu``/``device`` would give one process.

    ``use_gpu="auto"`` or ``False`` (and no device but ``"cpu"``) takes the CPU kernels directly (auto
    does not look for a GPU here: ranks that found different hardware would disagree).  An
    explicit GPU request picks a backend on every rank as one process would (a rank without a
    Vulkan device falls back, with the usual warning, to the CPU path); the ranks must agree: all on
    Vulkan or all on the CPU kernels, else every rank raises ``ValueError``."""
    from .backends import select_backend
    dist = DistributedBackend(comm, _cpu_kernels())
    explicit = use_gpu is True or device not in (None, "cpu")
    made = []

    def pick():
        if explicit:
            made.append(select_backend(use_gpu, device))
    try:               # collective on every rank, whatever each was asked for
        dist.agree(pick)
    except Exception:
        for backend in made:
            backend.close()
        raise
    engine = made[0] if made and made[0].name.startswith("vulkan") else None
    if made and engine is None:
        made[0].close()
    kinds = dist._allgather_text("vulkan" if engine is not None else "cpu")
    if len(set(kinds)) > 1:
        if engine is not None:
            engine.close()
        raise ValueError("comm= needs every rank on the same kind of backend, but ranks "
                         f"{[r for r, k in enumerate(kinds) if k == 'vulkan']} got a Vulkan device and ranks "
                         f"{[r for r, k in enumerate(kinds) if k == 'cpu']} the CPU path; pass the same "
                         "use_gpu and device everywhere")
    if engine is not None:
        dist.use_engine(engine)
    elif use_gpu == "auto" and not explicit and not _noticed:
        _noticed.append(True)
        logging.getLogger("hyperopt").info("comm= given: the distributed optimizer runs on the CPU path "
                                           "(use_gpu=True or device= puts each rank's shard on its Vulkan device)")
    return dist


_noticed: list = []


def _cpu_kernels() -> str:
    """``"numba"`` where the CPU path of one process would run the fused kernels, else ``"numpy"``
    (the same choice: ``HYPEROPT_CPU_KERNELS``, then whether numba imports)."""
    cpu_backend = getattr(_backends, "cpu_backend", None)
    if cpu_backend is None:
        return "numpy"
    probe = cpu_backend()
    probe.close()
    return "numba" if probe.name == "numba" else "numpy"


class Layout:
    """Blocks of every segment, which rank owns which run of them, and the byte offsets."""

    def __init__(self, arrays, ranks: int):
        self.sizes = [a.size for a in arrays]
        seg, start, stop = [], [], []
        for i, n in enumerate(self.sizes):
            for s in range(0, n, CHUNK):
                seg.append(i), start.append(s), stop.append(min(s + CHUNK, n))
        self.block_segment = np.array(seg, np.int64)
        self.block_start = np.array(start, np.int64)
        self.block_stop = np.array(stop, np.int64)
        counts = self.block_stop - self.block_start
        starts = np.cumsum(counts) - counts
        total = int(counts.sum())
        # rank r owns the blocks [first[r], first[r + 1]): each cut at the block boundary nearest to
        # an equal share of the elements (small segments are blocks of their own size)
        bounds = np.append(starts, total)
        targets = np.arange(1, ranks) * (total / ranks)
        after = np.clip(np.searchsorted(bounds, targets, side="left"), 1, len(bounds) - 1)
        nearer_before = targets - bounds[after - 1] <= bounds[after] - targets
        cuts = np.where(nearer_before, after - 1, after)
        cuts = np.maximum.accumulate(cuts) if len(counts) else np.zeros(ranks - 1, np.int64)
        self.first = np.concatenate([[0], cuts, [len(counts)]]).astype(np.int64)
        self.segment_first = np.searchsorted(self.block_segment, np.arange(len(arrays)), side="left")
        self.segment_blocks = np.c_[self.segment_first, np.bincount(self.block_segment, minlength=len(arrays))]
        # pieces[r] = [(i, a, b)]: rank r's slice of segment i, in segment order
        self.pieces = []
        for r in range(ranks):
            blocks = range(self.first[r], self.first[r + 1])
            out: dict[int, list[int]] = {}
            for k in blocks:
                i = int(self.block_segment[k])
                a, b = out.setdefault(i, [int(self.block_start[k]), int(self.block_stop[k])])
                out[i][1] = int(self.block_stop[k])
            self.pieces.append([(i, a, b) for i, (a, b) in out.items()])
        self.elements = [sum(b - a for _, a, b in p) for p in self.pieces]


class DistributedBackend:
    """The backend interface over a shard: state buffers hold this rank's slices only, tables and
    sums are indexed by global segment, ``run`` gathers sums and parameters across the ranks."""

    def __init__(self, comm, kernels: str = "numpy"):
        from mpi4py import MPI        # imported here: single-process use never needs mpi4py
        self._MPI = MPI
        self.comm = comm
        self.rank, self.ranks = comm.Get_rank(), comm.Get_size()
        if kernels not in ("numpy", "numba"):
            raise ValueError(f"kernels must be 'numpy' or 'numba', got {kernels!r}")
        self.name = kernels           # the kernels that run on this rank's shard: NumPy twins or fused
        self.buffers: tuple[str, ...] = ()
        self._params: list[np.ndarray] = []
        self._state: dict[str, list[np.ndarray]] = {}
        self._ctl = np.zeros(0, np.float32)
        self._grads: dict[int, np.ndarray] = {}
        self._active: list[int] = []
        self.layout: Layout | None = None
        self.engine = None            # a VulkanBackend running this rank's shard (``use_engine``), else None
        self.bytes_sent = 0           # this rank's payload bytes handed to MPI (gradients, sums, parameters)

    def use_engine(self, engine):
        """Run this rank's kernels on ``engine``, a ``VulkanBackend``: it holds the shard's state, one
        segment per parameter (this rank's piece of it, possibly empty), and its per-segment sums
        come back through ``gather_partials`` as the whole layout's (see ``BlockLayout``)."""
        self.engine, self.name = engine, engine.name

    # -------------------------------------------------------------- layout and state
    def bind(self, arrays, state_names):
        arrays = list(arrays)
        self._agree_on_layout(arrays)
        # state that survives a new layout: gathered whole (collective), then cut to the new shard
        new_ids = {id(a) for a in arrays}
        kept = {(name, id(p)): self.read(name, j) for name in self.buffers if name in state_names
                for j, p in enumerate(self._params) if id(p) in new_ids}
        if self.engine is not None and self.engine.unsupported(arrays):     # the same answer on every rank
            self._leave_engine(self.engine.unsupported(arrays))
        self._params = arrays
        self.layout = Layout(arrays, self.ranks)
        self._mine = {i: (a, b) for i, a, b in self.layout.pieces[self.rank]}
        self.buffers = tuple(state_names)
        self._state = {}
        if self.engine is not None:
            self.engine.bind([self._piece("param", i) for i in range(len(arrays))], self.buffers)
            self.engine.shard = BlockLayout(self)
            for i, p in enumerate(arrays):
                for name in self.buffers:
                    if (name, id(p)) in kept:
                        self.write(name, i, kept[(name, id(p))])
            return
        for name in self.buffers:
            bufs = []
            for i, p in enumerate(arrays):
                a, b = self._mine.get(i, (0, 0))
                full = kept.get((name, id(p)))
                bufs.append(full.reshape(-1)[a:b].copy() if full is not None else np.zeros(b - a, p.dtype))
            self._state[name] = bufs

    def _leave_engine(self, reason):
        """The device cannot update these parameters (float64 without shaderFloat64, mixed precisions):
        the CPU kernels from now on, with the warning one process gives (``fit_backend``)."""
        import warnings
        from .backends import _told, caller_stacklevel
        if reason not in _told:
            _told.add(reason)
            warnings.warn(f"{reason}: this optimizer runs on the CPU path (opt.backend says so)", RuntimeWarning,
                          stacklevel=caller_stacklevel())
        self.engine.close()
        self.engine, self.name = None, _cpu_kernels()

    def _agree_on_layout(self, arrays):
        def contiguous():
            for i, a in enumerate(arrays):
                if not a.flags.c_contiguous:
                    raise ValueError(f"parameter {i} is not C-contiguous; the distributed optimizer updates "
                                     "parameters through flat views (pass np.ascontiguousarray(p))")
        self.agree(contiguous)
        mine = ";".join(f"{a.shape}:{a.dtype.str}" for a in arrays)
        theirs = self._allgather_text(mine)
        if len(set(theirs)) > 1:
            bad = next(r for r, t in enumerate(theirs) if t != theirs[0])
            raise ValueError(f"the ranks hold different parameters (rank 0: {theirs[0] or 'none'}; "
                             f"rank {bad}: {theirs[bad] or 'none'}); every rank must build the optimizer over "
                             "parameters of the same shapes and dtypes, in the same order")

    def check_param(self, i, array):
        """Refuse (before anything changes) an array that parameter ``i`` cannot be rebound to."""
        if array.shape != self._params[i].shape or array.dtype != self._params[i].dtype:
            raise ValueError(f"parameter {i} must keep shape {self._params[i].shape} and dtype {self._params[i].dtype}")
        if not array.flags.c_contiguous:
            raise ValueError(f"parameter {i} was rebound to an array that is not C-contiguous; the distributed "
                             "optimizer updates parameters through flat views (rebind to np.ascontiguousarray(...))")

    def set_param(self, i, array):
        """The caller rebound parameter ``i``: the shard's views are taken from ``array`` from now
        on (``_piece`` slices the current array each run); the state is kept."""
        self.check_param(i, array)
        self._params[i] = array
        if self.engine is not None:
            self.engine.set_param(i, self._piece("param", i))

    def _piece(self, name, i):
        """This rank's flat slice of buffer ``name`` for segment ``i`` (a view)."""
        a, b = self._mine.get(i, (0, 0))
        if name == "param":
            return self._params[i].reshape(-1)[a:b]
        if name == "grad":
            return self._grads[i]
        if self.engine is not None:
            return self.engine.read(name, i)      # a copy of the device's piece
        return self._state[name][i]

    def read(self, name, i):
        """The full buffer of segment ``i`` (collective: every rank must call it, in the same order)."""
        p = self._params[i]
        full = np.empty(p.size, p.dtype)
        counts = [sum(b - a for j, a, b in pc if j == i) for pc in self.layout.pieces]
        self._allgatherv(self._piece(name, i), full, counts)
        return full.reshape(p.shape)

    def piece_range(self, i):
        """This rank's flat element range ``(a, b)`` of parameter ``i`` (``a == b``: none of it)."""
        return self._mine.get(i, (0, 0))

    def read_piece(self, name, i, copy: bool = True) -> ShardPiece:
        """This rank's piece of buffer ``name`` of segment ``i`` (not collective): a copy, or with
        ``copy=False`` a view of the CPU path's buffer where there is one (valid until the next step)."""
        a, b = self.piece_range(i)
        values = self._piece(name, i).reshape(-1)
        if copy and self.engine is None:          # the device's pieces are copies already
            values = values.copy()
        return ShardPiece(values, a, b, self._params[i].shape, i)

    def gather_piece(self, piece: ShardPiece, root: int = 0):
        """The full buffer of ``piece``'s parameter on ``root`` (None elsewhere), from every rank's
        piece of it (collective: every rank passes its piece of the same parameter, in the same order)."""
        i = piece.index
        p = self._params[i]
        counts = [sum(b - a for j, a, b in pc if j == i) for pc in self.layout.pieces]
        if piece.values.size != counts[self.rank] or piece.values.dtype != p.dtype:
            raise RuntimeError(f"rank {self.rank} holds {piece.values.size} {piece.values.dtype} elements of "
                               f"parameter {i}, its shard has {counts[self.rank]} {p.dtype}")
        displ = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()
        dtype = self._MPI._typedict[p.dtype.char]
        full = np.empty(p.size, p.dtype) if self.rank == root else None
        self.comm.Gatherv([np.ascontiguousarray(piece.values), dtype],
                          [full, (counts, displ), dtype] if self.rank == root else None, root=root)
        if self.rank != root:
            self.bytes_sent += int(piece.values.nbytes)
            return None
        return full.reshape(p.shape)

    def write(self, name, i, values):
        a, b = self._mine.get(i, (0, 0))
        if isinstance(values, ShardPiece):       # this rank's piece already (a checkpoint's load)
            if (values.start, values.stop) != (a, b):
                raise ValueError(f"a piece of elements [{values.start}, {values.stop}) of parameter {i} given to "
                                 f"rank {self.rank}, whose shard holds [{a}, {b})")
            values = values.values
            if self.engine is not None:
                self.engine.write(name, i, values)
            else:
                self._piece(name, i)[...] = values
            return
        values = np.asarray(values)
        values = values if values.ndim == 0 else values.reshape(-1)[a:b]
        if self.engine is not None:
            self.engine.write(name, i, values)
        else:
            self._piece(name, i)[...] = values

    def clear(self, i):
        if self.engine is not None:
            self.engine.clear(i)
        for bufs in self._state.values():
            bufs[i][...] = 0

    def reload_params(self):
        if self.engine is not None:        # the CPU kernels update views of the caller's arrays
            self.engine.reload_params()

    def ctl_array(self, size):
        if self.engine is not None:
            return self.engine.ctl_array(size)
        if self._ctl.size != size:
            self._ctl = np.zeros(size, np.float32)
        return self._ctl

    def close(self):
        if self.engine is not None:
            self.engine.close()

    # -------------------------------------------------------------- agreement
    def agree(self, fn):
        """``fn()`` on every rank, then agree: if it raised anywhere, every rank raises the first
        failing rank's error (same type and message); otherwise return this rank's result.  Only
        error codes and messages travel, so a rank never waits for a partner that has raised."""
        kind, message, result = "", "", None
        try:
            result = fn()
        except Exception as exc:   # any error: a rank that raised alone would leave the others waiting
            kind, message = f"{type(exc).__module__}:{type(exc).__qualname__}", str(exc)
        kinds = self._allgather_text(kind)
        messages = self._allgather_text(message)
        for r in range(self.ranks):
            if kinds[r]:
                text = f"rank {r}: {messages[r]}" if self.ranks > 1 else messages[r]
                raise _exception_class(kinds[r])(text)
        return result

    # -------------------------------------------------------------- gradients
    def collect(self, collect_local, gradients, check=None, same=None, *, full=True):
        """Check this rank's gradients (and ``check()``), agree with every rank, then average them.

        Returns ``{index: averaged full gradient}`` (the same arrays on every rank; with
        ``full=False`` each rank's ``ShardGradient`` of it, for ``run`` only), or raises the
        first failing rank's error on every rank before any gradient is communicated.  ``same()``
        gives bytes that must be equal on every rank (e.g. HCNaturalGrad's branches)."""
        fingerprint = []

        def local():
            if check is not None:
                check()
            out = collect_local(gradients)
            if same is not None:
                fingerprint.append(hashlib.sha256(same()).hexdigest())
            return out
        grads = self.agree(local)
        active = np.zeros(len(self._params), np.uint8)
        active[list(grads)] = 1
        masks = np.zeros((self.ranks, len(self._params)), np.uint8)
        self.comm.Allgather(active, masks)
        if same is not None:
            prints = self._allgather_text(fingerprint[0])
            if len(set(prints)) > 1:
                r = next(r for r, p in enumerate(prints) if p != prints[0])
                raise ValueError(f"ranks 0 and {r} were given different step inputs that every rank must share "
                                 "(such as HCNaturalGrad's branches)")
        if (masks != masks[0]).any():
            r = int(np.nonzero((masks != masks[0]).any(axis=1))[0][0])
            raise ValueError(f"rank 0 has gradients for parameters {np.nonzero(masks[0])[0].tolist()}, rank {r} for "
                             f"{np.nonzero(masks[r])[0].tolist()}: every rank must give gradients for the same ones")
        return self._average(grads, full)

    def _average(self, grads, full=True):
        if self.ranks == 1:
            return grads
        active = sorted(grads)
        # each rank's active pieces, as bytes in global order: what rank r sends to rank q
        pieces = [[(i, a, b) for i, a, b in pc if i in grads] for pc in self.layout.pieces]
        nbytes = [sum((b - a) * self._params[i].itemsize for i, a, b in pc) for pc in pieces]
        flat = {i: grads[i].reshape(-1) for i in active}
        send = _concat_bytes([flat[i][a:b] for pc in pieces for i, a, b in pc])
        recv = np.empty(self.ranks * nbytes[self.rank], np.uint8)
        sdispl = np.concatenate([[0], np.cumsum(nbytes)[:-1]])
        B = self._MPI.BYTE
        self.comm.Alltoallv([send, (nbytes, sdispl), B],
                            [recv, ([nbytes[self.rank]] * self.ranks,
                                    [r * nbytes[self.rank] for r in range(self.ranks)]), B])
        self.bytes_sent += int(send.size - nbytes[self.rank])
        rows = recv.reshape(self.ranks, nbytes[self.rank])
        mean, off = [], 0
        for i, a, b in pieces[self.rank]:
            dt = self._params[i].dtype
            n = (b - a) * dt.itemsize
            mean.append(rank_mean([rows[r, off:off + n].view(dt) for r in range(self.ranks)]))
            off += n
        if not full:
            shards = {i: ShardGradient(np.zeros(0, self._params[i].dtype), self._params[i].shape) for i in active}
            for (i, _, _), m in zip(pieces[self.rank], mean):
                shards[i] = ShardGradient(m, self._params[i].shape)
            return shards
        # every rank gets the whole averaged gradient (the optimizers' host logic reads it)
        full = np.empty(sum(nbytes), np.uint8)
        self._allgatherv(_concat_bytes(mean), full, nbytes, dtype=B)
        out = {i: np.empty(self._params[i].size, self._params[i].dtype) for i in active}
        off = 0
        for pc in pieces:
            for i, a, b in pc:
                n = (b - a) * self._params[i].itemsize
                out[i][a:b] = full[off:off + n].view(self._params[i].dtype)
                off += n
        return {i: out[i].reshape(self._params[i].shape) for i in active}

    # -------------------------------------------------------------- running
    def program(self, dispatches):
        if self.engine is not None:
            return self.engine.program(dispatches)
        return Program(dispatches, len(self._params), _table_dtype(self._params))

    def run(self, program, grads=None, download=True, upload_params=False):
        # CPU kernels: upload_params needs nothing, they read and write views of the caller's arrays
        # as they are now (in-place edits and arrays rebound through set_param included)
        if grads is not None:
            self._grads = {}
            for i, g in grads.items():
                a, b = self._mine.get(i, (0, 0))
                self._grads[i] = g.piece if isinstance(g, ShardGradient) else \
                    np.ascontiguousarray(np.asarray(g).reshape(-1)[a:b])
            self._active = sorted(grads)
        if self.engine is not None:
            # the device updates this rank's pieces (views of the caller's arrays); its sums are
            # already the whole layout's (BlockLayout.gather); then the other ranks' pieces come in
            sums = self.engine.run(program, self._grads if grads is not None else None, download, upload_params)
            if download and any("param" in names for _, names in program.dispatches):
                self._gather_params()
            return sums
        results, last = [], None
        counts = getattr(_backends, "launch_counts", None)
        touches_params = False
        for (kernel, names), table in zip(program.dispatches, program.tables):
            fused = self.name == "numba" and kernel.kind != CONTROL and kernel.fused is not None
            if counts is not None and (fused or self.name == "numpy" or kernel.kind != CONTROL):
                counts["numba" if fused else "numpy"] += 1     # as the single-process backend counts
            if kernel.kind == CONTROL:
                kernel.numpy(self._ctl, last, table)
                continue
            touches_params |= "param" in names
            last = self._run_elementwise(kernel, names, table, fused)
            if kernel.sums:
                results.append(last)
        if touches_params:     # gathered after every run that moves parameters, so host code may read them
            self._gather_params()
        return results

    def _run_elementwise(self, kernel, names, table, fused=False):
        layout, items = self.layout, []
        for i in self._active:
            if i not in self._mine:
                continue
            a, b = self._mine[i]
            extra = {"ctl": self._ctl, "segment": i} if kernel.ctl else {}
            dt = self._params[i].dtype
            row = table[i] if dt == table.dtype else table[i].astype(dt)   # as the NumPy backend
            kw = dict(zip(kernel.scalars, row), **extra)
            arrays = [self._piece(n, i) for n in names]
            shape = self._params[i].shape
            if a == 0 and b == self._params[i].size and b <= CHUNK:    # one block: the caller's shape
                shape = shape or (1,)        # 0-d parameters: 1-element views, as the NumPy backend
                items.append((i, ([x.reshape(shape) for x in arrays], kw), None))
            else:
                items += [(i, (arrays, kw), slice(s, min(s + CHUNK, b - a))) for s in range(0, b - a, CHUNK)]
        if fused:
            parts = self._run_fused_blocks(kernel, names, table, items)
        else:
            parts = _parallel(kernel.numpy, items) if items else []
        if not kernel.sums:
            return np.zeros((len(self._params), 0), np.float64)
        # per-block partials of this rank's blocks; inactive blocks stay 0.0
        first = layout.first
        local = np.zeros((first[self.rank + 1] - first[self.rank], len(kernel.sums)), np.float64)
        for (i, _, sl), part in zip(items, parts):
            block = layout.segment_first[i] + (self._mine[i][0] + (sl.start if sl is not None else 0)) // CHUNK
            local[block - first[self.rank]] = part
        return segment_totals(self.gather_partials(local), layout.segment_blocks)

    def gather_partials(self, local):
        """Every rank's block partials (``local``: this rank's, one row per block it owns), in global
        block order: the rows a single process would have (collective)."""
        first, k = self.layout.first, local.shape[1]
        if local.shape[0] != first[self.rank + 1] - first[self.rank]:
            raise RuntimeError(f"rank {self.rank} produced {local.shape[0]} block partials for "
                               f"{first[self.rank + 1] - first[self.rank]} blocks")
        partials = np.empty((len(self.layout.block_segment), k), np.float64)
        self._allgatherv(np.ascontiguousarray(local, np.float64).reshape(-1), partials.reshape(-1),
                         [(first[r + 1] - first[r]) * k for r in range(self.ranks)])
        return partials

    def _run_fused_blocks(self, kernel, names, table, items):
        """The kernel's fused body (numba) on the blocks of this rank's shard, one compiled call:
        each block's sums start from 0.0, so they are that block's partial, the twins' bits."""
        from .backends.numba_backend import run_pieces
        pieces, rows = [], []
        for i, (_, kw), sl in items:
            flat = [self._piece(n, i).reshape(-1) for n in names]
            pieces.append([f[sl] for f in flat] if sl is not None else flat)
            rows.append([kw[name] for name in kernel.scalars])
        return list(run_pieces(kernel, pieces, rows, self._ctl)) if pieces else []

    def _gather_params(self):
        pieces = [[(i, a, b) for i, a, b in pc if i in self._grads] for pc in self.layout.pieces]
        nbytes = [sum((b - a) * self._params[i].itemsize for i, a, b in pc) for pc in pieces]
        if self.ranks == 1:
            return
        full = np.empty(sum(nbytes), np.uint8)
        mine = _concat_bytes([self._params[i].reshape(-1)[a:b] for i, a, b in pieces[self.rank]])
        self._allgatherv(mine, full, nbytes, dtype=self._MPI.BYTE)
        off = 0
        for r, pc in enumerate(pieces):
            for i, a, b in pc:
                n = (b - a) * self._params[i].itemsize
                if r != self.rank:
                    self._params[i].reshape(-1)[a:b] = full[off:off + n].view(self._params[i].dtype)
                off += n

    # -------------------------------------------------------------- collectives
    def _allgatherv(self, send, recv, counts, dtype=None):
        counts = [int(c) for c in counts]
        displ = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()
        send = np.ascontiguousarray(send)
        if dtype is None:
            dtype = self._MPI._typedict[send.dtype.char] if send.size else self._MPI._typedict[recv.dtype.char]
        self.comm.Allgatherv([send, dtype], [recv, (counts, displ), dtype])
        self.bytes_sent += int(send.nbytes) * (self.ranks - 1)

    def _allgather_text(self, text: str) -> list[str]:
        data = np.frombuffer(text.encode("utf-8"), np.uint8)
        lengths = np.zeros(self.ranks, np.int64)
        self.comm.Allgather(np.array([data.size], np.int64), lengths)
        out = np.empty(int(lengths.sum()), np.uint8)
        self._allgatherv(data, out, lengths, dtype=self._MPI.BYTE)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        return [out[bounds[r]:bounds[r + 1]].tobytes().decode("utf-8") for r in range(self.ranks)]


class BlockLayout:
    """The whole layout's reduction blocks, as a rank's ``VulkanBackend`` needs them (its ``shard``):
    ``segment_blocks[s] = (first block, block count)`` of segment ``s`` in global block order,
    ``n_blocks`` in all, and ``gather`` (``DistributedBackend.gather_partials``)."""

    def __init__(self, dist: DistributedBackend):
        self.segment_blocks = dist.layout.segment_blocks.astype(np.uint32)
        self.n_blocks = len(dist.layout.block_segment)
        self.gather = dist.gather_partials


class ShardGradient:
    """This rank's flat piece of an averaged gradient (``collect(full=False)``), for ``run`` only."""
    __slots__ = ("piece", "shape")

    def __init__(self, piece, shape):
        self.piece, self.shape = piece, shape

    @property
    def dtype(self):
        return self.piece.dtype


def _concat_bytes(arrays):
    return np.concatenate([np.ascontiguousarray(x).reshape(-1).view(np.uint8) for x in arrays]) if arrays \
        else np.zeros(0, np.uint8)


class Program:
    """A list of (kernel, buffer names) dispatches with one scalar table (per global segment) each."""

    def __init__(self, dispatches, n_segments, dtype=np.float32):
        self.dispatches = [dispatch(k, names) for k, names in dispatches]
        self.tables = [np.zeros((n_segments, len(k.scalars)), dtype) for k, _ in self.dispatches]


def _table_dtype(arrays):
    """The scalar tables' dtype of the single-process CPU backend for these parameters."""
    choose = getattr(_numpy_backend, "table_dtype", None)
    return np.float32 if choose is None else choose(arrays)
