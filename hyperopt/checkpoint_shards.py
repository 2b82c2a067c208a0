"""Shard sets: ``hyperopt.save(opt, path, shards=True)`` and loading them (see ``checkpoint``'s
docstring for the layout).  Each rank writes its own pieces of the per-element state to
``<path>.<token>.shard-<r>-of-<n>``, then rank 0 the index at ``path``; a load checks every shard
against the index and reads the pieces of its own range.  Built on ``checkpoint``'s file format
(archives, atomic writes, errors), which calls in here."""
from __future__ import annotations

import json
import os
import secrets
import zipfile

import numpy as np

from . import checkpoint as files
from .state_checks import ShardPiece

_TOKEN_CHARS = frozenset("0123456789abcdef")


def save(optimizer, path, include_params):
    """``save(..., shards=True)``: every rank writes its shard file, then rank 0 the index."""
    dist = files._dist(optimizer)
    rank, ranks = (dist.rank, dist.ranks) if dist is not None else (0, 1)
    with files._held(optimizer):   # held until the shard is written: its pieces are views of the live state
        blob, arrays, pieces = optimizer._agreed(
            lambda: files._encode_checkpoint(optimizer, include_params, keep_params=rank == 0, sharded=True))
        params = [files._data(p) for p in optimizer.params()]
        if dist is not None:
            layout = [[[int(i), int(a), int(b)] for i, a, b in pc] for pc in dist.layout.pieces]
            token = dist._allgather_text(secrets.token_hex(8))[0]       # rank 0's, on every rank
        else:
            layout = [[[i, 0, int(p.size)] for i, p in enumerate(params)]]
            token = secrets.token_hex(8)
        # 1. each rank's shard file (its pieces only), under a name no earlier save used
        mine = shard_path(path, token, rank, ranks)
        members = {name: piece.values for name, piece in pieces.items() if piece.stop > piece.start}
        shard_meta = {"format": files.SHARD_FORMAT, "version": files.VERSION, "optimizer": type(optimizer).__name__,
                      "token": token, "rank": rank, "ranks": ranks,
                      "members": {name: [pieces[name].index, pieces[name].start, pieces[name].stop]
                                  for name in members}}
        written = []

        def write_shard():
            files._write_atomic(mine, json.dumps(shard_meta, separators=(",", ":")).encode(), members)
            written.append(mine)
        try:
            optimizer._agreed(write_shard)
        except BaseException:
            files._remove(written)
            raise
    members = pieces = None      # the shard is written: drop the views of the live state
    try:
        # 2. the index, by rank 0: replacing it is the moment the new set takes the old one's place
        meta = json.loads(blob)
        meta["shards"] = {"token": token, "ranks": ranks, "layout": layout}
        blob = json.dumps(meta, allow_nan=False, separators=(",", ":")).encode()
        old = []

        def write_index():
            if rank == 0:
                old.extend(old_files(path))
                files._write_atomic(path, blob, arrays)
        optimizer._agreed(write_index)
    except BaseException:
        files._remove(written)        # a set that never got its index
        raise
    files._remove([f for f in old if f not in (shard_path(path, token, r, ranks) for r in range(ranks))])


def shard_path(path: str, token: str, rank: int, ranks: int) -> str:
    """The file of shard ``rank`` of the set ``token`` whose index is ``path``."""
    return f"{path}.{token}.shard-{rank}-of-{ranks}"


def old_files(path: str) -> list[str]:
    """The shard files of the set whose index is at ``path`` now (none if it is no shard index):
    removed once a new save has replaced it.  Best effort; names are derived, never read."""
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(files._META)
            if info.file_size > files._MAX_META_BYTES:
                return []
            meta = json.loads(z.read(files._META).decode("utf-8"))
        shards = meta.get("shards")
        token, ranks = shards["token"], shards["ranks"]
        if not _is_token(token) or not isinstance(ranks, int) or isinstance(ranks, bool) or not 0 < ranks <= 1 << 20:
            return []
        return [shard_path(path, token, r, ranks) for r in range(ranks)]
    except Exception:
        return []


def _is_token(token) -> bool:
    return isinstance(token, str) and 0 < len(token) <= 64 and set(token) <= _TOKEN_CHARS


def read(optimizer, path, meta, params):
    """{name: this rank's piece} of every sharded buffer of the index ``meta`` at ``path``: under
    ``comm`` a ``ShardPiece`` of this rank's range, else the whole buffer; read from the shard
    files that hold it, checked against the index (same save, same rank count and layout)."""
    shards = meta["shards"]
    if not isinstance(shards, dict) or sorted(shards) != ["layout", "ranks", "token"]:
        raise files.CheckpointError("malformed 'shards' entry")
    token, ranks, layout = shards["token"], shards["ranks"], shards["layout"]
    if not _is_token(token):
        raise files.CheckpointError(f"malformed shard set token {token!r}")
    if not isinstance(ranks, int) or isinstance(ranks, bool) or not 0 < ranks <= 1 << 20:
        raise files.CheckpointError(f"malformed shard count {ranks!r}")
    ranges = _check_layout(layout, ranks, params)          # ranges[i] = [(rank, a, b)] tiling parameter i
    table = meta.get("sharded")
    if not isinstance(table, dict):
        raise files.CheckpointError("a shard index without its 'sharded' table")
    for name, i in table.items():
        if not (isinstance(name, str) and name.isidentifier()) or isinstance(i, bool) or not isinstance(i, int) \
                or not 0 <= i < len(params):
            raise files.CheckpointError(f"malformed sharded buffer {name!r}: {i!r}")
    # what each shard file must hold: exactly its piece of every sharded buffer
    expected = [{} for _ in range(ranks)]
    for name, i in table.items():
        for r, a, b in ranges[i]:
            expected[r][name] = [i, a, b]
    dist = files._dist(optimizer)
    rank, size = (dist.rank, dist.ranks) if dist is not None else (0, 1)
    archives: dict = {}

    def shard(r):
        if r not in archives:
            file = shard_path(path, token, r, ranks)
            if not os.path.exists(file):
                raise files.CheckpointError(f"the shard set is incomplete: {os.path.basename(file)} is missing")
            archive = files._Archive(file, files.SHARD_FORMAT)
            archives[r] = archive
            m = archive.meta
            if m.get("token") != token or m.get("rank") != r or m.get("ranks") != ranks:
                raise files.CheckpointError(f"{os.path.basename(file)} belongs to another save (shard {m.get('rank')!r} of "
                                      f"{m.get('ranks')!r}, set {m.get('token')!r}; the index names set {token!r})")
            if m.get("optimizer") != meta.get("optimizer"):
                raise files.CheckpointError(f"{os.path.basename(file)} is a shard of {m.get('optimizer')!r}")
            if m.get("members") != expected[r] or sorted(archive.names) != sorted(expected[r]):
                raise files.CheckpointError(f"{os.path.basename(file)} does not hold the pieces its index names")
        return archives[r]
    try:
        for r in range(rank, ranks, size):   # every shard file opened by some rank: the set is complete
            shard(r)
        out = {}
        for name, i in table.items():
            p = params[i]
            lo, hi = dist.piece_range(i) if dist is not None else (0, p.size)
            values = np.empty(hi - lo, p.dtype)
            for r, a, b in ranges[i]:
                if b <= lo or a >= hi:
                    continue
                held = shard(r).array(name)
                if held.dtype != p.dtype or held.shape != (b - a,):
                    raise files.CheckpointError(f"shard {r}'s piece {name!r} is not {b - a} {p.dtype} elements")
                start, stop = max(a, lo), min(b, hi)
                values[start - lo:stop - lo] = held[start - a:stop - a]
            out[name] = ShardPiece(values, lo, hi, p.shape, i) if dist is not None else values.reshape(p.shape)
        return out
    finally:
        for archive in archives.values():
            archive.close()


def _check_layout(layout, ranks, params):
    """``layout`` (per rank, ``[[i, a, b], ...]``) as pieces that tile every parameter in rank order."""
    if not isinstance(layout, list) or len(layout) != ranks:
        raise files.CheckpointError("the shard layout does not list every shard")
    ranges = [[] for _ in params]
    for r, pieces in enumerate(layout):
        if not isinstance(pieces, list):
            raise files.CheckpointError(f"malformed layout of shard {r}")
        for piece in pieces:
            if not (isinstance(piece, list) and len(piece) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                       for v in piece)):
                raise files.CheckpointError(f"malformed piece {piece!r} of shard {r}")
            i, a, b = piece
            if not 0 <= i < len(params) or not 0 <= a < b <= params[i].size:
                raise files.CheckpointError(f"piece {piece!r} of shard {r} is outside the parameters")
            ranges[i].append((r, a, b))
    for i, p in enumerate(params):
        ends = [0] + [b for _, _, b in ranges[i]]
        if [a for _, a, _ in ranges[i]] != ends[:-1] or ends[-1] != p.size:
            raise files.CheckpointError(f"the shards' pieces of parameter {i} do not cover its {p.size} elements once, in order")
    return ranges
