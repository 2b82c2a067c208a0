"""``VulkanProgram``: descriptor sets, the recorded command buffer, its launch and GPU timestamps."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import vulkan as vk

from ...kernels.core import CONTROL, dispatch
from .. import launch_counts
from .device import FRAME_BINDINGS, PUSH_BYTES, check, ffi
from .memory import Buffer

if TYPE_CHECKING:
    from .backend import VulkanBackend


class VulkanProgram:
    """A recorded command buffer for a list of (kernel, buffer names) dispatches."""

    def __init__(self, backend: VulkanBackend, dispatches):
        ctx = self.ctx = backend.ctx
        self._arenas, self._staging = backend._arenas, backend._staging   # not the backend: no cycle
        n_seg = len(backend._params)
        dtype, k = backend.dtype, backend.itemsize      # the precision of tables, partials and sums
        self.dispatches = [dispatch(k, names) for k, names in dispatches]
        self._buffers: list[Buffer] = []
        self.tables, self.mapped_tables, self.sum_outputs = [], [], []
        self._sets = []            # (pipeline, layout, descriptor set, push constants, group count) in order
        n_sets = sum(len(backend._windows) + 2 for _ in self.dispatches) + 1
        self.pool = vk.vkCreateDescriptorPool(ctx.device, vk.VkDescriptorPoolCreateInfo(
            maxSets=n_sets, poolSizeCount=1, pPoolSizes=[vk.VkDescriptorPoolSize(
                type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=n_sets * 16)]), None)
        shard = backend.shard
        if shard is not None:        # the whole layout's segment -> block ranges, for the segment totals
            shard_ranges = self._own(shard.segment_blocks.nbytes)
            shard_ranges.view.view(np.uint32)[: shard.segment_blocks.size] = shard.segment_blocks.reshape(-1)
        self.global_partials = []    # shard mode: per summing kernel, every rank's block partials (host-filled)
        source = None      # (block partials, segment -> block ranges, n_sums) of the last summing kernel
        totals = None      # its segment totals on the device, made when a control kernel first needs them
        red = ctx.pipeline("segment-sum" + backend.variant, FRAME_BINDINGS + 1)
        stages, steps, self.stage_ends = [], [], []
        for kernel, names in self.dispatches:
            table = self._own(n_seg * max(1, len(kernel.scalars)) * k)
            self.mapped_tables.append(table.floats(dtype)[: n_seg * len(kernel.scalars)].reshape(n_seg, len(kernel.scalars)))
            self.tables.append(np.zeros_like(self.mapped_tables[-1]))   # filled by the host, copied in by run()
            n_bind = FRAME_BINDINGS + len(kernel.buffers)
            pipe = ctx.pipeline(kernel.shader + backend.variant, n_bind)
            if kernel.kind == CONTROL:
                if source is not None and totals is None:
                    partials, ranges, n_sums = source
                    totals = (self._own(n_seg * n_sums * k), n_sums)
                    ds = self._set(red, [backend._work, ranges, partials, backend._ctl, totals[0]])
                    steps.append([(red, ds, (0, 0, n_seg, n_sums), n_seg)])
                sums, n_sums = totals if totals else (self._own(16), 0)
                ds = self._set(pipe, [backend._work, table, sums, backend._ctl])
                steps.append([(pipe, ds, (0, 0, n_seg, n_sums), 1)])
                continue
            n_sums = len(kernel.sums)
            partials = self._own(backend.n_rows * max(1, n_sums) * k)
            step = []
            for (w0, nw, base, span) in backend._windows:
                arenas = [(backend._arenas[n], base * k, span * k) for n in names]
                ds = self._set(pipe, [backend._work, table, partials, backend._ctl], arenas)
                step.append((pipe, ds, (w0, base, n_seg, max(1, n_sums)), nw))
            steps.append(step)
            if n_sums:
                # each block's row partials, added in a fixed order: the block partials the host totals
                blocks = self._own(backend.n_blocks * n_sums * k)
                ds = self._set(red, [backend._work, backend._blocks, partials, backend._ctl, blocks])
                steps.append([(red, ds, (0, 0, n_seg, n_sums), backend.n_blocks)])
                self.sum_outputs.append((blocks, n_sums))
                totals = None
                if shard is None:
                    self.global_partials.append(None)
                    source = (blocks, backend._segment_blocks, n_sums)
                else:                # the step pauses here while the ranks exchange their block partials
                    everyone = self._own(shard.n_blocks * n_sums * k)
                    self.global_partials.append(everyone.floats(dtype)[: shard.n_blocks * n_sums])
                    source = (everyone, shard_ranges, n_sums)
                    stages.append(steps)
                    self.stage_ends.append(len(self.sum_outputs) - 1)
                    steps = []
        if steps or not stages:
            stages.append(steps)
            self.stage_ends.append(None)
        self._stages = stages
        self._cmds = {}
        self._queries = None               # timestamp query pool, made on first timed launch
        self.kernel_seconds = self.submit_seconds = None

    def _own(self, nbytes):
        b = Buffer(self.ctx, nbytes, host=True)
        self._buffers.append(b)
        return b

    def _set(self, pipe, frame, arenas=()):
        _, _, set_layout = pipe
        ds = vk.vkAllocateDescriptorSets(self.ctx.device, vk.VkDescriptorSetAllocateInfo(
            descriptorPool=self.pool, descriptorSetCount=1, pSetLayouts=[set_layout]))[0]
        infos = [(b.buffer, 0, b.nbytes) for b in frame] + [(b.buffer, off, size) for b, off, size in arenas]
        writes = [vk.VkWriteDescriptorSet(
            dstSet=ds, dstBinding=k, descriptorCount=1, descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            pBufferInfo=[vk.VkDescriptorBufferInfo(buffer=buf, offset=off, range=size)])
            for k, (buf, off, size) in enumerate(infos)]
        vk.vkUpdateDescriptorSets(self.ctx.device, len(writes), writes, 0, None)
        return ds

    def _record(self, stage, upload, upload_params, download, timed=False):
        """The command buffer of one stage: the uploads go with the first, the download with the last."""
        upload, upload_params = (upload, upload_params) if stage == 0 else (False, False)
        download = download and stage == len(self._stages) - 1
        ctx = self.ctx
        cmd = vk.vkAllocateCommandBuffers(ctx.device, vk.VkCommandBufferAllocateInfo(
            commandPool=ctx.pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]
        vk.vkBeginCommandBuffer(cmd, vk.VkCommandBufferBeginInfo())

        def stamp(k):
            # BOTTOM_OF_PIPE: written once every earlier command has finished; query 0 marks the start
            if timed:
                stage = vk.VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT if k == 0 else vk.VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT
                vk.vkCmdWriteTimestamp(cmd, stage, self._queries, k)

        if timed:
            vk.vkCmdResetQueryPool(cmd, self._queries, 0, 4)
        stamp(0)
        compute = vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT
        transfer = vk.VK_PIPELINE_STAGE_TRANSFER_BIT

        def barrier(src_stage, src, dst_stage, dst):
            vk.vkCmdPipelineBarrier(cmd, src_stage, dst_stage, 0, 1, [vk.VkMemoryBarrier(
                srcAccessMask=src, dstAccessMask=dst)], 0, None, 0, None)

        rw = vk.VK_ACCESS_SHADER_READ_BIT | vk.VK_ACCESS_SHADER_WRITE_BIT
        for name, wanted in (("grad", upload), ("param", upload_params)):
            if wanted:
                src = self._staging[name]
                vk.vkCmdCopyBuffer(cmd, src.buffer, self._arenas[name].buffer, 1, [
                    vk.VkBufferCopy(srcOffset=0, dstOffset=0, size=src.nbytes)])
        if upload or upload_params:
            barrier(transfer, vk.VK_ACCESS_TRANSFER_WRITE_BIT, compute, rw)
        stamp(1)
        for step in self._stages[stage]:
            for pipe, ds, push, groups in step:
                vk.vkCmdBindPipeline(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe[0])
                vk.vkCmdBindDescriptorSets(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe[1], 0, 1, [ds], 0, None)
                data = np.array(push, np.uint32).tobytes()
                vk.vkCmdPushConstants(cmd, pipe[1], vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, PUSH_BYTES, ffi.from_buffer(data))
                vk.vkCmdDispatch(cmd, groups, 1, 1)
            barrier(compute, vk.VK_ACCESS_SHADER_WRITE_BIT, compute, rw)
        stamp(2)
        if download:
            p = self._staging["param"]
            barrier(compute, vk.VK_ACCESS_SHADER_WRITE_BIT, transfer, vk.VK_ACCESS_TRANSFER_READ_BIT)
            vk.vkCmdCopyBuffer(cmd, self._arenas["param"].buffer, p.buffer, 1, [
                vk.VkBufferCopy(srcOffset=0, dstOffset=0, size=p.nbytes)])
            barrier(transfer, vk.VK_ACCESS_TRANSFER_WRITE_BIT, vk.VK_PIPELINE_STAGE_HOST_BIT, vk.VK_ACCESS_HOST_READ_BIT)
        else:
            barrier(compute, vk.VK_ACCESS_SHADER_WRITE_BIT, vk.VK_PIPELINE_STAGE_HOST_BIT, vk.VK_ACCESS_HOST_READ_BIT)
        stamp(3)
        vk.vkEndCommandBuffer(cmd)
        return cmd, self.ctx.submit_info(cmd)

    def launch(self, upload, upload_params, download, between=None):
        """Submit the program: one submit in one process.  Under ``comm`` one per stage, and after a
        stage that ends with summing kernel ``j``, ``between(j)`` (the exchange of block partials)."""
        timed = self.ctx.timestamps and self.ctx.timestamp_bits > 0 and len(self._stages) == 1
        for stage, end in enumerate(self.stage_ends):
            key = (stage, upload, upload_params, download, timed)
            with self.ctx.lock:        # the command pool and the queue are shared by the device's optimizers
                if timed and self._queries is None:
                    self._queries = vk.vkCreateQueryPool(self.ctx.device, vk.VkQueryPoolCreateInfo(
                        queryType=vk.VK_QUERY_TYPE_TIMESTAMP, queryCount=4), None)
                if key not in self._cmds:
                    self._cmds[key] = self._record(*key)
                self.ctx.submit(self._cmds[key][1])
                launch_counts["vulkan"] += sum(len(step) for step in self._stages[stage])
                if timed:
                    self._read_timestamps()
            if end is not None and between is not None:
                between(end)

    def _read_timestamps(self):
        ctx = self.ctx
        ticks = ffi.new("uint64_t[4]")
        check(vk.lib.vkGetQueryPoolResults(ctx.device, self._queries, 0, 4, ffi.sizeof(ticks), ticks, 8,
                                           vk.VK_QUERY_RESULT_64_BIT | vk.VK_QUERY_RESULT_WAIT_BIT))
        mask = (1 << ctx.timestamp_bits) - 1 if ctx.timestamp_bits < 64 else (1 << 64) - 1
        seconds = ctx.timestamp_period_ns * 1e-9
        self.kernel_seconds = ((ticks[2] - ticks[1]) & mask) * seconds
        self.submit_seconds = ((ticks[3] - ticks[0]) & mask) * seconds
        ctx.kernel_seconds_total += self.kernel_seconds
        ctx.submit_seconds_total += self.submit_seconds

    def free(self):
        if self.pool is None:
            return
        with self.ctx.lock:
            for cmd, _ in self._cmds.values():
                vk.vkFreeCommandBuffers(self.ctx.device, self.ctx.pool, 1, [cmd])
        self._cmds.clear()
        if self._queries is not None:
            vk.vkDestroyQueryPool(self.ctx.device, self._queries, None)
            self._queries = None
        vk.vkDestroyDescriptorPool(self.ctx.device, self.pool, None)
        self.pool = None
        self.mapped_tables = []
        for b in self._buffers:
            b.free()
