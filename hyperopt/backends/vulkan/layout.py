"""Arena layout: segment offsets and work rows (``plan_layout``, ``row_length``)."""
from __future__ import annotations

import numpy as np

ALIGN = 64                    # floats: segment starts are 256-byte aligned


# ============================================================================ layout
MAX_ELEMENTS = 2**32 - 2**16     # work-table entries are 32-bit arena indices (with room for a loop's last stride)


def plan_layout(sizes, row_size):
    """(segment offsets, work rows, total) of parameters with ``sizes`` elements: each parameter a
    segment padded to ``ALIGN``; rows (segment, begin, end, 0) of at most ``row_size`` elements,
    never crossing a segment.  Raises before anything is allocated if the indices would wrap."""
    sizes = np.asarray(sizes, np.int64)
    padded = np.maximum((sizes + ALIGN - 1) // ALIGN * ALIGN, ALIGN)   # empty ones too: windows stay inside
    total = int(padded.sum())
    if total > MAX_ELEMENTS:
        raise ValueError(f"the Vulkan backend indexes parameters with 32-bit offsets: {total} elements in all "
                         f"(padded) is past 2^32 - 2^16; split the parameters over several optimizers")
    offsets = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64)
    rows = []
    for s, (off, n) in enumerate(zip(offsets.tolist(), sizes.tolist())):
        length = row_length(n, row_size)
        rows += [(s, off + b, off + min(b + length, n), 0) for b in range(0, max(n, 1), length)]
    return offsets, np.array(rows, np.uint32).reshape(-1, 4), total


def row_length(n, row_size):
    """Elements per work row of an n-element parameter: at most ``row_size``, and at least two
    equal rows from 4K elements on, so that two cores (or SMs) share even a small tensor."""
    rows = max(-(-n // row_size), min(2, -(-n // 4096)), 1)
    per_row = -(-n // rows)
    return max(ALIGN, -(-per_row // ALIGN) * ALIGN)      # rounded up to whole aligned blocks
