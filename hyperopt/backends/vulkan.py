"""The Vulkan backend: the kernels' GLSL twins, run as compute shaders through the `vulkan` binding.

Layout.  Every parameter is one *segment* of flat float32 arena buffers ("param", "grad" and one
per state buffer), padded to 64 floats so every segment starts 256-byte aligned.  A work table
splits the segments into rows of at most ``row_size`` elements, one workgroup each; a step is one submit
of a command buffer recorded once per program: [copy gradients in] -> each dispatch over all rows ->
[copy parameters out].  Gradients go in by one memcpy per parameter into mapped memory, parameters
come back the same way; optimizer state never leaves the device.

Arenas above the binding limit (maxStorageBufferRange, 128 MiB on lavapipe) are bound as several
windows, one dispatch each.  Sums: each workgroup writes its partial sums; a second pass
(``segment-sum.glsl``) adds them per segment in a fixed order, so results are deterministic.

Environment: ``HYPEROPT_VULKAN_VALIDATION=1`` enables the Khronos validation layer and records its
messages in ``validation_messages``; ``HYPEROPT_VULKAN_STAGING=1`` forces the discrete-GPU path
(device-local arenas plus staging copies) on unified-memory devices, so it is tested everywhere.
"""
from __future__ import annotations

import atexit
import os
import sys
import weakref
from pathlib import Path

import numpy as np
import vulkan as vk

from ..kernels.core import CONTROL, dispatch
from . import launch_counts

ffi = vk.ffi
SPIRV = Path(__file__).resolve().parent.parent / "spirv"
ROW_CPU, ROW_GPU = 16384, 4096     # elements per workgroup: fewer, larger rows suit CPU drivers
ALIGN = 64                    # floats: segment starts are 256-byte aligned
PUSH_BYTES = 16               # struct Dispatch in common.glsli: 4 x uint
FRAME_BINDINGS = 4            # work, table, partials, ctl: see common.glsli

validation_messages: list[str] = []


class VulkanUnavailable(Exception):
    """No usable Vulkan device (the caller falls back to NumPy)."""


# ============================================================================ device context
class Context:
    """Instance, device, queue and pipeline cache; one per selected device, shared by optimizers."""

    def __init__(self, selector: str):
        self.validation = os.environ.get("HYPEROPT_VULKAN_VALIDATION") == "1"
        self._messenger = None
        self.instance = self._create_instance()
        try:
            self._open(selector)
        except BaseException:
            self._destroy_instance()     # no device: nothing may stay behind
            raise

    def _open(self, selector):
        self.physical, self.props = self._pick_device(selector)
        self.name = _text(self.props.deviceName)
        self.driver = self._driver_info()
        self.limits = self.props.limits
        self.max_binding_bytes = int(os.environ.get("HYPEROPT_VULKAN_MAX_BINDING", self.limits.maxStorageBufferRange))
        self.max_groups = self.limits.maxComputeWorkGroupCount[0]
        families = vk.vkGetPhysicalDeviceQueueFamilyProperties(self.physical)
        self.family = next(i for i, f in enumerate(families) if f.queueFlags & vk.VK_QUEUE_COMPUTE_BIT)
        queue_info = vk.VkDeviceQueueCreateInfo(queueFamilyIndex=self.family, queueCount=1, pQueuePriorities=[1.0])
        self.device = vk.vkCreateDevice(self.physical, vk.VkDeviceCreateInfo(
            queueCreateInfoCount=1, pQueueCreateInfos=[queue_info]), None)
        self.queue = vk.vkGetDeviceQueue(self.device, self.family, 0)
        self.pool = vk.vkCreateCommandPool(self.device, vk.VkCommandPoolCreateInfo(
            flags=vk.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, queueFamilyIndex=self.family), None)
        self.fence = vk.vkCreateFence(self.device, vk.VkFenceCreateInfo(), None)
        self._fence_ptr = ffi.new("VkFence*", self.fence)
        self.memory_types = vk.vkGetPhysicalDeviceMemoryProperties(self.physical)
        host = vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
        cpu = self.props.deviceType == vk.VK_PHYSICAL_DEVICE_TYPE_CPU
        # Map the arenas directly only on unified memory (CPU drivers, integrated GPUs).  A discrete
        # GPU may also offer host-visible VRAM (resizable BAR), but host reads from it are uncached
        # and slow: there the arenas stay device-local and a step copies through staging buffers.
        uma = cpu or self.props.deviceType == vk.VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU
        unified = uma and self._find_type(host | vk.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0xFFFFFFFF) is not None
        self.row_size = ROW_CPU if cpu else ROW_GPU
        self.staging = not unified or os.environ.get("HYPEROPT_VULKAN_STAGING") == "1"
        self.pipelines: dict[tuple, tuple] = {}

    def _create_instance(self):
        layers, exts = [], []
        if self.validation:
            have = {_text(p.layerName) for p in vk.vkEnumerateInstanceLayerProperties()}
            if "VK_LAYER_KHRONOS_validation" not in have:
                raise VulkanUnavailable("HYPEROPT_VULKAN_VALIDATION=1 but VK_LAYER_KHRONOS_validation is not installed")
            layers, exts = ["VK_LAYER_KHRONOS_validation"], [vk.VK_EXT_DEBUG_UTILS_EXTENSION_NAME]
        app = vk.VkApplicationInfo(pApplicationName="hyperopt", apiVersion=vk.VK_MAKE_VERSION(1, 1, 0))
        try:
            instance = vk.vkCreateInstance(vk.VkInstanceCreateInfo(
                pApplicationInfo=app, enabledLayerCount=len(layers), ppEnabledLayerNames=layers,
                enabledExtensionCount=len(exts), ppEnabledExtensionNames=exts), None)
        except vk.VkError as exc:
            raise VulkanUnavailable(f"vkCreateInstance failed ({type(exc).__name__})") from None
        if self.validation:
            def on_message(severity, types, data, user):
                validation_messages.append(_text(data.pMessage))
                return vk.VK_FALSE
            create = vk.vkGetInstanceProcAddr(instance, "vkCreateDebugUtilsMessengerEXT")
            self._messenger = create(instance, vk.VkDebugUtilsMessengerCreateInfoEXT(
                messageSeverity=vk.VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT
                | vk.VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
                messageType=vk.VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT
                | vk.VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT
                | vk.VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
                pfnUserCallback=on_message), None)
        return instance

    def _pick_device(self, selector):
        devices = [(d, vk.vkGetPhysicalDeviceProperties(d)) for d in vk.vkEnumeratePhysicalDevices(self.instance)]
        if not devices:
            raise VulkanUnavailable("no Vulkan device is present")
        hardware = (vk.VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU, vk.VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU,
                    vk.VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU)
        names = [_text(p.deviceName) for _, p in devices]
        if selector == "gpu":
            picks = sorted((hardware.index(p.deviceType), k) for k, (_, p) in enumerate(devices) if p.deviceType in hardware)
            picks = [k for _, k in picks]
        elif selector == "cpu":
            picks = [k for k, (_, p) in enumerate(devices) if p.deviceType == vk.VK_PHYSICAL_DEVICE_TYPE_CPU]
        elif selector == "any":
            picks = list(range(len(devices)))
        elif selector.isdigit():
            picks = [int(selector)] if int(selector) < len(devices) else []
        else:
            picks = [k for k, n in enumerate(names) if selector.lower() in n.lower()]
        if not picks:
            raise VulkanUnavailable(f"no Vulkan device matches device={selector!r} (found: {', '.join(names)})")
        return devices[picks[0]]

    def _driver_info(self) -> str:
        """e.g. "llvmpipe Mesa 25.0.7 (LLVM 15.0.6)" or "NVIDIA 550.54" (Vulkan 1.2 driver properties)."""
        try:
            info = vk.VkPhysicalDeviceDriverProperties()
            vk.vkGetPhysicalDeviceProperties2(self.physical, vk.VkPhysicalDeviceProperties2(pNext=info))
            return f"{_text(info.driverName)} {_text(info.driverInfo)}".strip()
        except Exception:   # a Vulkan 1.0/1.1 driver without the query
            return f"driver version 0x{self.props.driverVersion:x}"

    def _find_type(self, flags, bits):
        for k in range(self.memory_types.memoryTypeCount):
            if bits & (1 << k) and (self.memory_types.memoryTypes[k].propertyFlags & flags) == flags:
                return k
        return None

    # ------------------------------------------------------------------ pipelines
    def pipeline(self, shader: str, n_bindings: int):
        key = (shader, n_bindings)
        if key not in self.pipelines:
            code = (SPIRV / f"{shader}.spv").read_bytes()
            module = vk.vkCreateShaderModule(self.device, vk.VkShaderModuleCreateInfo(
                codeSize=len(code), pCode=code), None)
            bindings = [vk.VkDescriptorSetLayoutBinding(
                binding=b, descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=1,
                stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT) for b in range(n_bindings)]
            set_layout = vk.vkCreateDescriptorSetLayout(self.device, vk.VkDescriptorSetLayoutCreateInfo(
                bindingCount=n_bindings, pBindings=bindings), None)
            layout = vk.vkCreatePipelineLayout(self.device, vk.VkPipelineLayoutCreateInfo(
                setLayoutCount=1, pSetLayouts=[set_layout], pushConstantRangeCount=1,
                pPushConstantRanges=[vk.VkPushConstantRange(
                    stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT, offset=0, size=PUSH_BYTES)]), None)
            stage = vk.VkPipelineShaderStageCreateInfo(stage=vk.VK_SHADER_STAGE_COMPUTE_BIT, module=module, pName="main")
            pipe = vk.vkCreateComputePipelines(self.device, None, 1, [vk.VkComputePipelineCreateInfo(
                stage=stage, layout=layout)], None)[0]
            vk.vkDestroyShaderModule(self.device, module, None)
            self.pipelines[key] = (pipe, layout, set_layout)
        return self.pipelines[key]

    # ------------------------------------------------------------------ submission
    @staticmethod
    def submit_info(cmd):
        """A prebuilt VkSubmitInfo for one command buffer (keeps its pointer alive with it)."""
        ptr = ffi.new("VkCommandBuffer*", cmd)
        info = ffi.new("VkSubmitInfo*", {"sType": vk.VK_STRUCTURE_TYPE_SUBMIT_INFO,
                                          "commandBufferCount": 1, "pCommandBuffers": ptr})
        return info, ptr

    def submit(self, info):
        """Submit a prebuilt submit info and wait (raw calls: ~20 us instead of ~55)."""
        check(vk.lib.vkQueueSubmit(self.queue, 1, info[0], self.fence))
        check(vk.lib.vkWaitForFences(self.device, 1, self._fence_ptr, vk.VK_TRUE, 0xFFFFFFFFFFFFFFFF))
        check(vk.lib.vkResetFences(self.device, 1, self._fence_ptr))

    def one_shot(self, record):
        """Record with ``record(cmd)``, submit, wait, free (for setup copies)."""
        cmd = vk.vkAllocateCommandBuffers(self.device, vk.VkCommandBufferAllocateInfo(
            commandPool=self.pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]
        vk.vkBeginCommandBuffer(cmd, vk.VkCommandBufferBeginInfo(flags=vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT))
        record(cmd)
        vk.vkEndCommandBuffer(cmd)
        self.submit(self.submit_info(cmd))
        vk.vkFreeCommandBuffers(self.device, self.pool, 1, [cmd])

    def destroy(self):
        vk.vkDeviceWaitIdle(self.device)
        for pipe, layout, set_layout in self.pipelines.values():
            vk.vkDestroyPipeline(self.device, pipe, None)
            vk.vkDestroyPipelineLayout(self.device, layout, None)
            vk.vkDestroyDescriptorSetLayout(self.device, set_layout, None)
        vk.vkDestroyFence(self.device, self.fence, None)
        vk.vkDestroyCommandPool(self.device, self.pool, None)
        vk.vkDestroyDevice(self.device, None)
        self._destroy_instance()

    def _destroy_instance(self):
        if self._messenger is not None:
            vk.vkGetInstanceProcAddr(self.instance, "vkDestroyDebugUtilsMessengerEXT")(self.instance, self._messenger, None)
        vk.vkDestroyInstance(self.instance, None)


def _text(value) -> str:
    """The binding returns some char arrays as str and some as cdata."""
    return value if isinstance(value, str) else ffi.string(value).decode(errors="replace")


def check(result):
    if result != vk.VK_SUCCESS:
        raise RuntimeError(f"Vulkan call failed with VkResult {result}")


_contexts: dict[str, Context] = {}


_unavailable: dict[str, VulkanUnavailable] = {}


def context(selector: str) -> Context:
    """The shared context of a device selector; a selector that found no device is not retried."""
    if selector in _unavailable:
        raise _unavailable[selector]
    if selector not in _contexts:
        try:
            _contexts[selector] = Context(selector)
        except VulkanUnavailable as exc:
            _unavailable[selector] = exc
            raise
    return _contexts[selector]


_live_backends: "weakref.WeakSet[VulkanBackend]" = weakref.WeakSet()


@atexit.register
def _shutdown():
    # Free what live optimizers still hold first: weakref.finalize's own exit hook may run after
    # this one (it is registered whenever some library first uses it), too late for the device.
    for backend in list(_live_backends):
        backend.close()
    for ctx in _contexts.values():
        ctx.destroy()
    _contexts.clear()
    if validation_messages:    # e.g. objects still alive at device destruction
        print("Vulkan validation messages at shutdown:\n" + "\n".join(validation_messages), file=sys.stderr)


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

    def floats(self):
        return self.view.view(np.float32)

    def free(self):
        if self.buffer is not None:
            self.view = None      # views die before the memory they point into
            vk.vkDestroyBuffer(self.ctx.device, self.buffer, None)
            vk.vkFreeMemory(self.ctx.device, self.memory, None)
            self.buffer = None
            Buffer.live -= 1


# ============================================================================ the backend
class VulkanBackend:
    def __init__(self, device: str = "gpu"):
        try:
            self.ctx = context(str(device))
        except VulkanUnavailable:  # already says why
            raise
        except Exception as exc:   # a broken driver must not take the user's training loop down
            raise VulkanUnavailable(f"Vulkan initialisation failed: {exc!r}") from None
        self.name = f"vulkan:{self.ctx.name}"
        self.buffers: tuple[str, ...] = ()
        self._arenas: dict[str, Buffer] = {}
        self._staging: dict[str, Buffer] = {}
        # everything this backend allocated, shared with the finalizer (which must not hold the backend)
        self._owned: dict[str, list] = {"buffers": [], "programs": []}
        self._programs: list[VulkanProgram] = self._owned["programs"]
        self._params: list[np.ndarray] = []
        self._ctl = self._host(16)
        self._active = None
        self._finalizer = weakref.finalize(self, _release, self._owned)
        _live_backends.add(self)

    # -------------------------------------------------------------- layout
    def bind(self, arrays, state_names):
        for k, a in enumerate(arrays):
            if a.dtype != np.float32:
                raise TypeError(f"the Vulkan backend updates float32 parameters; parameter {k} is {a.dtype}")
        old = {name: [self.read(name, i) for i in range(len(self._params))] for name in self.buffers} if self._arenas else {}
        old_ids = {id(a): i for i, a in enumerate(self._params)}
        self._free_layout()
        self._params = list(arrays)
        self.buffers = tuple(state_names)
        sizes = np.array([a.size for a in arrays], np.int64)
        padded = np.maximum((sizes + ALIGN - 1) // ALIGN * ALIGN, ALIGN)   # empty ones too: windows stay inside
        self.offsets = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64)
        self.sizes = sizes
        total = int(padded.sum())
        # work rows: (segment, begin, end, 0), never crossing a segment
        rows = []
        for s, (off, n) in enumerate(zip(self.offsets, sizes)):
            length = self._row_length(int(n))
            rows += [(s, off + b, off + min(b + length, n), 0) for b in range(0, max(int(n), 1), length)]
        self._rows = np.array(rows, np.uint32).reshape(-1, 4)
        self.n_rows = len(self._rows)
        first = np.searchsorted(self._rows[:, 0], np.arange(len(arrays)))
        counts = np.bincount(self._rows[:, 0], minlength=len(arrays))
        self._work = self._host(self._rows.nbytes)
        self._work.view.view(np.uint32).reshape(-1, 4)[:] = self._rows
        self._ranges = self._host(len(arrays) * 8)
        self._ranges.view.view(np.uint32).reshape(-1, 2)[:] = np.c_[first, counts]
        self._windows = self._plan_windows(total)
        for name in ("param", "grad") + self.buffers:
            self._arenas[name] = self._arena(total * 4)
        if self.ctx.staging:     # device-local memory starts with whatever was there before
            arenas = list(self._arenas.values())
            self.ctx.one_shot(lambda cmd: [vk.vkCmdFillBuffer(cmd, a.buffer, 0, a.nbytes, 0) for a in arenas])
            for name in ("param", "grad"):
                self._staging[name] = self._host(total * 4)
        self._slices = [slice(int(o), int(o + n)) for o, n in zip(self.offsets, sizes)]
        self._grad_in = (self._staging.get("grad") or self._arenas["grad"]).floats()
        self._param_out = (self._staging.get("param") or self._arenas["param"]).floats()
        self._active = None
        self._touched: set[int] = set()     # segments whose state may be non-zero
        self.reload_params()
        # carry state of parameters that were bound before (matched by identity)
        new_ids = {id(a): i for i, a in enumerate(self._params)}
        for name, values in old.items():
            if name in self.buffers:
                for aid, j in old_ids.items():
                    if aid in new_ids:
                        self.write(name, new_ids[aid], values[j])

    def _row_length(self, n):
        """Elements per work row of an n-element parameter: at most ``row_size``, and at least two
        equal rows from 4K elements on, so that two cores (or SMs) share even a small tensor."""
        rows = max(-(-n // self.ctx.row_size), min(2, -(-n // 4096)), 1)
        per_row = -(-n // rows)
        return max(ALIGN, -(-per_row // ALIGN) * ALIGN)      # rounded up to whole aligned blocks

    def _plan_windows(self, total):
        """Split the rows into dispatches whose arena span fits one binding and one dispatch."""
        limit = self.ctx.max_binding_bytes // 4 // ALIGN * ALIGN
        windows, start = [], 0
        while start < self.n_rows:
            base = int(self._rows[start, 1]) // ALIGN * ALIGN
            end = start
            while (end < self.n_rows and end - start < self.ctx.max_groups
                   and int(self._rows[end, 2]) - base <= limit):
                end += 1
            if end == start:
                raise RuntimeError("a work row does not fit the device's storage-buffer binding limit")
            span = (int(self._rows[end - 1, 2]) - base + ALIGN - 1) // ALIGN * ALIGN
            windows.append((start, end - start, base, max(span, ALIGN)))
            start = end
        return windows

    def _host(self, nbytes):
        b = Buffer(self.ctx, nbytes, host=True)
        self._owned["buffers"].append(b)
        return b

    def _arena(self, nbytes):
        b = Buffer(self.ctx, nbytes, host=not self.ctx.staging)
        self._owned["buffers"].append(b)
        return b

    def _free_layout(self):
        for p in self._programs:
            p.free()
        self._programs.clear()
        for b in self._owned["buffers"]:
            if b is not self._ctl:
                b.free()
        self._owned["buffers"][:] = [self._ctl]
        self._arenas.clear()
        self._staging.clear()

    # -------------------------------------------------------------- host <-> device
    def _copy(self, src: Buffer, dst: Buffer, src_offset=0, dst_offset=0, nbytes=None):
        nbytes = min(src.nbytes, dst.nbytes) if nbytes is None else nbytes
        if nbytes:
            self.ctx.one_shot(lambda cmd: vk.vkCmdCopyBuffer(cmd, src.buffer, dst.buffer, 1, [
                vk.VkBufferCopy(srcOffset=src_offset, dstOffset=dst_offset, size=nbytes)]))

    def read(self, name, i):
        arena, r = self._arenas[name], self._slices[i]
        shape = self._params[i].shape
        if arena.view is not None:
            return arena.floats()[r].reshape(shape).copy()
        tmp = Buffer(self.ctx, (r.stop - r.start) * 4, host=True)     # staging for this region only
        try:
            self._copy(arena, tmp, r.start * 4, 0, (r.stop - r.start) * 4)
            return tmp.floats()[: r.stop - r.start].reshape(shape).copy()
        finally:
            tmp.free()

    def clear(self, i):
        """Zero parameter i's region of every state buffer (a fresh state), in one go."""
        if i not in self._touched:
            return                           # never written since allocation: still zero
        self._touched.discard(i)
        r = self._slices[i]
        arenas = [self._arenas[name] for name in self.buffers]
        if not self.ctx.staging:
            for arena in arenas:
                arena.floats()[r] = 0.0
        elif r.stop > r.start:
            self.ctx.one_shot(lambda cmd: [vk.vkCmdFillBuffer(cmd, a.buffer, r.start * 4, (r.stop - r.start) * 4, 0)
                                           for a in arenas])

    def write(self, name, i, values):
        self._touched.add(i)
        arena, r = self._arenas[name], self._slices[i]
        values = np.broadcast_to(np.asarray(values, np.float32), self._params[i].shape).reshape(-1)
        if arena.view is not None:
            arena.floats()[r] = values
            return
        tmp = Buffer(self.ctx, (r.stop - r.start) * 4, host=True)
        try:
            tmp.floats()[: r.stop - r.start] = values
            self._copy(tmp, arena, 0, r.start * 4, (r.stop - r.start) * 4)
        finally:
            tmp.free()

    def reload_params(self):
        """Copy the user's parameter arrays to the device (after editing them outside step())."""
        target = self._staging.get("param") or self._arenas["param"]
        view = target.floats()
        for i, a in enumerate(self._params):
            view[self._slices[i]] = a.reshape(-1)
        if self.ctx.staging:
            self._copy(target, self._arenas["param"])

    def ctl_array(self, size):
        if self._ctl.nbytes != max(16, size * 4):
            for p in self._programs:
                p.free()
            self._programs.clear()
            self._ctl.free()
            self._owned["buffers"].remove(self._ctl)
            self._ctl = self._host(size * 4)
        return self._ctl.floats()[:size]

    # -------------------------------------------------------------- programs
    def program(self, dispatches):
        p = VulkanProgram(self, dispatches)
        self._programs.append(p)
        return p

    def run(self, program, grads=None, download=True, upload_params=False):
        if grads is not None:
            self._upload(grads)
        if upload_params:       # the caller's arrays are the truth (edits between steps are kept)
            view, slices, params = self._param_out, self._slices, self._params
            for i in self._active_list:
                view[slices[i]] = params[i].reshape(-1)
        staging = self.ctx.staging
        program.launch(upload=grads is not None and staging, upload_params=upload_params and staging,
                       download=download and staging)
        if download:
            view, slices, params = self._param_out, self._slices, self._params
            for i in self._active_list:
                p = params[i]
                p[...] = view[slices[i]].reshape(p.shape)
        return [buf.floats()[: len(self._params) * n].reshape(-1, n).astype(np.float64)
                for buf, n in program.sum_outputs]

    def _upload(self, grads):
        view, slices = self._grad_in, self._slices
        for i, g in grads.items():
            view[slices[i]] = g.reshape(-1)
        active = frozenset(grads)
        self._touched |= active
        if active != self._active:
            self._active, self._active_list = active, sorted(active)
            mask = np.zeros(len(self._params), bool)
            mask[list(active)] = True
            rows = self._work.view.view(np.uint32).reshape(-1, 4)
            on = mask[self._rows[:, 0]]
            rows[:, 2] = np.where(on, self._rows[:, 2], self._rows[:, 1])

    def close(self):
        if self._finalizer.alive:
            self._finalizer()


def _release(res):
    for p in res["programs"]:
        p.free()
    for b in res["buffers"]:
        b.free()


class VulkanProgram:
    """A recorded command buffer for a list of (kernel, buffer names) dispatches."""

    def __init__(self, backend: VulkanBackend, dispatches):
        ctx = self.ctx = backend.ctx
        self._arenas, self._staging = backend._arenas, backend._staging   # not the backend: no cycle
        n_seg = len(backend._params)
        self.dispatches = [dispatch(k, names) for k, names in dispatches]
        self._buffers: list[Buffer] = []
        self.tables, self.sum_outputs = [], []
        self._sets = []            # (pipeline, layout, descriptor set, push constants, group count) in order
        n_sets = sum(len(backend._windows) + 1 for _ in self.dispatches) + 1
        self.pool = vk.vkCreateDescriptorPool(ctx.device, vk.VkDescriptorPoolCreateInfo(
            maxSets=n_sets, poolSizeCount=1, pPoolSizes=[vk.VkDescriptorPoolSize(
                type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=n_sets * 16)]), None)
        last_sums = None
        steps = []
        for kernel, names in self.dispatches:
            table = self._own(n_seg * max(1, len(kernel.scalars)) * 4)
            self.tables.append(table.floats()[: n_seg * len(kernel.scalars)].reshape(n_seg, len(kernel.scalars)))
            n_bind = FRAME_BINDINGS + len(kernel.buffers)
            pipe = ctx.pipeline(kernel.shader, n_bind)
            if kernel.kind == CONTROL:
                sums, n_sums = last_sums if last_sums else (self._own(16), 0)
                ds = self._set(pipe, [backend._work, table, sums, backend._ctl])
                steps.append([(pipe, ds, (0, 0, n_seg, n_sums), 1)])
                continue
            n_sums = len(kernel.sums)
            partials = self._own(backend.n_rows * max(1, n_sums) * 4)
            step = []
            for (w0, nw, base, span) in backend._windows:
                arenas = [(backend._arenas[n], base * 4, span * 4) for n in names]
                ds = self._set(pipe, [backend._work, table, partials, backend._ctl], arenas)
                step.append((pipe, ds, (w0, base, n_seg, max(1, n_sums)), nw))
            steps.append(step)
            if n_sums:
                sums = self._own(n_seg * n_sums * 4)
                red = ctx.pipeline("segment-sum", FRAME_BINDINGS + 1)
                ds = self._set(red, [backend._work, backend._ranges, partials, backend._ctl, sums])
                steps.append([(red, ds, (0, 0, n_seg, n_sums), n_seg)])
                self.sum_outputs.append((sums, n_sums))
                last_sums = (sums, n_sums)
        self._steps = steps
        self._n_dispatches = sum(len(step) for step in steps)
        self._cmds = {}

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

    def _record(self, upload, upload_params, download):
        ctx = self.ctx
        cmd = vk.vkAllocateCommandBuffers(ctx.device, vk.VkCommandBufferAllocateInfo(
            commandPool=ctx.pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]
        vk.vkBeginCommandBuffer(cmd, vk.VkCommandBufferBeginInfo())
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
        for step in self._steps:
            for pipe, ds, push, groups in step:
                vk.vkCmdBindPipeline(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe[0])
                vk.vkCmdBindDescriptorSets(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe[1], 0, 1, [ds], 0, None)
                data = np.array(push, np.uint32).tobytes()
                vk.vkCmdPushConstants(cmd, pipe[1], vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, PUSH_BYTES, ffi.from_buffer(data))
                vk.vkCmdDispatch(cmd, groups, 1, 1)
            barrier(compute, vk.VK_ACCESS_SHADER_WRITE_BIT, compute, rw)
        if download:
            p = self._staging["param"]
            barrier(compute, vk.VK_ACCESS_SHADER_WRITE_BIT, transfer, vk.VK_ACCESS_TRANSFER_READ_BIT)
            vk.vkCmdCopyBuffer(cmd, self._arenas["param"].buffer, p.buffer, 1, [
                vk.VkBufferCopy(srcOffset=0, dstOffset=0, size=p.nbytes)])
            barrier(transfer, vk.VK_ACCESS_TRANSFER_WRITE_BIT, vk.VK_PIPELINE_STAGE_HOST_BIT, vk.VK_ACCESS_HOST_READ_BIT)
        else:
            barrier(compute, vk.VK_ACCESS_SHADER_WRITE_BIT, vk.VK_PIPELINE_STAGE_HOST_BIT, vk.VK_ACCESS_HOST_READ_BIT)
        vk.vkEndCommandBuffer(cmd)
        return cmd, self.ctx.submit_info(cmd)

    def launch(self, upload, upload_params, download):
        key = (upload, upload_params, download)
        if key not in self._cmds:
            self._cmds[key] = self._record(*key)
        self.ctx.submit(self._cmds[key][1])
        launch_counts["vulkan"] += self._n_dispatches

    def free(self):
        if self.pool is None:
            return
        for cmd, _ in self._cmds.values():
            vk.vkFreeCommandBuffers(self.ctx.device, self.ctx.pool, 1, [cmd])
        self._cmds.clear()
        vk.vkDestroyDescriptorPool(self.ctx.device, self.pool, None)
        self.pool = None
        self.tables = []
        for b in self._buffers:
            b.free()
