"""Arena layout: segment offsets, work rows and reduction blocks (``plan_layout``, ``plan_blocks``)."""
from __future__ import annotations

import numpy as np

from ...kernels.core import CHUNK

ALIGN = 64                    # floats: segment starts are 256-byte aligned


# ============================================================================ layout
MAX_ELEMENTS = 2**32 - 2**16     # work-table entries are 32-bit arena indices (with room for a loop's last stride)


def plan_layout(sizes, row_size):
    """(segment offsets, work rows, total) of parameters with ``sizes`` elements: each parameter a
    segment padded to ``ALIGN``; rows (segment, begin, end, 0) of at most ``row_size`` elements,
    never crossing a segment nor a ``CHUNK`` block boundary (blocks counted from the segment's
    start).  The rows of a block depend on the block's length alone, so a block has the same
    rows, and the same partial sum, wherever its segment starts: in one process or as a piece of
    a rank's shard.  Raises before anything is allocated if the indices would wrap."""
    offsets, rows, _, _, total = plan_blocks(sizes, row_size)
    return offsets, rows, total


def plan_blocks(sizes, row_size):
    """``plan_layout`` and the reduction blocks: (offsets, rows, blocks, segment_blocks, total) with
    ``blocks[j] = (first row, row count)`` of block ``j`` (in segment order, then from each segment's
    start) and ``segment_blocks[s] = (first block, block count)`` (no block for an empty segment)."""
    sizes = np.asarray(sizes, np.int64)
    padded = np.maximum((sizes + ALIGN - 1) // ALIGN * ALIGN, ALIGN)   # empty ones too: windows stay inside
    total = int(padded.sum())
    if total > MAX_ELEMENTS:
        raise ValueError(f"the Vulkan backend indexes parameters with 32-bit offsets: {total} elements in all "
                         f"(padded) is past 2^32 - 2^16; split the parameters over several optimizers")
    offsets = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64)
    rows, blocks, segment_blocks = [], [], []
    for s, (off, n) in enumerate(zip(offsets.tolist(), sizes.tolist())):
        segment_blocks.append((len(blocks), -(-n // CHUNK)))
        if n == 0:
            rows.append((s, off, off, 0))       # one empty row: the segment's kernels still run a workgroup
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            length = row_length(m, row_size)
            blocks.append((len(rows), -(-m // length)))
            rows += [(s, off + start + b, off + start + min(b + length, m), 0) for b in range(0, m, length)]
    return (offsets, np.array(rows, np.uint32).reshape(-1, 4), np.array(blocks, np.uint32).reshape(-1, 2),
            np.array(segment_blocks, np.uint32).reshape(-1, 2), total)


def row_length(n, row_size):
    """Elements per work row of an n-element block: at most ``row_size``, and at least two
    equal rows from 4K elements on, so that two cores (or SMs) share even a small tensor."""
    rows = max(-(-n // row_size), min(2, -(-n // 4096)), 1)
    per_row = -(-n // rows)
    return max(ALIGN, -(-per_row // ALIGN) * ALIGN)      # rounded up to whole aligned blocks
