"""What gpu_check reads off a Vulkan device: its description and its measured bandwidths.

``describe(ctx)`` lists the device, driver, Vulkan versions, memory heaps and types, and the limits
the backend uses.  ``bandwidths(ctx, nbytes)`` measures, with GPU timestamps, a plain host-to-device
and device-to-host transfer (``vkCmdCopyBuffer`` between a host-visible buffer and a device-local
one: the PCIe bound on a discrete GPU), a device-to-device ``vkCmdCopyBuffer`` and the copy kernel
``shaders/copy-bandwidth.glsl`` (the device-memory bound), each checked for correctness.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import vulkan as vk

from hyperopt.backends.vulkan import Buffer, _text, check, ffi

DEVICE_TYPES = {vk.VK_PHYSICAL_DEVICE_TYPE_OTHER: "other", vk.VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: "integrated GPU",
                vk.VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: "discrete GPU", vk.VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: "virtual GPU",
                vk.VK_PHYSICAL_DEVICE_TYPE_CPU: "CPU"}
MEMORY_FLAGS = [(vk.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, "device-local"), (vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT, "host-visible"),
                (vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT, "host-coherent"), (vk.VK_MEMORY_PROPERTY_HOST_CACHED_BIT, "host-cached")]


def version(v: int) -> str:
    return f"{v >> 22}.{(v >> 12) & 0x3FF}.{v & 0xFFF}"


def describe(ctx) -> dict:
    """A JSON-able description of the context's device and the choices the backend made on it."""
    p, lim, mem = ctx.props, ctx.limits, ctx.memory_types
    heaps = [dict(index=k, bytes=int(mem.memoryHeaps[k].size),
                  device_local=bool(mem.memoryHeaps[k].flags & vk.VK_MEMORY_HEAP_DEVICE_LOCAL_BIT))
             for k in range(mem.memoryHeapCount)]
    types = [dict(index=k, heap=int(mem.memoryTypes[k].heapIndex),
                  flags=[n for bit, n in MEMORY_FLAGS if mem.memoryTypes[k].propertyFlags & bit])
             for k in range(mem.memoryTypeCount)]
    try:
        instance_version = version(vk.vkEnumerateInstanceVersion())
    except Exception as exc:      # a Vulkan 1.0 loader
        instance_version = f"unknown ({type(exc).__name__})"
    layers = sorted(_text(lp.layerName) for lp in vk.vkEnumerateInstanceLayerProperties())
    return dict(
        name=ctx.name, device_type=DEVICE_TYPES.get(p.deviceType, str(p.deviceType)), driver=ctx.driver,
        api_version=version(p.apiVersion), driver_version=f"0x{p.driverVersion:x}", instance_version=instance_version,
        vendor_id=f"0x{p.vendorID:04x}", device_id=f"0x{p.deviceID:04x}", layers=layers,
        heaps=heaps, memory_types=types,
        limits=dict(maxStorageBufferRange=int(lim.maxStorageBufferRange),
                    maxComputeWorkGroupCount=list(lim.maxComputeWorkGroupCount),
                    maxComputeWorkGroupInvocations=int(lim.maxComputeWorkGroupInvocations),
                    maxComputeSharedMemorySize=int(lim.maxComputeSharedMemorySize),
                    maxPushConstantsSize=int(lim.maxPushConstantsSize),
                    maxMemoryAllocationCount=int(lim.maxMemoryAllocationCount),
                    minStorageBufferOffsetAlignment=int(lim.minStorageBufferOffsetAlignment),
                    timestampPeriod_ns=float(lim.timestampPeriod),
                    timestampComputeAndGraphics=bool(lim.timestampComputeAndGraphics)),
        backend=dict(queue_family=ctx.family, timestampValidBits=ctx.timestamp_bits, staging=bool(ctx.staging),
                     row_size=ctx.row_size, max_binding_bytes=int(ctx.max_binding_bytes), max_groups=int(ctx.max_groups),
                     validation=bool(ctx.validation)),
    )


class _Timer:
    """Two timestamps around recorded work, read back in seconds (the probe's own query pool)."""

    def __init__(self, ctx):
        if ctx.timestamp_bits == 0:
            raise RuntimeError("the device's compute queue has no timestamps (timestampValidBits = 0)")
        self.ctx = ctx
        self.pool = vk.vkCreateQueryPool(ctx.device, vk.VkQueryPoolCreateInfo(
            queryType=vk.VK_QUERY_TYPE_TIMESTAMP, queryCount=2), None)

    def run(self, record) -> tuple[float, float]:
        """(GPU seconds, wall seconds) of one submit of ``record(cmd)``."""
        def timed(cmd):
            vk.vkCmdResetQueryPool(cmd, self.pool, 0, 2)
            vk.vkCmdWriteTimestamp(cmd, vk.VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, self.pool, 0)
            record(cmd)
            vk.vkCmdWriteTimestamp(cmd, vk.VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, self.pool, 1)
        t0 = time.perf_counter()
        self.ctx.one_shot(timed)
        wall = time.perf_counter() - t0
        ticks = ffi.new("uint64_t[2]")
        check(vk.lib.vkGetQueryPoolResults(self.ctx.device, self.pool, 0, 2, ffi.sizeof(ticks), ticks, 8,
                                           vk.VK_QUERY_RESULT_64_BIT | vk.VK_QUERY_RESULT_WAIT_BIT))
        bits = self.ctx.timestamp_bits
        mask = (1 << bits) - 1 if bits < 64 else (1 << 64) - 1
        return ((ticks[1] - ticks[0]) & mask) * self.ctx.timestamp_period_ns * 1e-9, wall

    def free(self):
        vk.vkDestroyQueryPool(self.ctx.device, self.pool, None)


class _CopyKernel:
    """``copy-bandwidth.glsl`` bound to (src, dst)."""

    def __init__(self, ctx, src: Buffer, dst: Buffer, nbytes: int):
        self.ctx, self.n_vec4 = ctx, nbytes // 16
        self.pipe, self.layout, set_layout = ctx.pipeline("copy-bandwidth", 2)
        self.pool = vk.vkCreateDescriptorPool(ctx.device, vk.VkDescriptorPoolCreateInfo(
            maxSets=1, poolSizeCount=1, pPoolSizes=[vk.VkDescriptorPoolSize(
                type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=2)]), None)
        self.set = vk.vkAllocateDescriptorSets(ctx.device, vk.VkDescriptorSetAllocateInfo(
            descriptorPool=self.pool, descriptorSetCount=1, pSetLayouts=[set_layout]))[0]
        writes = [vk.VkWriteDescriptorSet(dstSet=self.set, dstBinding=k, descriptorCount=1,
                                          descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                          pBufferInfo=[vk.VkDescriptorBufferInfo(buffer=b.buffer, offset=0, range=nbytes)])
                  for k, b in enumerate((src, dst))]
        vk.vkUpdateDescriptorSets(ctx.device, 2, writes, 0, None)
        # enough workgroups to fill any GPU, each looping over the rest
        self.groups = max(1, min(self.n_vec4 // 256, ctx.max_groups, 65535))

    def record(self, cmd):
        vk.vkCmdBindPipeline(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, self.pipe)
        vk.vkCmdBindDescriptorSets(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, self.layout, 0, 1, [self.set], 0, None)
        data = np.array([self.n_vec4, 0, 0, 0], np.uint32).tobytes()
        vk.vkCmdPushConstants(cmd, self.layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, 16, ffi.from_buffer(data))
        vk.vkCmdDispatch(cmd, self.groups, 1, 1)

    def free(self):
        vk.vkDestroyDescriptorPool(self.ctx.device, self.pool, None)


def _copy_cmd(src: Buffer, dst: Buffer, nbytes: int):
    return lambda cmd: vk.vkCmdCopyBuffer(cmd, src.buffer, dst.buffer, 1, [vk.VkBufferCopy(srcOffset=0, dstOffset=0, size=nbytes)])


def bandwidths(ctx, nbytes: int, repeats: int = 5) -> list[dict]:
    """Rows (what, bytes moved, median GPU seconds, GB/s, ...) for each transfer; raises if a copy is wrong."""
    nbytes = min(int(nbytes), int(ctx.max_binding_bytes)) // 256 * 256
    n = nbytes // 4
    pattern = np.random.default_rng(1).random(n, dtype=np.float32) + 1.0     # never zeros
    host = Buffer(ctx, nbytes, host=True)
    dev_a, dev_b = Buffer(ctx, nbytes, host=False), Buffer(ctx, nbytes, host=False)
    timer = _Timer(ctx)
    kernel = _CopyKernel(ctx, dev_a, dev_b, nbytes)
    rows = []

    def measure(what, record, moved, note=""):
        gpu, wall = zip(*(timer.run(record) for _ in range(repeats)))
        sec = statistics.median(gpu)
        rows.append(dict(what=what, bytes=moved, gpu_ms=sec * 1e3, wall_ms=statistics.median(wall) * 1e3,
                         gbps=moved / sec / 1e9 if sec > 0 else float("nan"), note=note))

    try:
        # host memcpy into mapped memory: what a step does before its upload copy (wall clock)
        view = host.floats()[:n]
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            view[:] = pattern
            t.append(time.perf_counter() - t0)
        sec = statistics.median(t)
        rows.append(dict(what="host memcpy into mapped memory (NumPy)", bytes=nbytes, gpu_ms=float("nan"),
                         wall_ms=sec * 1e3, gbps=nbytes / sec / 1e9, note="wall clock; bytes written"))
        measure("host-to-device (vkCmdCopyBuffer)", _copy_cmd(host, dev_a, nbytes), nbytes, "the PCIe bound, upload")
        view[:] = 0.0
        measure("device-to-host (vkCmdCopyBuffer)", _copy_cmd(dev_a, host, nbytes), nbytes, "the PCIe bound, download")
        if not np.array_equal(view, pattern):
            raise RuntimeError("host -> device -> host round trip changed the data")
        measure("device-to-device (vkCmdCopyBuffer)", _copy_cmd(dev_a, dev_b, nbytes), 2 * nbytes, "read + write")
        ctx.one_shot(lambda cmd: vk.vkCmdFillBuffer(cmd, dev_b.buffer, 0, nbytes, 0))
        measure("copy kernel (copy-bandwidth.glsl)", kernel.record, 2 * nbytes, "read + write: the device-memory bound")
        view[:] = 0.0
        ctx.one_shot(_copy_cmd(dev_b, host, nbytes))
        if not np.array_equal(view, pattern):
            raise RuntimeError("the copy kernel's output differs from its input")
    finally:
        kernel.free()
        timer.free()
        for b in (host, dev_a, dev_b):
            b.free()
    return rows
