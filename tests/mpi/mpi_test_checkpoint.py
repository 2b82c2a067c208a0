"""hyperopt.save/load under comm=: one consolidated file gathered to rank 0 (the single-process
file's bits), and shard sets (``shards=True``: one file per rank) that load with the same rank
count, with fewer ranks and in one process, bit for bit; partial, mixed and crafted sets refused
on every rank with nothing changed, and failed writes raised everywhere with nobody left waiting."""
import io
import json
import os
import zipfile

import numpy as np
import pytest

import hyperopt
from hyperopt import AdamW, CheckpointError, checkpoint

from mpi_test_agreement import _every_rank_raised, _snapshot, _unchanged
from mpi_test_optimizers import CASES, _local_and_mean, _start, assert_same_state

STEPS = 2


def _path(comm, tmp_path, name):
    """A path every rank sees (rank 0's tmp_path)."""
    return comm.bcast(str(tmp_path / name) if comm.rank == 0 else None, root=0)


def _run(case, comm):
    """The case under comm and in one process, STEPS steps of the same mean gradients."""
    mine, ref = _start(), _start()
    dist = CASES[case](mine, use_gpu=False, comm=comm)
    single = CASES[case](ref, use_gpu=False)
    for t in range(STEPS):
        local, mean = _local_and_mean(t, comm)
        dist.step(gradients=local)
        single.step(gradients=mean)
    return dist, mine, single, ref


def _members(path):
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def _resume_everywhere(case, comm, path, single, ref):
    """Load ``path`` with every rank (same count), half of them and one process; each has the
    single-process state, then steps as the single-process optimizer continued from it does."""
    half = comm.Split(color=comm.rank % 2, key=comm.rank)
    for c in (comm, half, None):
        resumed = [np.zeros_like(p) for p in ref]
        other = CASES[case](resumed, use_gpu=False, comm=c)
        hyperopt.load(other, path)
        assert all(np.array_equal(a, b) for a, b in zip(resumed, ref))
        assert_same_state(other.state_dict(), single.state_dict())
        mirror = [p.copy() for p in ref]
        follow = CASES[case](mirror, use_gpu=False)
        follow.load_state_dict(single.state_dict())
        for t in range(STEPS, STEPS + 2):
            local, mean = _local_and_mean(t, c if c is not None else _One())
            other.step(gradients=local)
            follow.step(gradients=mean)
            assert all(np.array_equal(a, b) for a, b in zip(resumed, mirror)), (case, c and c.size, t)
        other.close()
    half.Free()


class _One:
    """A stand-in communicator of one rank for the gradients of a single-process optimizer."""
    rank, size = 0, 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", sorted(CASES))
def test_consolidated_file_has_the_single_process_bits(case, comm, tmp_path):
    dist, mine, single, ref = _run(case, comm)
    path = _path(comm, tmp_path, "world.ckpt")
    hyperopt.save(dist, path, include_params=True)
    if comm.rank == 0:
        hyperopt.save(single, path + ".one", include_params=True)
        assert _members(path) == _members(path + ".one")        # metadata and every array, byte for byte
    comm.Barrier()
    _resume_everywhere(case, comm, path, single, ref)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", sorted(CASES))
def test_shard_set_loads_with_any_rank_count(case, comm, tmp_path, monkeypatch):
    dist, mine, single, ref = _run(case, comm)
    path = _path(comm, tmp_path, "world.ckpt")
    hyperopt.save(dist, path, include_params=True, shards=True)
    comm.Barrier()
    names = sorted(f for f in os.listdir(os.path.dirname(path)) if f.startswith("world.ckpt."))
    assert [n.rsplit(".", 1)[1] for n in names] == sorted(f"shard-{r}-of-{comm.size}" for r in range(comm.size))
    if comm.rank == 0:
        with zipfile.ZipFile(path) as z:        # the index: small state and the parameters, no per-element state
            params = {ref["__array__"] + ".npy" for ref in json.loads(z.read("checkpoint.json"))["param_arrays"]}
            assert all(z.getinfo(n).file_size < 4096 for n in z.namelist() if n.endswith(".npy") and n not in params)
    # with the same rank count and layout each rank opens only its own shard
    opened = []
    real = checkpoint._Archive.__init__

    def spy(self, file, fmt):
        opened.append(os.path.basename(file))
        real(self, file, fmt)
    monkeypatch.setattr(checkpoint._Archive, "__init__", spy)
    again = CASES[case]([np.zeros_like(p) for p in ref], use_gpu=False, comm=comm)
    hyperopt.load(again, path)
    assert [n for n in opened if "shard" in n] == [f"world.ckpt.{names[0].split('.')[2]}.shard-{comm.rank}-of-{comm.size}"]
    monkeypatch.undo()
    assert_same_state(again.state_dict(), single.state_dict())
    _resume_everywhere(case, comm, path, single, ref)


@pytest.mark.timeout(300)
def test_a_set_written_by_one_process_loads_on_every_rank(comm, tmp_path):
    dist, mine, single, ref = _run("adamw_amsgrad_groups", comm)
    path = _path(comm, tmp_path, "one.ckpt")
    if comm.rank == 0:
        hyperopt.save(single, path, include_params=True, shards=True)
    comm.Barrier()
    resumed = [np.zeros_like(p) for p in ref]
    other = CASES["adamw_amsgrad_groups"](resumed, use_gpu=False, comm=comm)
    hyperopt.load(other, path)
    assert_same_state(other.state_dict(), single.state_dict())
    local, mean = _local_and_mean(STEPS, comm)
    other.step(gradients=local)
    single.step(gradients=mean)
    assert all(np.array_equal(a, b) for a, b in zip(resumed, ref))


def _rewrite(src, meta_edit=None, member_edit=None):
    tmp = src + ".new"
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(tmp, "w") as out:
        for name in z.namelist():
            data = z.read(name)
            if name == "checkpoint.json" and meta_edit:
                meta = json.loads(data)
                meta_edit(meta)
                data = json.dumps(meta).encode()
            elif member_edit:
                data = member_edit(name, data)
            out.writestr(name, data)
    os.replace(tmp, src)


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


DEFECTS = {
    "missing shard": ("incomplete", lambda path, shard, other: os.unlink(shard)),
    "shard of another save": ("belongs to another save", lambda path, shard, other: os.replace(other, shard)),
    "members": ("does not hold the pieces", lambda path, shard, other: _rewrite(
        shard, meta_edit=lambda m: m["members"].popitem())),
    "pickled piece": ("without pickle", lambda path, shard, other: _rewrite(
        shard, member_edit=lambda n, d: _npy(np.array([None], dtype=object)) if n.startswith("b") else d)),
    "short piece": ("is not", lambda path, shard, other: _rewrite(
        shard, member_edit=lambda n, d: _npy(np.load(io.BytesIO(d))[:-1]) if n.startswith("b") else d)),
    "another layout": ("do not cover", lambda path, shard, other: _rewrite(
        path, meta_edit=lambda m: m["shards"]["layout"][-1].pop())),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_partial_mixed_or_crafted_sets_are_refused_on_every_rank(defect, comm, tmp_path):
    """The last rank's shard spoiled: every rank raises CheckpointError, nothing changes anywhere,
    and the next collective runs (nobody was left waiting)."""
    words, spoil = DEFECTS[defect]
    ps = _start()
    opt = AdamW(ps, lr=0.01, amsgrad=True, use_gpu=False, comm=comm)
    for t in range(STEPS):
        opt.step(gradients=_local_and_mean(t, comm)[0])
    path = _path(comm, tmp_path, "set.ckpt")
    other_path = _path(comm, tmp_path, "other.ckpt")
    hyperopt.save(opt, path, shards=True, include_params=True)
    hyperopt.save(opt, other_path, shards=True)
    comm.Barrier()
    last = comm.size - 1

    def shard_of(p):
        d = os.path.dirname(p)
        return os.path.join(d, next(f for f in os.listdir(d) if f.startswith(os.path.basename(p) + ".")
                                    and f.endswith(f".shard-{last}-of-{comm.size}")))
    if comm.rank == 0:
        spoil(path, shard_of(path), shard_of(other_path))
    comm.Barrier()
    before = _snapshot(opt, ps)
    with pytest.raises(CheckpointError, match=words) as info:
        hyperopt.load(opt, path)
    _every_rank_raised(comm, info.value, CheckpointError)
    _unchanged(opt, ps, before)
    opt.step(gradients=_local_and_mean(STEPS, comm)[0])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shards", [False, True], ids=["consolidated", "shards"])
def test_a_failed_write_is_raised_everywhere_and_keeps_the_previous_file(shards, comm, tmp_path, monkeypatch):
    ps = _start()
    opt = AdamW(ps, lr=0.01, use_gpu=False, comm=comm)
    opt.step(gradients=_local_and_mean(0, comm)[0])
    path = _path(comm, tmp_path, "run.ckpt")
    hyperopt.save(opt, path, shards=shards)
    saved = opt.state_dict()
    comm.Barrier()
    listing = sorted(os.listdir(os.path.dirname(path)))
    opt.step(gradients=_local_and_mean(1, comm)[0])
    # the writing rank fails mid-file: rank 0 after its first array (consolidated), the last rank's shard
    failing = 0 if not shards else comm.size - 1
    calls = []
    real = checkpoint._write_array

    def disk_full(f, a):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real(f, a)
    if comm.rank == failing:
        monkeypatch.setattr(checkpoint, "_write_array", disk_full)
    with pytest.raises(OSError, match="disk full") as info:
        hyperopt.save(opt, path, shards=shards)
    _every_rank_raised(comm, info.value, OSError)
    monkeypatch.undo()
    comm.Barrier()
    assert sorted(os.listdir(os.path.dirname(path))) == listing     # no temporary or new shard left
    fresh = AdamW([np.zeros_like(p) for p in ps], lr=0.01, use_gpu=False, comm=comm)
    hyperopt.load(fresh, path)
    assert_same_state(fresh.state_dict(), saved)                    # the previous checkpoint
    hyperopt.save(opt, path, shards=shards)                         # and the next save runs
