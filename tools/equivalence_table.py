"""The user action x optimizer table of tests/test_equivalence.py: each action alone, between two
steps, on the CPU path and on Vulkan (HYPEROPT_TEST_DEVICE, default "vulkan:cpu"), compared as the
suite compares them.  Prints a Markdown table ("ok" or the error's first line).

    PYTHONPATH=. python tools/equivalence_table.py
"""
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np  # noqa: E402
import test_equivalence as te  # noqa: E402

DEVICE = os.environ.get("HYPEROPT_TEST_DEVICE", "vulkan:cpu")
ACTIONS = [("step", 1), ("step_with_none", 2), ("edit_in_place", 0.5), ("rebind_data", 3), ("set_lr", 0.02),
           ("add_param_group", 4), ("state_dict_roundtrip", 0), ("save_load", 0), ("bad_step", 0)]


def main():
    init = [np.random.default_rng(k).standard_normal(s).astype(np.float32) for k, s in enumerate(te.SHAPES)]
    print("| action | " + " | ".join(te.NAMES) + " |")
    print("|---|" + "---|" * len(te.NAMES))
    with tempfile.TemporaryDirectory() as tmp:
        for action in ACTIONS:
            cells = []
            for name in te.NAMES:
                try:
                    cpu = te.Run(name, {"use_gpu": False}, init)
                    gpu = te.Run(name, {"use_gpu": True, "device": DEVICE}, init)
                    assert gpu.opt.backend.startswith("vulkan:")
                    for a in [("step", 0), action, ("step", 9)]:
                        te.apply(cpu, a, Path(tmp))
                        te.apply(gpu, a, Path(tmp))
                        te._compare(name, cpu, gpu, str(a))
                    cells.append("ok")
                except BaseException as exc:   # noqa: BLE001 - a table cell per failure
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    cells.append(f"FAIL: {type(exc).__name__} {first[:60]}".replace("|", "/"))
            print(f"| {action[0]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
