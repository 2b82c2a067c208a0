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

from .optimizer import _data, _interrupts_deferred

FORMAT = "hyperopt-checkpoint"
VERSION = 1
_META = "checkpoint.json"
_TAGS = ("__array__", "__tuple__", "__items__")
_MAX_META_BYTES = 64 << 20


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as one, or that does not belong to this optimizer."""


# ---------------------------------------------------------------------------------------------- save
def save(optimizer, path, *, include_params: bool = False) -> None:
    """Write ``optimizer``'s state to ``path`` (atomically; an existing file is replaced).

    ``include_params=True`` also stores the parameter arrays, so that the one file resumes a run:
    ``load`` then writes them into the optimizer's parameters in place.
    """
    if not isinstance(include_params, bool):
        raise TypeError(f"include_params must be True or False, got {include_params!r}")
    with _held(optimizer):                  # no step from another thread between the state and the parameters
        blob, arrays = _encode_checkpoint(optimizer, include_params)
    _write_atomic(os.fspath(path), blob, arrays)


def _held(optimizer):
    """The optimizer's own lock where it has one (it serialises step and state_dict across threads)."""
    lock = getattr(optimizer, "_lock", None)
    return lock if lock is not None else contextlib.nullcontext()


def _encode_checkpoint(optimizer, include_params):
    params = [_data(p) for p in optimizer.params()]
    arrays: dict[str, np.ndarray] = {}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "optimizer": type(optimizer).__name__,
        "params": [{"shape": list(a.shape), "dtype": a.dtype.str} for a in params],
        "include_params": include_params,
        "state_dict": _encode(optimizer.state_dict(), arrays, "state_dict"),
    }
    if include_params:
        meta["param_arrays"] = [_add_array(arrays, a.copy()) for a in params]   # written after the lock
    return json.dumps(meta, allow_nan=False, separators=(",", ":")).encode(), arrays


def _add_array(arrays, a) -> dict:
    name = f"a{len(arrays)}"
    arrays[name] = np.ascontiguousarray(a)
    return {"__array__": name}


def _encode(obj, arrays, where):
    """JSON-ready form of plain state: arrays by reference, tuples and non-string-keyed dicts tagged."""
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
        return {"__tuple__": [_encode(v, arrays, f"{where}[{k}]") for k, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{where}[{k}]") for k, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, arrays, f"{where}[{k!r}]") for k, v in obj.items()}
        return {"__items__": [[_encode(k, arrays, where), _encode(v, arrays, f"{where}[{k!r}]")]
                              for k, v in obj.items()]}
    raise TypeError(f"cannot save {where}: a {type(obj).__name__} is not plain state "
                    "(numbers, strings, lists, dicts and NumPy arrays)")


def _write_atomic(path: str, blob: bytes, arrays: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, _file_mode(path))       # mkstemp makes it owner-only; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
                z.writestr(_META, blob)
                for name, a in arrays.items():
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
    optimizer's parameter arrays in place."""
    meta, arrays = _read(os.fspath(path))
    name = meta.get("optimizer")
    if name != type(optimizer).__name__:
        raise CheckpointError(f"{path} is a checkpoint of {name!r}, not of {type(optimizer).__name__}")
    params = [_data(p) for p in optimizer.params()]
    layout = meta.get("params")
    mine = [{"shape": list(a.shape), "dtype": a.dtype.str} for a in params]
    if layout != mine:
        raise CheckpointError(f"{path} was saved for parameters {_describe(layout)}, this optimizer has {_describe(mine)}")
    try:
        state_dict = _decode(meta.get("state_dict"), arrays)
        values = None
        if meta.get("include_params") is True:
            values = [_decode(ref, arrays) for ref in meta.get("param_arrays", ())]
            _check_param_values(values, params)
        elif meta.get("include_params") is not False:
            raise CheckpointError("'include_params' must be true or false")
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if values is not None:
        for i, p in enumerate(params):
            if not p.flags.writeable:
                raise CheckpointError(f"{path} holds parameter values, but parameter {i} is a read-only array")
    with _held(optimizer), _interrupts_deferred():    # Ctrl-C waits: state and parameters move together
        optimizer.load_state_dict(state_dict)  # checks everything first; raises with nothing changed
        if values:
            for p, v in zip(params, values):
                np.copyto(p, v)
            optimizer.reload_params()           # the Vulkan path keeps a device copy of the parameters


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


def _read(path: str):
    """(metadata, {name: array}) from a checkpoint file, parsing JSON and raw .npy arrays only."""
    try:
        z = zipfile.ZipFile(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError, RuntimeError):   # damaged
        raise CheckpointError(f"{path} is not a hyperopt checkpoint (not a zip archive of arrays and JSON; "
                              "pickle files are never loaded)") from None
    try:
        return _read_members(path, z)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc})") from None
    finally:
        z.close()


def _read_members(path: str, z: zipfile.ZipFile):
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
    if found != FORMAT:
        raise CheckpointError(f"{path} is not a hyperopt checkpoint (format {found!r})")
    version = meta.get("version")
    if version != VERSION or isinstance(version, bool):
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this hyperopt reads version {VERSION}")
    arrays = {}
    for member in names:
        if member == _META:
            continue
        if not (member.endswith(".npy") and member[:-4].isidentifier()):
            raise CheckpointError(f"{path} holds an unexpected member {member!r}")
        with z.open(member) as f:
            try:
                a = np.lib.format.read_array(f, allow_pickle=False)
            except ValueError as exc:     # object arrays among them: "pickled data"
                raise CheckpointError(f"{path}: array {member!r} cannot be read without pickle ({exc})") from None
            except Exception as exc:
                raise CheckpointError(f"{path}: array {member!r} is malformed ({exc})") from None
        if a.dtype.kind not in "biuf":
            raise CheckpointError(f"{path}: array {member!r} has dtype {a.dtype}, not a numeric one")
        arrays[member[:-4]] = a
    return meta, arrays


def _refuse_constant(name):
    raise ValueError(f"{name} is not allowed in a checkpoint")


def _decode(obj, arrays):
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        raise CheckpointError(f"unexpected JSON value {obj!r}")
    tags = [t for t in _TAGS if t in obj]
    if not tags:
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if len(obj) != 1:
        raise CheckpointError(f"malformed tagged value {sorted(obj)}")
    tag, value = tags[0], obj[tags[0]]
    if tag == "__array__":
        if not isinstance(value, str) or value not in arrays:
            raise CheckpointError(f"reference to a missing array {value!r}")
        return arrays[value].copy()
    if not isinstance(value, list):
        raise CheckpointError(f"malformed {tag} value")
    if tag == "__tuple__":
        return tuple(_decode(v, arrays) for v in value)
    out = {}
    for item in value:
        if not (isinstance(item, list) and len(item) == 2):
            raise CheckpointError("malformed dict item")
        key = _decode(item[0], arrays)
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise CheckpointError(f"dict key {key!r} is neither a string nor an integer")
        out[key] = _decode(item[1], arrays)
    return out
