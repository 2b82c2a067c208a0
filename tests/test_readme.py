"""The README's code runs as written (the per-optimizer examples)."""
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def test_per_optimizer_examples_run():
    text = README.read_text()
    section = text[text.index("### Each optimizer in a few lines"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((8, 4)).astype(np.float32)
    b = np.zeros(4, np.float32)
    scope = {"W": W, "b": b, "grads": [np.ones_like(W), np.ones_like(b)], "np": np}
    W0 = W.copy()
    exec(compile(code, str(README), "exec"), scope)
    assert not np.array_equal(W, W0)
