"""The Vulkan backend: the kernels' GLSL twins, run as compute shaders through the `vulkan` binding.

Layout.  Every parameter is one *segment* of flat arena buffers (float32, or float64 with the
kernels' .f64 builds where the device has shaderFloat64) ("param", "grad" and one
per state buffer), padded to 64 floats so every segment starts 256-byte aligned.  A work table
splits the segments into rows of at most ``row_size`` elements, one workgroup each, never crossing a
``CHUNK``-element block of a segment (counted from its start); a step is one submit
of a command buffer recorded once per program: [copy gradients in] -> each dispatch over all rows ->
[copy parameters out].  Gradients go in by one memcpy per parameter into mapped memory, parameters
come back the same way; optimizer state never leaves the device.

Arenas above the binding limit (maxStorageBufferRange, 128 MiB on lavapipe) are bound as several
windows, one dispatch each.  Sums: each workgroup writes its partial sums; a second pass
(``segment-sum.glsl``) adds each block's rows in a fixed order into the block's partial, and the host
adds a segment's block partials in float64, in block order from 0.0 (``segment_totals``), so results
are deterministic.  A block's rows depend on its length only, so a block has the same partial
wherever its segment starts: under ``comm`` (hyperopt/distributed.py) a rank's device holds its
pieces of the segments, and the partials gathered from every rank are one process's.  Control
kernels read per-segment sums on the device: a third pass adds each segment's block partials
there (on every rank's gathered partials under ``comm``, which then submits once per summing kernel).

Threads and processes.  Optimizers on one device share its queue, fence and command pool; every
use of those is under the context's lock (Vulkan requires external synchronisation of both), so
optimizers may step from several threads at once, and each backend has its own lock, so one
optimizer stepped from two threads runs one step after the other.  After ``fork`` a child opens
its own device; an optimizer inherited from the parent raises, and nothing in the child touches the
parent's Vulkan objects (not even at exit).  After ``close()`` or interpreter shutdown every call
raises a clear error.

Pipelines are created through a ``VkPipelineCache`` kept on disk under ``$XDG_CACHE_HOME/hyperopt``
(default ``~/.cache/hyperopt``; ``HYPEROPT_CACHE_DIR`` overrides), one file per device and driver, so
a new process does not compile the shaders again; a missing or read-only directory only costs that.

Environment: ``HYPEROPT_VULKAN_VALIDATION=1`` enables the Khronos validation layer and records its
messages in ``validation_messages``; ``HYPEROPT_VULKAN_STAGING=1`` forces the discrete-GPU path
(device-local arenas plus staging copies) on unified-memory devices, so it is tested everywhere;
``HYPEROPT_VULKAN_TIMESTAMPS=1`` (or ``ctx.timestamps = True``) records GPU timestamps around each
submit, read as ``backend.last_kernel_seconds`` and ``backend.last_submit_seconds``.

Files (one concern each; this package re-exports the names other code uses):
    ``device.py``   ``Context`` (instance, device picking, queue, command pool, fence, the context lock,
                    pipelines and the on-disk pipeline cache), ``context()``, ``validation_messages``,
                    fork and interpreter-exit handling (``shutdown``); all module-level state lives here
    ``memory.py``   ``Buffer``: a storage buffer, host buffers persistently mapped
    ``layout.py``   ``plan_layout``/``plan_blocks``: segment offsets, work rows and reduction blocks
    ``program.py``  ``VulkanProgram``: descriptor sets, command-buffer recording, launch, timestamps
    ``backend.py``  ``VulkanBackend``: bind, read, write, clear, set_param, program, run, close (and the
                    arena windows past the binding limit)
"""
from __future__ import annotations

import vulkan as vk       # the PyPI binding: an absolute import, not this package

from .. import VulkanUnavailable
from .backend import PrecisionUnsupported, VulkanBackend
from .device import (FRAME_BINDINGS, PUSH_BYTES, ROW_CPU, ROW_GPU, SPIRV, Context, _text, check, context, ffi,
                     shutdown, validation_messages)
from .layout import ALIGN, MAX_ELEMENTS, plan_layout, row_length
from .memory import Buffer
from .program import VulkanProgram

__all__ = ["ALIGN", "Buffer", "Context", "FRAME_BINDINGS", "MAX_ELEMENTS", "PUSH_BYTES", "PrecisionUnsupported",
           "ROW_CPU", "ROW_GPU", "SPIRV", "VulkanBackend", "VulkanProgram", "VulkanUnavailable", "check", "context",
           "ffi", "plan_layout", "row_length", "shutdown", "validation_messages", "vk"]
