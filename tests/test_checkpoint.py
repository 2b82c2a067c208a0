"""hyperopt.save / hyperopt.load: resume in a new process bit for bit, atomic writes, crafted files refused.

Run as a script (``python tests/test_checkpoint.py CASE KWARGS CKPT OUT``) it is the child of the
resume test: it builds the case's optimizer over zero parameters, loads the checkpoint (parameters
included) and finishes the run.
"""
import copy
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import hyperopt  # noqa: E402
from hyperopt import (HL, AdamW, AutoHypergradientAdamW, AutoSGM, CheckpointError, HCNaturalGrad,  # noqa: E402
                      HIOptimizer, HypergradientAdamW)

SHAPES = [(8, 6), (6,)]
STEPS, SPLIT = 8, 4

CASES = {
    "AdamW": lambda ps, kw: AdamW(ps, lr=0.05, amsgrad=True, **kw),
    "HypergradientAdamW": lambda ps, kw: HypergradientAdamW(ps, lr=0.01, beta_hyper=1e-3, **kw),
    "AutoHypergradientAdamW": lambda ps, kw: AutoHypergradientAdamW(ps, lr=0.01, warmup_steps=2, adapt_momentum=True,
                                                                    track_surprise=True, **kw),
    "HIOptimizer": lambda ps, kw: HIOptimizer(ps, lr=0.01, schmitt=(0.9, 1.1), **kw),
    "AutoSGM": lambda ps, kw: AutoSGM(ps, lr_cfg=(True, 1e-2, 2), mix_cfg=(True, True, 1e-2, 0.9, 0.0), **kw),
    "HCNaturalGrad-numpy": lambda ps, kw: HCNaturalGrad(ps, lr=0.05, fisher_damp=0.1, seed=3, **kw),
    "HCNaturalGrad-hash": lambda ps, kw: HCNaturalGrad(ps, lr=0.05, fisher_damp=0.1, seed=3, projection="hash", **kw),
    "HL": lambda ps, kw: HL.for_params(ps, theta=0.2, **kw),
}


def _step(opt, t):
    rng = np.random.default_rng(1000 + t)
    grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    if isinstance(opt, HCNaturalGrad):
        opt.step(gradients=grads, branches=rng.standard_normal((5, 3)))
    elif isinstance(opt, HL):          # a state gradient too, so the neuron costate moves and is saved
        opt.step(gradients=grads, h_grad=rng.standard_normal(1).astype(np.float32))
    else:
        opt.step(gradients=grads)


def _start():
    rng = np.random.default_rng(7)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _straight_and_split(case, opt_kwargs):
    """(ref, its parameters after STEPS steps; opt, its parameters after SPLIT steps): the
    uninterrupted run a resume must equal, and the first half of the interrupted one."""
    straight = _start()
    ref = CASES[case](straight, opt_kwargs)
    for t in range(STEPS):
        _step(ref, t)
    first = _start()
    opt = CASES[case](first, opt_kwargs)
    for t in range(SPLIT):
        _step(opt, t)
    return ref, straight, opt, first


def _child(case, kwargs, ckpt, out):
    params = [np.zeros(s, np.float32) for s in SHAPES]
    opt = CASES[case](params, json.loads(kwargs))
    hyperopt.load(opt, ckpt)
    for t in range(SPLIT, STEPS):
        _step(opt, t)
    extra = [opt.neuron_costate()] if isinstance(opt, HL) else []    # state that moves no weight
    np.savez(out, *params, *extra)


if __name__ == "__main__":
    _child(*sys.argv[1:])
    sys.exit(0)

import pytest  # noqa: E402


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_in_a_new_process_is_bit_for_bit(case, backend, opt_kwargs, tmp_path):
    ref, straight, opt, _ = _straight_and_split(case, opt_kwargs)
    ckpt = tmp_path / "run.ckpt"
    hyperopt.save(opt, ckpt, include_params=True)
    out = tmp_path / "final.npz"
    done = subprocess.run([sys.executable, __file__, case, json.dumps(opt_kwargs), str(ckpt), str(out)],
                          env=_env(), capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    with np.load(out, allow_pickle=False) as f:
        resumed = [f[f"arr_{k}"] for k in range(len(SHAPES))]
    for a, b in zip(resumed, straight):
        assert np.array_equal(a, b)
    assert not np.array_equal(straight[0], _start()[0])     # the run moved
    if case == "HL":
        with np.load(out, allow_pickle=False) as f:
            assert np.array_equal(f[f"arr_{len(SHAPES)}"], ref.neuron_costate())


def test_load_writes_parameters_in_place_and_the_state_without_them(backend, opt_kwargs, tmp_path):
    params = _start()
    opt = AdamW(params, lr=0.05, **opt_kwargs)
    for t in range(3):
        _step(opt, t)
    hyperopt.save(opt, tmp_path / "with.ckpt", include_params=True)
    hyperopt.save(opt, tmp_path / "without.ckpt")
    saved = [p.copy() for p in params]

    targets = [np.zeros(s, np.float32) for s in SHAPES]
    alias = targets[0]
    other = AdamW(targets, lr=0.05, **opt_kwargs)
    hyperopt.load(other, tmp_path / "without.ckpt")
    assert not any(t.any() for t in targets)            # the parameters are not in that file
    assert other.state[id(targets[0])]["step"] == 3
    hyperopt.load(other, tmp_path / "with.ckpt")
    assert targets[0] is alias and np.array_equal(alias, saved[0]) and np.array_equal(targets[1], saved[1])
    _step(opt, 3)
    _step(other, 3)
    assert all(np.array_equal(a, b) for a, b in zip(params, targets))


# ---------------------------------------------------------------------------------------------- atomic writes
def _adamw(rng_seed=0, steps=2, **kw):
    params = _start()
    opt = AdamW(params, lr=0.05, **(kw or {"use_gpu": False}))
    for t in range(steps):
        _step(opt, t + rng_seed)
    return opt, params


def test_a_failure_mid_save_leaves_the_previous_file(tmp_path, monkeypatch, opt_kwargs):
    opt, _ = _adamw(steps=2, **opt_kwargs)
    path = tmp_path / "run.ckpt"
    hyperopt.save(opt, path)
    before = path.read_bytes()
    _step(opt, 5)
    calls = []

    def failing(f, a):
        calls.append(a.shape)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        np.lib.format.write_array(f, a, allow_pickle=False)

    monkeypatch.setattr(hyperopt.checkpoint, "_write_array", failing)
    with pytest.raises(OSError, match="simulated"):
        hyperopt.save(opt, path)
    assert len(calls) == 2
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["run.ckpt"]         # no temporary file left behind
    start = _start()
    fresh = AdamW(start, lr=0.05, **opt_kwargs)
    hyperopt.load(fresh, path)
    assert fresh.state[id(start[0])]["step"] == 2


_SAVER = """
import os, sys, numpy as np, hyperopt
from hyperopt import AdamW
parent = os.getppid()       # the test kills this process; should the test die first, it stops by itself
params = [np.full((512, 512), float(k), np.float32) for k in range(8)]
opt = AdamW(params, **({"use_gpu": False} if sys.argv[2] == "cpu" else {"use_gpu": True, "device": sys.argv[2]}))
opt.step(gradients=[np.ones_like(p) for p in params])
print("saving", flush=True)
while os.getppid() == parent:
    for p in params:
        p += 1.0
    hyperopt.save(opt, sys.argv[1], include_params=True)
"""


@pytest.mark.no_launch   # the saving process is a child (it checks its own device through the file it writes)
@pytest.mark.timeout(120)
def test_killing_the_process_mid_save_leaves_a_loadable_file(tmp_path, opt_kwargs):
    path = tmp_path / "run.ckpt"
    rng = np.random.default_rng(0)
    for trial in range(5):
        child = subprocess.Popen([sys.executable, "-c", _SAVER, str(path), opt_kwargs.get("device") or "cpu"],
                                 env=_env(), stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert child.stdout.readline().strip() == "saving"
            time.sleep(0.05 + 0.3 * rng.random())
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            child.stdout.close()
        if not path.exists():          # killed before the first save completed: nothing to check yet
            continue
        params = [np.zeros((512, 512), np.float32) for _ in range(8)]
        opt = AdamW(params, **opt_kwargs)
        hyperopt.load(opt, path)        # a complete checkpoint, never a torn one
        base = params[0][0, 0]
        assert base > 0.5 and all(np.all(p == p.flat[0]) for p in params)   # saved after at least one edit
        assert [float(p.flat[0] - base) for p in params] == pytest.approx([k * 1.0 for k in range(8)], abs=1e-3)
    assert path.exists()


# ---------------------------------------------------------------------------------------------- crafted files
class _CreatesAFile:
    """Unpickling this object opens (creates) a file: the harmless stand-in for running any code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _object_array_npy(marker) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, np.array([_CreatesAFile(str(marker))], dtype=object), allow_pickle=True)
    return buf.getvalue()


def test_the_crafted_payload_would_create_a_file_if_unpickled(tmp_path):
    marker = tmp_path / "control"
    import io
    np.load(io.BytesIO(_object_array_npy(marker)), allow_pickle=True)
    assert marker.exists()      # so the tests below prove that loading ran nothing


@pytest.mark.parametrize("how", ["object array in a checkpoint", "npz with an object array", "renamed pickle"])
def test_crafted_files_run_nothing_and_are_refused(tmp_path, how, opt_kwargs):
    marker = tmp_path / "created-by-the-file"
    opt, params = _adamw(**opt_kwargs)
    path = tmp_path / "evil.ckpt"
    if how == "object array in a checkpoint":
        hyperopt.save(opt, tmp_path / "good.ckpt")
        with zipfile.ZipFile(tmp_path / "good.ckpt") as src, zipfile.ZipFile(path, "w") as dst:
            for name in src.namelist():
                data = _object_array_npy(marker) if name == "a0.npy" else src.read(name)
                dst.writestr(name, data)
    elif how == "npz with an object array":
        with open(path, "wb") as f:
            np.savez(f, a0=np.array([_CreatesAFile(str(marker))], dtype=object))
    else:
        path.write_bytes(pickle.dumps({"state": _CreatesAFile(str(marker))}))
    before = opt.state_dict()
    kept = [p.copy() for p in params]
    with pytest.raises(CheckpointError) as info:
        hyperopt.load(opt, path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    _assert_same_state(opt.state_dict(), before)
    assert all(np.array_equal(a, b) for a, b in zip(params, kept))


def _assert_same_state(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_state(x, y)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b)
    else:
        assert a == b


def _rewrite(src, dst, meta_edit=None, array_edit=None):
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for name in z.namelist():
            data = z.read(name)
            if name == "checkpoint.json" and meta_edit:
                meta = json.loads(data)
                meta_edit(meta)
                data = json.dumps(meta).encode()
            elif name.endswith(".npy") and array_edit:
                import io
                a = np.load(io.BytesIO(data), allow_pickle=False)
                a = array_edit(name, a)
                buf = io.BytesIO()
                np.save(buf, a, allow_pickle=False)
                data = buf.getvalue()
            out.writestr(name, data)


@pytest.mark.parametrize("defect, match", [
    ("other class", "checkpoint of 'HIOptimizer'"),
    ("version", "format version 2"),
    ("format", "not a hyperopt checkpoint"),
    ("truncated", "not a hyperopt checkpoint"),
    ("not json", "not valid JSON"),
    ("NaN in an array", "NaN"),
    ("negative second moment", "negative"),
    ("missing array", "missing array"),
    ("parameter shapes", "saved for parameters"),
    ("string step", "non-negative integer"),
    ("parameter values", "parameter 0 in the file"),
])
def test_malformed_files_are_refused_and_change_nothing(tmp_path, defect, match):
    opt, params = _adamw(steps=3)
    good = tmp_path / "good.ckpt"
    hyperopt.save(opt, good, include_params=True)
    bad = tmp_path / "bad.ckpt"

    def meta(fn):
        _rewrite(good, bad, meta_edit=fn)

    if defect == "other class":
        hio = HIOptimizer(_start(), use_gpu=False)
        hyperopt.save(hio, bad)
    elif defect == "version":
        meta(lambda m: m.update(version=2))
    elif defect == "format":
        meta(lambda m: m.update(format="something-else"))
    elif defect == "truncated":
        bad.write_bytes(good.read_bytes()[:-200])
    elif defect == "not json":
        with zipfile.ZipFile(good) as z, zipfile.ZipFile(bad, "w") as out:
            for name in z.namelist():
                out.writestr(name, b"{not json" if name == "checkpoint.json" else z.read(name))
    elif defect == "NaN in an array":
        _rewrite(good, bad, array_edit=lambda n, a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a)
                 .astype(a.dtype) if n == "a0.npy" else a)
    elif defect == "negative second moment":
        with zipfile.ZipFile(good) as z:
            m = json.loads(z.read("checkpoint.json"))
        target = m["state_dict"]["state"]["__items__"][0][1]["exp_avg_sq"]["__array__"] + ".npy"
        _rewrite(good, bad, array_edit=lambda n, a: -a - 1 if n == target else a)
    elif defect == "missing array":
        meta(lambda m: m["state_dict"]["state"]["__items__"][0][1].update(exp_avg={"__array__": "zz9"}))
    elif defect == "parameter shapes":
        meta(lambda m: m["params"][0].update(shape=[6, 8]))
    elif defect == "string step":
        meta(lambda m: m["state_dict"]["state"]["__items__"][0][1].update(step="3"))
    elif defect == "parameter values":
        meta(lambda m: m.update(param_arrays=[m["param_arrays"][1], m["param_arrays"][0]]))
    before = opt.state_dict()
    kept = [p.copy() for p in params]
    with pytest.raises((CheckpointError, ValueError), match=match):
        hyperopt.load(opt, bad)
    _assert_same_state(opt.state_dict(), before)
    assert all(np.array_equal(a, b) for a, b in zip(params, kept))
    hyperopt.load(opt, good)        # and the optimizer still takes a good file


def test_read_only_parameters_refuse_a_file_with_parameters(tmp_path):
    opt, params = _adamw()
    hyperopt.save(opt, tmp_path / "c.ckpt", include_params=True)
    frozen = _start()
    other = AdamW(frozen, lr=0.05, use_gpu=False)
    frozen[1].flags.writeable = False          # made read-only after the optimizer was built
    with pytest.raises(CheckpointError, match="read-only"):
        hyperopt.load(other, tmp_path / "c.ckpt")
    assert other.state == {} and np.array_equal(frozen[0], _start()[0])


def test_unsaveable_state_is_refused_before_anything_is_written(tmp_path):
    opt, _ = _adamw()
    opt.param_groups[0]["note"] = object()      # not plain data
    with pytest.raises(TypeError, match="note"):
        hyperopt.save(opt, tmp_path / "c.ckpt")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- pickle and copies
@pytest.mark.parametrize("make", [lambda: _adamw()[0], lambda: HCNaturalGrad(lr=0.1),
                                  lambda: HL.for_params(_start(), use_gpu=False)])
def test_pickling_or_copying_an_optimizer_points_to_save_and_load(make):
    opt = make()
    for attempt in (lambda: pickle.dumps(opt), lambda: copy.deepcopy(opt), lambda: copy.copy(opt)):
        with pytest.raises(TypeError, match=r"hyperopt\.save.*hyperopt\.load"):
            attempt()


@pytest.mark.parametrize("shards", [False, True], ids=["file", "shards"])
def test_functional_hcnaturalgrad_resumes_from_a_file(tmp_path, shards):
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    ctx = [{"grads": {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)},
            "info": {"branches": rng.standard_normal((5, 2))}} for _ in range(6)]
    ref = HCNaturalGrad(lr=0.05, fisher_damp=0.1, seed=4)
    straight = dict(params)
    for c in ctx:
        straight, _ = ref.step_params(None, straight, c)
    opt = HCNaturalGrad(lr=0.05, fisher_damp=0.1, seed=4)
    half = dict(params)
    for c in ctx[:3]:
        half, _ = opt.step_params(None, half, c)
    hyperopt.save(opt, tmp_path / "f.ckpt", include_params=True, shards=shards)
    other = HCNaturalGrad(seed=0)
    hyperopt.load(other, tmp_path / "f.ckpt")
    for c in ctx[3:]:
        half, state = other.step_params(None, half, c)
    assert np.array_equal(half["W"], straight["W"]) and state["steps"] == 6
    with pytest.raises(ValueError, match="saved for parameters none, this optimizer has"):
        hyperopt.load(HCNaturalGrad([np.zeros(3, np.float32)], use_gpu=False), tmp_path / "f.ckpt")


@pytest.mark.timeout(120)
def test_corrupted_bytes_give_a_clear_error_or_a_checked_load(tmp_path):
    """Random byte flips anywhere in a checkpoint: load either refuses with CheckpointError (a
    ValueError) and changes nothing, or loads state that passed every check."""
    opt, _ = _adamw(steps=3)
    good = tmp_path / "good.ckpt"
    hyperopt.save(opt, good, include_params=True)
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    refused = 0
    for trial in range(200):
        blob = bytearray(data)
        for at in rng.integers(0, len(blob), size=int(rng.integers(1, 4))):
            blob[at] ^= int(rng.integers(1, 256))
        bad = tmp_path / "bad.ckpt"
        bad.write_bytes(bytes(blob))
        target, params = _adamw(steps=1)
        before, kept = target.state_dict(), [p.copy() for p in params]
        try:
            hyperopt.load(target, bad)
        except ValueError:
            refused += 1
            _assert_same_state(target.state_dict(), before)
            assert all(np.array_equal(a, b) for a, b in zip(params, kept))
        else:
            for p in params:
                assert np.isfinite(p).all()
    assert refused > 100        # the CRC of each member catches almost every flip


# ---------------------------------------------------------------------------------------------- shard sets
def _shard_files(path):
    return sorted(p for p in os.listdir(os.path.dirname(path)) if p.startswith(os.path.basename(path) + "."))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_one_shard_set_round_trips(case, backend, opt_kwargs, tmp_path):
    """Without comm, shards=True writes a one-shard set (index + <path>.<token>.shard-0-of-1) that
    loads bit for bit and resumes as the uninterrupted run."""
    straight = _start()
    ref = CASES[case](straight, opt_kwargs)
    first = _start()
    opt = CASES[case](first, opt_kwargs)
    for t in range(SPLIT):
        _step(ref, t)
        _step(opt, t)
    path = str(tmp_path / "run.ckpt")
    hyperopt.save(opt, path, include_params=True, shards=True)
    files = _shard_files(path)
    assert len(files) == 1 and files[0].endswith(".shard-0-of-1")
    with zipfile.ZipFile(path) as z:
        meta = json.loads(z.read("checkpoint.json"))
    assert meta["shards"]["ranks"] == 1
    resumed = [np.zeros(s, np.float32) for s in SHAPES]
    other = CASES[case](resumed, opt_kwargs)
    hyperopt.load(other, path)
    _assert_same_state(other.state_dict(), opt.state_dict())
    for t in range(SPLIT, STEPS):
        _step(ref, t)
        _step(other, t)
    assert all(np.array_equal(a, b) for a, b in zip(resumed, straight))


def test_a_new_save_replaces_the_old_set(tmp_path):
    opt, params = _adamw(steps=2)
    path = str(tmp_path / "run.ckpt")
    hyperopt.save(opt, path, shards=True)
    old = _shard_files(path)
    _step(opt, 2)
    hyperopt.save(opt, path, shards=True)
    new = _shard_files(path)
    assert len(new) == 1 and new != old            # the old set's shard is removed with its index
    hyperopt.save(opt, path)                       # a consolidated file in its place: no shard left
    assert _shard_files(path) == []
    other, _ = _adamw(steps=0)
    hyperopt.load(other, path)
    _assert_same_state(other.state_dict(), opt.state_dict())


def test_a_failed_shard_set_save_keeps_the_previous_set(tmp_path, monkeypatch):
    opt, params = _adamw(steps=2)
    path = str(tmp_path / "run.ckpt")
    hyperopt.save(opt, path, shards=True)
    before = opt.state_dict()
    old = _shard_files(path)
    _step(opt, 2)
    from hyperopt import checkpoint
    real = checkpoint._write_atomic

    def index_fails(target, blob, arrays):
        if target == path:
            raise OSError("disk full")
        real(target, blob, arrays)
    monkeypatch.setattr(checkpoint, "_write_atomic", index_fails)
    with pytest.raises(OSError, match="disk full"):
        hyperopt.save(opt, path, shards=True)
    assert _shard_files(path) == old               # the new shard is removed, the old set untouched
    other, _ = _adamw(steps=0)
    hyperopt.load(other, path)
    _assert_same_state(other.state_dict(), before)


def _rewrite_shard(path, meta_edit=None, array_edit=None):
    (shard,) = [os.path.join(os.path.dirname(path), f) for f in _shard_files(path)]
    tmp = shard + ".new"
    _rewrite(shard, tmp, meta_edit, array_edit)
    os.replace(tmp, shard)
    return shard


@pytest.mark.parametrize("defect, match", [
    ("missing shard", "incomplete"),
    ("shard of another save", "belongs to another save"),
    ("another rank count", "belongs to another save|incomplete"),
    ("members", "does not hold the pieces"),
    ("extra member", "does not hold the pieces"),
    ("piece length", "is not 48"),
    ("pickled piece", "without pickle"),
    ("NaN in a piece", "NaN"),
    ("layout gap", "do not cover"),
    ("token with a path", "malformed shard set token"),
    ("sharded ref in a consolidated file", "sharded buffers without a shard set"),
    ("shard format", "not a hyperopt checkpoint shard"),
])
def test_crafted_or_partial_shard_sets_are_refused_and_change_nothing(tmp_path, defect, match):
    opt, params = _adamw(steps=3)
    path = str(tmp_path / "run.ckpt")
    hyperopt.save(opt, path, include_params=True, shards=True)

    def index(fn):
        tmp = path + ".new"
        _rewrite(path, tmp, meta_edit=fn)
        os.replace(tmp, path)
    if defect == "missing shard":
        os.unlink(os.path.join(tmp_path, _shard_files(path)[0]))
    elif defect == "shard of another save":
        other = str(tmp_path / "other.ckpt")
        hyperopt.save(opt, other, shards=True)
        os.replace(os.path.join(tmp_path, _shard_files(other)[0]), os.path.join(tmp_path, _shard_files(path)[0]))
    elif defect == "another rank count":
        index(lambda m: m["shards"].update(ranks=2, layout=m["shards"]["layout"] + [[]]))
    elif defect == "members":
        _rewrite_shard(path, meta_edit=lambda m: m["members"].popitem())
    elif defect == "extra member":
        shard = os.path.join(tmp_path, _shard_files(path)[0])
        with zipfile.ZipFile(shard, "a") as z:
            z.writestr("extra.npy", b"")
    elif defect == "piece length":
        _rewrite_shard(path, array_edit=lambda n, a: a[:-1] if n == "b0.npy" else a)
    elif defect == "pickled piece":
        shard = os.path.join(tmp_path, _shard_files(path)[0])
        tmp = shard + ".new"
        with zipfile.ZipFile(shard) as z, zipfile.ZipFile(tmp, "w") as out:
            for name in z.namelist():
                out.writestr(name, _object_array_npy(tmp_path / "pwned") if name == "b0.npy" else z.read(name))
        os.replace(tmp, shard)
    elif defect == "NaN in a piece":
        _rewrite_shard(path, array_edit=lambda n, a: np.full_like(a, np.nan) if n == "b0.npy" else a)
    elif defect == "layout gap":
        index(lambda m: m["shards"]["layout"][0][0].__setitem__(1, 1))
    elif defect == "token with a path":
        index(lambda m: m["shards"].update(token="../../x"))
    elif defect == "sharded ref in a consolidated file":
        index(lambda m: m.pop("shards"))
    elif defect == "shard format":
        _rewrite_shard(path, meta_edit=lambda m: m.update(format="hyperopt-checkpoint"))
    before = opt.state_dict()
    kept = [p.copy() for p in params]
    # a structural defect is a CheckpointError; a bad value, the state checks' ValueError (as for one file)
    with pytest.raises(ValueError if defect == "NaN in a piece" else CheckpointError, match=match):
        hyperopt.load(opt, path)
    _assert_same_state(opt.state_dict(), before)
    assert all(np.array_equal(a, b) for a, b in zip(params, kept))
    assert not (tmp_path / "pwned").exists()


def test_shards_must_be_a_bool(tmp_path):
    opt, _ = _adamw(steps=1)
    with pytest.raises(TypeError, match="shards must be True or False"):
        hyperopt.save(opt, tmp_path / "x.ckpt", shards=1)
