"""state_dict / load_state_dict: resume in a new process, bit for bit, for every optimizer and projection.

The state dict crosses the process boundary as plain data, never pickle: its arrays (and NumPy
scalars) go to an .npz file read back with ``allow_pickle=False``, everything else to JSON (floats
round-trip exactly; tuples and non-string dict keys are tagged so they come back as they were).
Run as a script (``python tests/test_state_dict_process.py CASE KWARGS DIR``) it is the child: it
builds the case's optimizer over the saved parameters, loads the state dict and finishes the run.
The optimizers, steps and gradients are those of tests/test_checkpoint.py (the hyperopt.save form).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from test_checkpoint import CASES, SHAPES, SPLIT, STEPS, _start, _step, _straight_and_split  # noqa: E402

from hyperopt import HL  # noqa: E402


# ------------------------------------------------------------------------------- plain-data transport
def encode(x, arrays):
    if isinstance(x, (np.ndarray, np.generic)):
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(x)
        return {"__array__": key, "scalar": isinstance(x, np.generic)}
    if isinstance(x, dict):
        return {"__dict__": [[encode(k, arrays), encode(v, arrays)] for k, v in x.items()]}
    if isinstance(x, tuple):            # configuration records (NamedTuples) travel as plain tuples
        return {"__tuple__": [encode(v, arrays) for v in x]}
    if isinstance(x, list):
        return [encode(v, arrays) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"not plain data: {type(x).__name__}")


def decode(x, arrays):
    if isinstance(x, list):
        return [decode(v, arrays) for v in x]
    if isinstance(x, dict):
        if "__array__" in x:
            a = arrays[x["__array__"]]
            return a[()] if x["scalar"] else a
        if "__tuple__" in x:
            return tuple(decode(v, arrays) for v in x["__tuple__"])
        return {decode(k, arrays): decode(v, arrays) for k, v in x["__dict__"]}
    return x


def write_state_dict(sd, folder: Path):
    arrays = {}
    (folder / "state.json").write_text(json.dumps(encode(sd, arrays)))
    np.savez(folder / "state.npz", **arrays)


def read_state_dict(folder: Path):
    with np.load(folder / "state.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return decode(json.loads((folder / "state.json").read_text()), arrays)


def _child(case, kwargs, folder):
    folder = Path(folder)
    with np.load(folder / "params.npz", allow_pickle=False) as f:
        params = [f[f"arr_{k}"].copy() for k in range(len(SHAPES))]
    opt = CASES[case](params, json.loads(kwargs))
    opt.load_state_dict(read_state_dict(folder))
    for t in range(SPLIT, STEPS):
        _step(opt, t)
    extra = [opt.neuron_costate()] if isinstance(opt, HL) else []    # state that moves no weight
    np.savez(folder / "final.npz", *params, *extra)


if __name__ == "__main__":
    _child(*sys.argv[1:])
    sys.exit(0)

import pytest  # noqa: E402


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(CASES))
def test_state_dict_resume_in_a_new_process_is_bit_for_bit(case, backend, opt_kwargs, tmp_path):
    ref, straight, opt, first = _straight_and_split(case, opt_kwargs)
    write_state_dict(opt.state_dict(), tmp_path)
    np.savez(tmp_path / "params.npz", *first)
    done = subprocess.run([sys.executable, __file__, case, json.dumps(opt_kwargs), str(tmp_path)],
                          env=dict(os.environ, PYTHONPATH=str(HERE.parent)), capture_output=True, text=True,
                          timeout=100)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "final.npz", allow_pickle=False) as f:
        resumed = [f[f"arr_{k}"] for k in range(len(SHAPES) + (1 if case == "HL" else 0))]
    for a, b in zip(resumed, straight):
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    assert not np.array_equal(straight[0], _start()[0])     # the run moved
    assert not np.array_equal(straight[0], first[0])        # and moved after the split
    if case == "HL":
        assert np.array_equal(resumed[-1], ref.neuron_costate())


def test_the_transport_is_exact_and_refuses_what_is_not_plain_data(tmp_path):
    sd = {"state": {0: {"step": 3, "m": np.arange(3, dtype=np.float32), "s": np.float32(0.1)}},
          "param_groups": [{"lr": 0.1 + 1e-17, "betas": (0.9, 0.999), "tiny": 5e-324, "flag": True, "none": None}]}
    write_state_dict(sd, tmp_path)
    back = read_state_dict(tmp_path)
    assert back["param_groups"] == sd["param_groups"] and type(back["param_groups"][0]["betas"]) is tuple
    assert list(back["state"]) == [0] and back["state"][0]["step"] == 3
    assert back["state"][0]["s"].dtype == np.float32 and back["state"][0]["s"] == sd["state"][0]["s"]
    assert np.array_equal(back["state"][0]["m"], sd["state"][0]["m"])
    with pytest.raises(TypeError, match="not plain data"):
        write_state_dict({"x": object()}, tmp_path)
