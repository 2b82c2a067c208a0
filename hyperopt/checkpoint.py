"""Checkpoint files: ``save(optimizer, path)`` and ``load(optimizer, path)``, without pickle.

A checkpoint is a zip archive of ``.npy`` arrays (NumPy's format, read with ``allow_pickle=False``)
and one JSON document, ``checkpoint.json``: the format name and version, the optimizer's class, its
``state_dict()`` (hyperparameters, per-group and scalar state; each array replaced by a reference
``{"__array__": name}``), the parameters' shapes and dtypes, and whether the parameters themselves
are in the file.  Loading parses JSON and raw arrays only, so a file cannot run code; everything it
holds is then checked by ``load_state_dict``, which refuses another class's state.

Writes are atomic: the archive goes to a temporary file in the target's directory, is flushed and
fsynced, then renamed over the target (and the directory fsynced), so a crash mid-save leaves the
previous file as it was.

Under ``comm`` (data-parallel, ``hyperopt.distributed``) ``save`` and ``load`` are collective, and
an error on any rank (a full disk on rank 0, a missing file) is raised on every rank, none left
waiting.  Two layouts:

* One consolidated file (the default): exactly the single-process format, which any number of
  ranks, or one process, loads.  Each rank hands in only its own pieces of the per-element state;
  rank 0 gathers them (``Gatherv``) one buffer at a time, as it writes that buffer's member, so
  the other ranks never hold more than their shard, and rank 0 one buffer beyond it.
* A shard set (``save(opt, path, shards=True)``), for large runs: no per-element state travels.
  Each rank writes its pieces to its own file ``<path>.<token>.shard-<r>-of-<n>``, a zip like a
  checkpoint (format ``hyperopt-checkpoint-shard``) whose JSON names the set's ``token``, its rank,
  the rank count and its members (``name: [parameter, start, stop]``: flat element ranges of the
  parameter).  Then rank 0 writes ``path``, the index: a checkpoint whose state dict refers to the
  per-element buffers as ``{"__sharded__": name}`` (``"sharded"``: name -> parameter index) and
  whose ``"shards"`` entry holds the token (random, new for every save), the rank count and the
  layout (per rank, its ``[parameter, start, stop]`` pieces).  Replacing the index is the moment
  the new set replaces the old one (whose shard files, under the old token, are then removed), so
  a crash mid-save leaves the previous checkpoint loadable.  ``load`` checks every shard file
  against the index (token, rank, rank count, members; the layout must tile every parameter) and
  refuses a missing, extra-member, mixed or mismatched shard with ``CheckpointError`` on every
  rank, changing nothing.  With the rank count and layout of the save, each rank reads only its
  own shard; with any other count (or one process) each rank reads the pieces overlapping its
  range from the files that hold them.  Without ``comm``, ``shards=True`` writes a one-shard set
  (``<path>.<token>.shard-0-of-1``), loadable by any rank count.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
import zlib

import numpy as np

from . import checkpoint_shards as shard_sets   # shard sets, built on the file format defined here
from .optimizer import _data, _interrupts_deferred
from .state_checks import ShardPiece

FORMAT = "hyperopt-checkpoint"
VERSION = 1
_META = "checkpoint.json"
_TAGS = ("__array__", "__sharded__", "__tuple__", "__items__")
SHARD_FORMAT = "hyperopt-checkpoint-shard"
_MAX_META_BYTES = 64 << 20


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as one, or that does not belong to this optimizer."""


# ---------------------------------------------------------------------------------------------- save
def save(optimizer, path, *, include_params: bool = False, shards: bool = False) -> None:
    """Write ``optimizer``'s state to ``path`` (atomically; an existing file is replaced).

    ``include_params=True`` also stores the parameter arrays, so that the one file resumes a run:
    ``load`` then writes them into the optimizer's parameters in place.

    ``shards=True`` writes a shard set instead of one consolidated file: ``path`` becomes a small
    index and each rank writes its own per-element state to ``<path>.<token>.shard-R-of-N`` (see the
    module docstring).  Without ``comm`` it is a one-shard set.  ``load`` reads either kind.
    """
    if not isinstance(include_params, bool):
        raise TypeError(f"include_params must be True or False, got {include_params!r}")
    if not isinstance(shards, bool):
        raise TypeError(f"shards must be True or False, got {shards!r}")
    path = os.fspath(path)
    if shards:
        return shard_sets.save(optimizer, path, include_params)
    dist = _dist(optimizer)
    root = dist is None or dist.rank == 0
    if dist is None:
        with _held(optimizer):   # no step from another thread between the state and the parameters
            blob, arrays, _ = _encode_checkpoint(optimizer, include_params)
        old = shard_sets.old_files(path)
        _write_atomic(path, blob, arrays)
        _remove(old)
        return
    # every rank gives its pieces (views: the lock is held until they are written), gathered to
    # rank 0 one buffer at a time as rank 0 writes that buffer's member: no rank ever holds the
    # whole state, rank 0 one buffer of it
    with _held(optimizer):
        blob, arrays, _ = optimizer._agreed(lambda: _encode_checkpoint(optimizer, include_params, keep_params=root))
        failure = []
        members = _gathered(dist, arrays)
        if root:
            old = shard_sets.old_files(path)
            try:
                _write_atomic(path, blob, members)
            except Exception as exc:     # reported below, on every rank
                failure.append(exc)
        for _ in members:    # the gathers rank 0 did not reach (a failed write), or every gather elsewhere
            pass
    optimizer._agreed(lambda: _raise_first(failure))
    if root:
        _remove(old)


def _dist(optimizer):
    return optimizer._backend if getattr(optimizer, "comm", None) is not None else None


def _raise_first(failures):
    if failures:
        raise failures[0]


def _gathered(dist, arrays):
    """``(name, array)`` of every member, each ``ShardPiece`` gathered whole on rank 0 (collective:
    every rank must run the generator to its end; it yields None for pieces on the other ranks)."""
    for name, a in arrays.items():
        yield name, dist.gather_piece(a) if isinstance(a, ShardPiece) else a


def _held(optimizer):
    """The optimizer's own lock where it has one (it serialises step and state_dict across threads)."""
    lock = getattr(optimizer, "_lock", None)
    return lock if lock is not None else contextlib.nullcontext()


def _encode_checkpoint(optimizer, include_params, keep_params=True, sharded=False):
    """(JSON blob, {name: array or ShardPiece}, {name: ShardPiece or array} of the sharded buffers).

    Under ``comm`` the per-element buffers are this rank's pieces (``_local_state_dict``).  With
    ``sharded``, they are referenced as ``{"__sharded__": name}`` and returned apart; without, they
    are ordinary ``{"__array__": name}`` members, to be gathered.  ``keep_params=False``: the
    parameter members are placeholders (a rank that does not write them keeps no copy)."""
    params = [_data(p) for p in optimizer.params()]
    arrays: dict = {}
    pieces: dict | None = {} if sharded else None
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "optimizer": type(optimizer).__name__,
        "params": [{"shape": list(a.shape), "dtype": a.dtype.str} for a in params],
        "include_params": include_params,
        "state_dict": _encode(optimizer._local_state_dict(pieces=sharded or None, views=True), arrays, "state_dict",
                              pieces),
    }
    if include_params:
        meta["param_arrays"] = [_add_array(arrays, a.copy() if keep_params else None) for a in params]
    if sharded:
        meta["sharded"] = {name: piece.index for name, piece in pieces.items()}
    return json.dumps(meta, allow_nan=False, separators=(",", ":")).encode(), arrays, pieces


def _remove(files) -> None:
    for f in files:
        try:
            os.unlink(f)
        except OSError:
            pass


def _add_array(arrays, a) -> dict:
    name = f"a{len(arrays)}"
    arrays[name] = a if a is None or isinstance(a, ShardPiece) else np.ascontiguousarray(a)
    return {"__array__": name}


def _encode(obj, arrays, where, pieces=None):
    """JSON-ready form of plain state: arrays by reference, tuples and non-string-keyed dicts tagged.
    ``ShardPiece``s: into ``pieces`` as ``{"__sharded__": name}`` where given, else into ``arrays``."""
    if isinstance(obj, ShardPiece):
        if pieces is None:
            return _add_array(arrays, obj)
        name = f"b{len(pieces)}"
        pieces[name] = obj
        return {"__sharded__": name}
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"cannot save {where}: it is {obj} (state must be finite)")
        return obj
    if isinstance(obj, (np.bool_, np.integer, np.floating)):
        return _encode(obj.item(), arrays, where)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot save {where}: an array of dtype {obj.dtype}")
        return _add_array(arrays, obj)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{where}[{k}]", pieces) for k, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{where}[{k}]", pieces) for k, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, arrays, f"{where}[{k!r}]", pieces) for k, v in obj.items()}
        return {"__items__": [[_encode(k, arrays, where), _encode(v, arrays, f"{where}[{k!r}]", pieces)]
                              for k, v in obj.items()]}
    raise TypeError(f"cannot save {where}: a {type(obj).__name__} is not plain state "
                    "(numbers, strings, lists, dicts and NumPy arrays)")


def _write_atomic(path: str, blob: bytes, arrays) -> None:
    """Write the archive: ``blob`` as the metadata, then ``arrays`` ({name: array}, or an iterable of
    (name, array) pairs, consumed as the members are written)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, _file_mode(path))       # mkstemp makes it owner-only; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
                z.writestr(_META, blob)
                for name, a in (arrays.items() if isinstance(arrays, dict) else arrays):
                    with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                        _write_array(member, a)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _file_mode(path: str) -> int:
    """The mode of the file being replaced, or what ``open`` would give a new one (0o666 less the umask)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        pass
    try:
        with open("/proc/self/status") as f:        # reading the umask without changing it (Linux)
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = 0o022
    return 0o666 & ~umask


def _write_array(f, a: np.ndarray) -> None:
    np.lib.format.write_array(f, a, allow_pickle=False)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:          # e.g. a platform without directory handles: the rename itself is done
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- load
def load(optimizer, path) -> None:
    """Restore a checkpoint written by ``save`` into ``optimizer`` (of the class that wrote it,
    over parameters of the same shapes and dtypes).  All or nothing: a file that is not a valid
    checkpoint for this optimizer raises ``CheckpointError`` (a ``ValueError``) and changes nothing;
    no code from the file ever runs.  If the file holds the parameters, they are written into the
    optimizer's parameter arrays in place.  ``path`` is a consolidated file or the index of a shard
    set (``save(..., shards=True)``), written with any number of ranks.  With ``comm``, every rank
    reads the file (a shared filesystem) and keeps its shard; from a shard set each rank reads only
    the pieces of its own range (its own shard file when the rank count and layout are the same).
    An error on any rank is raised on every rank."""
    state_dict, values = optimizer._agreed(lambda: _prepare_load(optimizer, path)) \
        if getattr(optimizer, "comm", None) is not None else _prepare_load(optimizer, path)
    params = [_data(p) for p in optimizer.params()]
    with _held(optimizer), _interrupts_deferred():    # Ctrl-C waits: state and parameters move together
        optimizer.load_state_dict(state_dict)  # checks everything first; raises with nothing changed
        if values:
            for p, v in zip(params, values):
                np.copyto(p, v)
            optimizer.reload_params()           # the Vulkan path keeps a device copy of the parameters


def _prepare_load(optimizer, path):
    """The checked state dict and parameter values (or None) of a checkpoint file for ``optimizer``."""
    path = os.fspath(path)
    archive = _Archive(path, FORMAT)
    try:
        return _prepare_from(optimizer, path, archive)
    finally:
        archive.close()


def _prepare_from(optimizer, path, archive):
    meta = archive.meta
    name = meta.get("optimizer")
    if name != type(optimizer).__name__:
        raise CheckpointError(f"{path} is a checkpoint of {name!r}, not of {type(optimizer).__name__}")
    params = [_data(p) for p in optimizer.params()]
    layout = meta.get("params")
    mine = [{"shape": list(a.shape), "dtype": a.dtype.str} for a in params]
    if layout != mine:
        raise CheckpointError(f"{path} was saved for parameters {_describe(layout)}, this optimizer has {_describe(mine)}")
    try:
        sharded = None
        if "shards" in meta:
            sharded = shard_sets.read(optimizer, path, meta, params)
        elif "sharded" in meta:
            raise CheckpointError("sharded buffers without a shard set")
        arrays = _Members(archive, _dist(optimizer), params, _buffer_refs(optimizer, meta, params))
        state_dict = _decode(meta.get("state_dict"), arrays, sharded)
        values = None
        if meta.get("include_params") is True:
            values = [_decode(ref, arrays) for ref in meta.get("param_arrays", ())]
            _check_param_values(values, params)
        elif meta.get("include_params") is not False:
            raise CheckpointError("'include_params' must be true or false")
        for name in archive.names:      # members nothing refers to are still checked (numeric .npy, no pickle)
            if name not in arrays.read:
                archive.array(name)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if values is not None:
        for i, p in enumerate(params):
            if not p.flags.writeable:
                raise CheckpointError(f"{path} holds parameter values, but parameter {i} is a read-only array")
    return state_dict, values


def _buffer_refs(optimizer, meta, params) -> dict:
    """{array name: parameter index} of the per-element buffers of a consolidated file, which a
    rank under ``comm`` cuts to its piece as it reads them (one whole buffer at a time, never the
    whole state).  Anything of another form is read whole (``load_state_dict`` checks it)."""
    if _dist(optimizer) is None:
        return {}
    try:
        items = meta["state_dict"]["state"]["__items__"]
    except (KeyError, TypeError):
        return {}
    kinds = getattr(optimizer, "_buffer_kinds", {})
    refs = {}
    for item in items if isinstance(items, list) else ():
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict)):
            continue
        i, entry = item
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(params):
            continue
        for key, ref in entry.items():
            if key in kinds and isinstance(ref, dict) and list(ref) == ["__array__"] and isinstance(ref["__array__"], str):
                refs[ref["__array__"]] = i
    return refs


class _Members:
    """The arrays of an open archive, read as they are referenced (each read a fresh array): the
    per-element buffers named in ``cut`` as this rank's ``ShardPiece`` of them."""

    def __init__(self, archive, dist, params, cut):
        self.archive, self.dist, self.params, self.cut = archive, dist, params, cut
        self.read = set()

    def __contains__(self, name):
        return name in self.archive.names

    def __getitem__(self, name):
        a = self.archive.array(name)
        self.read.add(name)
        i = self.cut.get(name)
        if i is None or a.dtype != self.params[i].dtype or a.shape != self.params[i].shape:
            return a
        lo, hi = self.dist.piece_range(i)
        return ShardPiece(a.reshape(-1)[lo:hi].copy(), lo, hi, a.shape, i)


def _describe(layout) -> str:
    try:
        return ", ".join(f"{tuple(e['shape'])} {np.dtype(e['dtype'])}" for e in layout) or "none"
    except Exception:
        return repr(layout)[:200]


def _check_param_values(values, params):
    if len(values) != len(params):
        raise CheckpointError(f"the file holds {len(values)} parameter arrays for {len(params)} parameters")
    for i, (v, p) in enumerate(zip(values, params)):
        if not isinstance(v, np.ndarray) or v.shape != p.shape or v.dtype != p.dtype:
            raise CheckpointError(f"parameter {i} in the file is not a {p.dtype} array of shape {p.shape}")
        if not np.isfinite(v).all():
            raise CheckpointError(f"parameter {i} in the file contains NaN or infinity")


class _Archive:
    """An open checkpoint or shard file: its checked metadata, its member names; ``array(name)``
    reads one member (JSON and raw .npy only, never pickle)."""

    def __init__(self, path: str, fmt: str):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise
        except (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError, RuntimeError):   # damaged
            raise CheckpointError(f"{path} is not a hyperopt checkpoint (not a zip archive of arrays and JSON; "
                                  "pickle files are never loaded)") from None
        try:
            self.meta, self.names = self._guarded(self._members, fmt)
        except BaseException:
            self.zip.close()
            raise

    def close(self):
        self.zip.close()

    def _guarded(self, fn, *args):
        try:
            return fn(*args)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError, RuntimeError) as exc:
            raise CheckpointError(f"{self.path} is damaged ({exc})") from None

    def _members(self, fmt):
        path, z = self.path, self.zip
        names = z.namelist()
        if _META not in names:
            raise CheckpointError(f"{path} is not a hyperopt checkpoint (no {_META})")
        info = z.getinfo(_META)
        if info.file_size > _MAX_META_BYTES:
            raise CheckpointError(f"{path}: {_META} is {info.file_size} bytes, more than a checkpoint's metadata")
        try:
            meta = json.loads(z.read(_META).decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            raise CheckpointError(f"{path}: {_META} is not valid JSON ({exc})") from None
        found = meta.get("format") if isinstance(meta, dict) else None
        if found != fmt:
            what = "hyperopt checkpoint" if fmt == FORMAT else "hyperopt checkpoint shard"
            raise CheckpointError(f"{path} is not a {what} (format {found!r})")
        version = meta.get("version")
        if version != VERSION or isinstance(version, bool):
            raise CheckpointError(f"{path} has checkpoint format version {version!r}; this hyperopt reads version {VERSION}")
        members = []
        for member in names:
            if member == _META:
                continue
            if not (member.endswith(".npy") and member[:-4].isidentifier()) or member[:-4] in members:
                raise CheckpointError(f"{path} holds an unexpected member {member!r}")
            members.append(member[:-4])
        return meta, members

    def array(self, name: str) -> np.ndarray:
        return self._guarded(self._array, name)

    def _array(self, name):
        path, member = self.path, f"{name}.npy"
        with self.zip.open(member) as f:
            try:
                a = np.lib.format.read_array(f, allow_pickle=False)
            except ValueError as exc:     # object arrays among them: "pickled data"
                raise CheckpointError(f"{path}: array {member!r} cannot be read without pickle ({exc})") from None
            except Exception as exc:
                raise CheckpointError(f"{path}: array {member!r} is malformed ({exc})") from None
        if a.dtype.kind not in "biuf":
            raise CheckpointError(f"{path}: array {member!r} has dtype {a.dtype}, not a numeric one")
        return a


def _refuse_constant(name):
    raise ValueError(f"{name} is not allowed in a checkpoint")


def _decode(obj, arrays, sharded=None):
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj
    if isinstance(obj, list):
        return [_decode(v, arrays, sharded) for v in obj]
    if not isinstance(obj, dict):
        raise CheckpointError(f"unexpected JSON value {obj!r}")
    tags = [t for t in _TAGS if t in obj]
    if not tags:
        return {k: _decode(v, arrays, sharded) for k, v in obj.items()}
    if len(obj) != 1:
        raise CheckpointError(f"malformed tagged value {sorted(obj)}")
    tag, value = tags[0], obj[tags[0]]
    if tag == "__array__":
        if not isinstance(value, str) or value not in arrays:
            raise CheckpointError(f"reference to a missing array {value!r}")
        return arrays[value] if isinstance(arrays, _Members) else arrays[value].copy()
    if tag == "__sharded__":
        if sharded is None or not isinstance(value, str) or value not in sharded:
            raise CheckpointError(f"reference to a missing sharded buffer {value!r}")
        return sharded[value].copy()
    if not isinstance(value, list):
        raise CheckpointError(f"malformed {tag} value")
    if tag == "__tuple__":
        return tuple(_decode(v, arrays, sharded) for v in value)
    out = {}
    for item in value:
        if not (isinstance(item, list) and len(item) == 2):
            raise CheckpointError("malformed dict item")
        key = _decode(item[0], arrays, sharded)
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise CheckpointError(f"dict key {key!r} is neither a string nor an integer")
        out[key] = _decode(item[1], arrays, sharded)
    return out
