"""Device memory: ``Buffer``, a storage buffer (host buffers persistently mapped)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import vulkan as vk

if TYPE_CHECKING:
    from .device import Context


# ============================================================================ buffers
class Buffer:
    """A storage buffer; ``host`` buffers are persistently mapped and expose a NumPy view."""

    live = 0     # buffers allocated and not yet freed (the leak test watches this)

    def __init__(self, ctx: Context, nbytes: int, host: bool):
        self.ctx, self.nbytes = ctx, max(16, int(nbytes))
        usage = (vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | vk.VK_BUFFER_USAGE_TRANSFER_SRC_BIT
                 | vk.VK_BUFFER_USAGE_TRANSFER_DST_BIT)
        self.buffer = vk.vkCreateBuffer(ctx.device, vk.VkBufferCreateInfo(
            size=self.nbytes, usage=usage, sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
        req = vk.vkGetBufferMemoryRequirements(ctx.device, self.buffer)
        coherent = vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
        flags = coherent if host else vk.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT
        kind = ctx._find_type(flags | (vk.VK_MEMORY_PROPERTY_HOST_CACHED_BIT if host else 0), req.memoryTypeBits)
        kind = ctx._find_type(flags, req.memoryTypeBits) if kind is None else kind
        self.memory = vk.vkAllocateMemory(ctx.device, vk.VkMemoryAllocateInfo(
            allocationSize=req.size, memoryTypeIndex=kind), None)
        vk.vkBindBufferMemory(ctx.device, self.buffer, self.memory, 0)
        Buffer.live += 1
        self.view = None
        if host:
            raw = vk.vkMapMemory(ctx.device, self.memory, 0, self.nbytes, 0)
            self.view = np.frombuffer(raw, np.uint8)
            self.view[:] = 0

    def floats(self, dtype=np.float32):
        return self.view.view(dtype)

    def free(self):
        if self.buffer is not None and not self.ctx.owned:
            self.buffer = self.view = None    # the parent's (after fork): not ours to free
            Buffer.live -= 1
        if self.buffer is not None:
            self.view = None      # views die before the memory they point into
            vk.vkDestroyBuffer(self.ctx.device, self.buffer, None)
            vk.vkFreeMemory(self.ctx.device, self.memory, None)
            self.buffer = None
            Buffer.live -= 1
