"""The Vulkan backend: the kernels' GLSL twins, run as compute shaders through the `vulkan` binding.

Layout.  Every parameter is one *segment* of flat arena buffers (float32, or float64 with the
kernels' .f64 builds where the device has shaderFloat64) ("param", "grad" and one
per state buffer), padded to 64 floats so every segment starts 256-byte aligned.  A work table
splits the segments into rows of at most ``row_size`` elements, one workgroup each; a step is one submit
of a command buffer recorded once per program: [copy gradients in] -> each dispatch over all rows ->
[copy parameters out].  Gradients go in by one memcpy per parameter into mapped memory, parameters
come back the same way; optimizer state never leaves the device.

Arenas above the binding limit (maxStorageBufferRange, 128 MiB on lavapipe) are bound as several
windows, one dispatch each.  Sums: each workgroup writes its partial sums; a second pass
(``segment-sum.glsl``) adds them per segment in a fixed order, so results are deterministic.

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
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import vulkan as vk

from ..kernels.core import CONTROL, dispatch
from . import VulkanUnavailable

ffi = vk.ffi
SPIRV = Path(__file__).resolve().parent.parent / "spirv"
ROW_CPU, ROW_GPU = 16384, 4096     # elements per workgroup: fewer, larger rows suit CPU drivers
ALIGN = 64                    # floats: segment starts are 256-byte aligned
PUSH_BYTES = 16               # struct Dispatch in common.glsli: 4 x uint
FRAME_BINDINGS = 4            # work, table, partials, ctl: see common.glsli

validation_messages: list[str] = []

class PrecisionUnsupported(TypeError):
    """Parameters this device cannot update (float64 without shaderFloat64, mixed precisions):
    ``hyperopt.backends.fit_backend`` moves such an optimizer to the CPU path, with a warning."""


class _StuckDriver(Exception):
    """The driver's queue does not finish work (see Context._check_queue_after_fork)."""


_generation = 0            # bumped in a forked child: contexts of an older generation belong to the parent
_shutting_down = False     # set at interpreter exit, before the devices are released


# ============================================================================ device context
class Context:
    """Instance, device, queue and pipeline cache; one per selected device, shared by optimizers.

    ``lock`` guards the queue, the fence, the command pool and the pipeline table."""

    def __init__(self, selector: str):
        self.lock = threading.RLock()
        self.generation = _generation
        self.pid = os.getpid()
        self.validation = os.environ.get("HYPEROPT_VULKAN_VALIDATION") == "1"
        self._messenger = None
        self.instance = self._create_instance()
        try:
            self._open(selector)
        except _StuckDriver as exc:      # its queue never finishes: destroying anything could hang too
            raise VulkanUnavailable(str(exc)) from None
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
        self.float64 = bool(vk.vkGetPhysicalDeviceFeatures(self.physical).shaderFloat64)
        features = vk.VkPhysicalDeviceFeatures(shaderFloat64=vk.VK_TRUE if self.float64 else vk.VK_FALSE)
        self.device = vk.vkCreateDevice(self.physical, vk.VkDeviceCreateInfo(
            queueCreateInfoCount=1, pQueueCreateInfos=[queue_info], pEnabledFeatures=features), None)
        self.queue = vk.vkGetDeviceQueue(self.device, self.family, 0)
        # GPU timestamps, on demand only: a step without them records and reads no queries
        self.timestamp_bits = families[self.family].timestampValidBits      # 0: no timestamps
        self.timestamp_period_ns = float(self.limits.timestampPeriod)
        self.timestamps = os.environ.get("HYPEROPT_VULKAN_TIMESTAMPS") == "1"
        self.kernel_seconds_total = self.submit_seconds_total = 0.0   # over every timed launch (multi-launch steps)
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
        self._open_pipeline_cache()
        if self.generation > 0:
            self._check_queue_after_fork()

    def _check_queue_after_fork(self):
        """Some drivers (SwiftShader) keep their worker threads in a process-wide pool that a forked
        child inherits without the threads: their queues never finish a dispatch there.  Run one
        tiny dispatch with a timeout, so such a device is refused instead of hanging the first step."""
        buffer = vk.vkCreateBuffer(self.device, vk.VkBufferCreateInfo(
            size=256, usage=vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT, sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
        req = vk.vkGetBufferMemoryRequirements(self.device, buffer)
        memory = vk.vkAllocateMemory(self.device, vk.VkMemoryAllocateInfo(
            allocationSize=req.size, memoryTypeIndex=self._find_type(0, req.memoryTypeBits)), None)
        vk.vkBindBufferMemory(self.device, buffer, memory, 0)
        pipe, layout, set_layout = self.pipeline("segment-sum", FRAME_BINDINGS + 1)    # with n_sums = 0: no writes
        pool = vk.vkCreateDescriptorPool(self.device, vk.VkDescriptorPoolCreateInfo(
            maxSets=1, poolSizeCount=1, pPoolSizes=[vk.VkDescriptorPoolSize(
                type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=FRAME_BINDINGS + 1)]), None)
        ds = vk.vkAllocateDescriptorSets(self.device, vk.VkDescriptorSetAllocateInfo(
            descriptorPool=pool, descriptorSetCount=1, pSetLayouts=[set_layout]))[0]
        vk.vkUpdateDescriptorSets(self.device, FRAME_BINDINGS + 1, [vk.VkWriteDescriptorSet(
            dstSet=ds, dstBinding=k, descriptorCount=1, descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            pBufferInfo=[vk.VkDescriptorBufferInfo(buffer=buffer, offset=0, range=256)])
            for k in range(FRAME_BINDINGS + 1)], 0, None)
        cmd = vk.vkAllocateCommandBuffers(self.device, vk.VkCommandBufferAllocateInfo(
            commandPool=self.pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]
        vk.vkBeginCommandBuffer(cmd, vk.VkCommandBufferBeginInfo(flags=vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT))
        vk.vkCmdBindPipeline(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipe)
        vk.vkCmdBindDescriptorSets(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, layout, 0, 1, [ds], 0, None)
        vk.vkCmdPushConstants(cmd, layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, PUSH_BYTES, ffi.new("uint32_t[4]"))
        vk.vkCmdDispatch(cmd, 1, 1, 1)
        vk.vkEndCommandBuffer(cmd)
        info = self.submit_info(cmd)
        check(vk.lib.vkQueueSubmit(self.queue, 1, info[0], self.fence))
        if vk.lib.vkWaitForFences(self.device, 1, self._fence_ptr, vk.VK_TRUE, 5_000_000_000) != vk.VK_SUCCESS:
            raise _StuckDriver(
                f"the Vulkan driver of {self.name} ({self.driver}) does not run work in a forked child "
                "process once its parent has used it; start worker processes with the 'spawn' or "
                "'forkserver' method, or use the CPU path (device='cpu') in forked workers")
        check(vk.lib.vkResetFences(self.device, 1, self._fence_ptr))
        vk.vkFreeCommandBuffers(self.device, self.pool, 1, [cmd])
        vk.vkDestroyDescriptorPool(self.device, pool, None)
        vk.vkDestroyBuffer(self.device, buffer, None)
        vk.vkFreeMemory(self.device, memory, None)

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
        """``"gpu"``: the best hardware GPU; ``"vulkan:cpu"``, ``"vulkan:<index>"``, ``"vulkan:<name part>"``."""
        devices = [(d, vk.vkGetPhysicalDeviceProperties(d)) for d in vk.vkEnumeratePhysicalDevices(self.instance)]
        if not devices:
            raise VulkanUnavailable("no Vulkan device is present")
        hardware = (vk.VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU, vk.VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU,
                    vk.VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU)
        names = [_text(p.deviceName) for _, p in devices]
        want = selector[len("vulkan:"):] if selector.startswith("vulkan:") else None
        if selector == "gpu":
            picks = sorted((hardware.index(p.deviceType), k) for k, (_, p) in enumerate(devices) if p.deviceType in hardware)
            picks = [k for _, k in picks]
        elif want is None:
            raise ValueError(f"unknown Vulkan device {selector!r}: expected 'gpu' or 'vulkan:<cpu|index|name>'")
        elif want == "cpu":
            picks = [k for k, (_, p) in enumerate(devices) if p.deviceType == vk.VK_PHYSICAL_DEVICE_TYPE_CPU]
        elif want.isdigit():
            picks = [int(want)] if int(want) < len(devices) else []
        else:
            picks = [k for k, n in enumerate(names) if want.lower() in n.lower()]
        if not picks:
            what = "no hardware GPU is present" if selector == "gpu" else f"no Vulkan device matches device={selector!r}"
            raise VulkanUnavailable(f"{what} (found: {', '.join(names)})")
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
        with self.lock:
            if key not in self.pipelines:
                self._create_pipeline(key)
            return self.pipelines[key]

    def _create_pipeline(self, key):
        shader, n_bindings = key
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
        pipe = vk.vkCreateComputePipelines(self.device, self.pipeline_cache, 1, [vk.VkComputePipelineCreateInfo(
            stage=stage, layout=layout)], None)[0]
        vk.vkDestroyShaderModule(self.device, module, None)
        self.pipelines[key] = (pipe, layout, set_layout)
        self._cache_dirty = True

    # ------------------------------------------------------------------ the pipeline cache on disk
    def _cache_file(self) -> Path | None:
        base = os.environ.get("HYPEROPT_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hyperopt")
        if not base or base.startswith("~"):
            return None          # no home directory to expand
        p = self.props
        uuid = bytes(p.pipelineCacheUUID).hex() if not isinstance(p.pipelineCacheUUID, (bytes, str)) else ""
        key = f"{p.vendorID:x}-{p.deviceID:x}-{p.driverVersion:x}-{uuid}-{self.name}-{self.driver}"
        return Path(base) / f"pipelines-{hashlib.sha256(key.encode()).hexdigest()[:24]}.bin"

    def _open_pipeline_cache(self):
        """A VkPipelineCache seeded from this device's file (the driver checks the header itself)."""
        self._cache_dirty = False
        self.cache_path = self._cache_file()
        data = b""
        try:
            if self.cache_path is not None:
                data = self.cache_path.read_bytes()
        except OSError:
            data = b""           # missing or unreadable: start empty
        self.cache_loaded = len(data)
        self._cache_digest = hashlib.sha256(data).digest()
        info = vk.VkPipelineCacheCreateInfo(initialDataSize=len(data), pInitialData=ffi.from_buffer(data) if data else ffi.NULL)
        try:
            self.pipeline_cache = vk.vkCreatePipelineCache(self.device, info, None)
        except vk.VkError:       # a driver that rejects the data: start empty
            self.cache_loaded = 0
            self.pipeline_cache = vk.vkCreatePipelineCache(self.device, vk.VkPipelineCacheCreateInfo(), None)

    def save_pipeline_cache(self):
        """Write the cache file if new pipelines were created (atomically; a read-only dir is fine)."""
        if not self._cache_dirty or self.cache_path is None:
            return
        with self.lock:
            size = ffi.new("size_t*")
            check(vk.lib.vkGetPipelineCacheData(self.device, self.pipeline_cache, size, ffi.NULL))
            buf = ffi.new("char[]", size[0])
            check(vk.lib.vkGetPipelineCacheData(self.device, self.pipeline_cache, size, buf))
            data = ffi.buffer(buf, size[0])[:]
            self._cache_dirty = False
        if hashlib.sha256(data).digest() == self._cache_digest:
            return               # every pipeline came from the file: nothing new to write
        self._cache_digest = hashlib.sha256(data).digest()
        tmp = self.cache_path.with_name(f"{self.cache_path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, self.cache_path)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass

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
        with self.lock:
            check(vk.lib.vkQueueSubmit(self.queue, 1, info[0], self.fence))
            check(vk.lib.vkWaitForFences(self.device, 1, self._fence_ptr, vk.VK_TRUE, 0xFFFFFFFFFFFFFFFF))
            check(vk.lib.vkResetFences(self.device, 1, self._fence_ptr))

    def one_shot(self, record):
        """Record with ``record(cmd)``, submit, wait, free (for setup copies)."""
        with self.lock:
            cmd = vk.vkAllocateCommandBuffers(self.device, vk.VkCommandBufferAllocateInfo(
                commandPool=self.pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]
            vk.vkBeginCommandBuffer(cmd, vk.VkCommandBufferBeginInfo(flags=vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT))
            record(cmd)
            vk.vkEndCommandBuffer(cmd)
            self.submit(self.submit_info(cmd))
            vk.vkFreeCommandBuffers(self.device, self.pool, 1, [cmd])

    @property
    def owned(self) -> bool:
        """False in a forked child for the parent's context (its objects must not be touched)."""
        return self.generation == _generation

    def destroy(self):
        self.save_pipeline_cache()
        vk.vkDeviceWaitIdle(self.device)
        for pipe, layout, set_layout in self.pipelines.values():
            vk.vkDestroyPipeline(self.device, pipe, None)
            vk.vkDestroyPipelineLayout(self.device, layout, None)
            vk.vkDestroyDescriptorSetLayout(self.device, set_layout, None)
        vk.vkDestroyPipelineCache(self.device, self.pipeline_cache, None)
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
_contexts_lock = threading.Lock()


def context(selector: str) -> Context:
    """The shared context of a device (``"gpu"`` or ``"vulkan:..."``); one that found no device is
    not retried.  A bare name is read as a ``vulkan:`` one (at this level every device is Vulkan)."""
    selector = str(selector)
    if selector != "gpu" and not selector.startswith("vulkan:"):
        selector = "vulkan:" + selector
    with _contexts_lock:
        if _shutting_down:
            raise VulkanUnavailable("the interpreter is shutting down (Vulkan devices are released)")
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
_EXIT_WAIT_S = 10.0      # how long shutdown waits for a step in flight (e.g. in a daemon thread)


def shutdown():
    """Release every device at interpreter exit (called by hyperopt.backends' exit hook, which
    is registered at import and so runs after the user's own exit hooks).  Steps in flight finish
    first; later calls, from daemon threads or later hooks, raise instead of touching the device."""
    global _shutting_down
    with _contexts_lock:
        _shutting_down = True
    for backend in list(_live_backends):
        backend._close("the Vulkan device was released at interpreter exit", wait=_EXIT_WAIT_S)
    for ctx in list(_contexts.values()):
        if ctx.owned and ctx.lock.acquire(timeout=_EXIT_WAIT_S):
            try:
                ctx.destroy()
            finally:
                ctx.lock.release()
    _contexts.clear()
    if validation_messages:    # e.g. objects still alive at device destruction
        print("Vulkan validation messages at shutdown:\n" + "\n".join(validation_messages), file=sys.stderr)


def _after_fork_in_child():
    """A forked child gets no usable copy of the parent's devices (the driver's threads and the
    queue's state stay with the parent): forget them, so the child opens its own on demand."""
    global _generation, _contexts_lock, _live_backends
    _generation += 1
    _contexts_lock = threading.Lock()
    _contexts.clear()
    _unavailable.clear()
    _live_backends = weakref.WeakSet()


os.register_at_fork(after_in_child=_after_fork_in_child)


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


# ============================================================================ the backend
def _guarded(method):
    """A backend method: one call at a time per backend, never on a closed or inherited device."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        with self.lock:
            if self._closed is not None:
                raise RuntimeError(self._closed)
            if not self.ctx.owned:
                raise RuntimeError(
                    f"this optimizer's Vulkan device belongs to the parent process (pid {self.ctx.pid}): an "
                    "optimizer cannot be used across fork(); build a new optimizer in the child process")
            return method(self, *args, **kwargs)
    return guarded


class VulkanBackend:
    def __init__(self, device: str = "gpu"):
        try:
            self.ctx = context(str(device))
        except (VulkanUnavailable, ValueError):  # already says why
            raise
        except Exception as exc:   # a broken driver must not take the user's training loop down
            raise VulkanUnavailable(f"Vulkan initialisation failed: {exc!r}") from None
        self.lock = threading.RLock()
        self._closed: str | None = None      # why calls are refused, once closed
        self.name = f"vulkan:{self.ctx.name}"
        self.buffers: tuple[str, ...] = ()
        self._arenas: dict[str, Buffer] = {}
        self._staging: dict[str, Buffer] = {}
        # everything this backend allocated, shared with the finalizer (which must not hold the backend)
        self._owned: dict = {"buffers": [], "programs": [], "ctx": self.ctx}
        self._programs: list[VulkanProgram] = self._owned["programs"]
        self._params: list[np.ndarray] = []
        self.dtype, self.itemsize, self.variant = np.dtype(np.float32), 4, ""
        self._ctl = self._host(16)
        self._ctl_host = np.zeros(0, np.float32)   # the optimizer's copy: never a view of device memory
        self._active = None
        self._finalizer = weakref.finalize(self, _release, self._owned)
        self._finalizer.atexit = False     # the exit hook (shutdown) closes live backends in order
        _live_backends.add(self)

    # -------------------------------------------------------------- layout
    def unsupported(self, arrays) -> str | None:
        """Why this device cannot update ``arrays`` (None if it can)."""
        try:
            self._precision(arrays)
        except PrecisionUnsupported as exc:
            return str(exc)
        return None

    def _precision(self, arrays):
        for k, a in enumerate(arrays):
            if a.dtype not in (np.float32, np.float64):
                raise PrecisionUnsupported(f"the Vulkan backend updates float32 and float64 parameters; parameter {k} is {a.dtype}")
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise PrecisionUnsupported("the Vulkan backend runs one precision per optimizer; the parameters mix float32 and float64")
        dtype = np.dtype(dtypes.pop() if dtypes else np.float32)
        if dtype == np.float64 and not self.ctx.float64:
            raise PrecisionUnsupported(f"{self.ctx.name} has no shaderFloat64 feature (float64 parameters)")
        return dtype

    @_guarded
    def bind(self, arrays, state_names):
        dtype = self._precision(arrays)
        sizes = np.array([a.size for a in arrays], np.int64)
        offsets, rows, total = plan_layout(sizes, self.ctx.row_size)     # checked before anything is freed
        old = {name: [self.read(name, i) for i in range(len(self._params))] for name in self.buffers} if self._arenas else {}
        old_ids = {id(a): i for i, a in enumerate(self._params)}
        self._free_layout()
        self.dtype, self.itemsize, self.variant = dtype, dtype.itemsize, ".f64" if dtype == np.float64 else ""
        self._params = list(arrays)
        self.buffers = tuple(state_names)
        self.offsets, self._rows, self.sizes = offsets, rows, sizes
        self.n_rows = len(self._rows)
        first = np.searchsorted(self._rows[:, 0], np.arange(len(arrays)))
        counts = np.bincount(self._rows[:, 0], minlength=len(arrays))
        self._work = self._host(self._rows.nbytes)
        self._work.view.view(np.uint32).reshape(-1, 4)[:] = self._rows
        self._ranges = self._host(len(arrays) * 8)
        self._ranges.view.view(np.uint32).reshape(-1, 2)[:] = np.c_[first, counts]
        self._windows = self._plan_windows(total)
        for name in ("param", "grad") + self.buffers:
            self._arenas[name] = self._arena(total * self.itemsize)
        if self.ctx.staging:     # device-local memory starts with whatever was there before
            arenas = list(self._arenas.values())
            self.ctx.one_shot(lambda cmd: [vk.vkCmdFillBuffer(cmd, a.buffer, 0, a.nbytes, 0) for a in arenas])
            for name in ("param", "grad"):
                self._staging[name] = self._host(total * self.itemsize)
        self._slices = [slice(int(o), int(o + n)) for o, n in zip(self.offsets, sizes)]
        self._grad_in = (self._staging.get("grad") or self._arenas["grad"]).floats(dtype)
        self._param_out = (self._staging.get("param") or self._arenas["param"]).floats(dtype)
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

    def _plan_windows(self, total):
        """Split the rows into dispatches whose arena span fits one binding and one dispatch."""
        limit = self.ctx.max_binding_bytes // self.itemsize // ALIGN * ALIGN
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

    @_guarded
    def read(self, name, i):
        arena, r = self._arenas[name], self._slices[i]
        shape = self._params[i].shape
        if arena.view is not None:
            return arena.floats(self.dtype)[r].reshape(shape).copy()
        k = self.itemsize
        tmp = Buffer(self.ctx, (r.stop - r.start) * k, host=True)     # staging for this region only
        try:
            self._copy(arena, tmp, r.start * k, 0, (r.stop - r.start) * k)
            return tmp.floats(self.dtype)[: r.stop - r.start].reshape(shape).copy()
        finally:
            tmp.free()

    @_guarded
    def clear(self, i):
        """Zero parameter i's region of every state buffer (a fresh state), in one go."""
        if i not in self._touched:
            return                           # never written since allocation: still zero
        self._touched.discard(i)
        r = self._slices[i]
        arenas = [self._arenas[name] for name in self.buffers]
        if not self.ctx.staging:
            for arena in arenas:
                arena.floats(self.dtype)[r] = 0.0
        elif r.stop > r.start:
            k = self.itemsize
            self.ctx.one_shot(lambda cmd: [vk.vkCmdFillBuffer(cmd, a.buffer, r.start * k, (r.stop - r.start) * k, 0)
                                           for a in arenas])

    @_guarded
    def write(self, name, i, values):
        self._touched.add(i)
        arena, r = self._arenas[name], self._slices[i]
        values = np.broadcast_to(np.asarray(values, self.dtype), self._params[i].shape).reshape(-1)
        if arena.view is not None:
            arena.floats(self.dtype)[r] = values
            return
        k = self.itemsize
        tmp = Buffer(self.ctx, (r.stop - r.start) * k, host=True)
        try:
            tmp.floats(self.dtype)[: r.stop - r.start] = values
            self._copy(tmp, arena, 0, r.start * k, (r.stop - r.start) * k)
        finally:
            tmp.free()

    @_guarded
    def set_param(self, i, array):
        """The caller rebound parameter i to ``array`` (same shape and dtype); its state is kept.
        Runs with ``upload_params`` copy it in; nothing moves now."""
        self._params[i] = array

    @_guarded
    def reload_params(self):
        """Copy the user's parameter arrays to the device (runs with ``upload_params`` do it too)."""
        target = self._staging.get("param") or self._arenas["param"]
        view = target.floats(self.dtype)
        for i, a in enumerate(self._params):
            view[self._slices[i]] = a.reshape(-1)
        if self.ctx.staging:
            self._copy(target, self._arenas["param"])

    @_guarded
    def ctl_array(self, size):
        if self._ctl.nbytes != max(16, size * 4):
            for p in self._programs:
                p.free()
            self._programs.clear()
            self._ctl.free()
            self._owned["buffers"].remove(self._ctl)
            self._ctl = self._host(size * 4)
        if self._ctl_host.size != size:
            self._ctl_host = np.zeros(size, np.float32)
        return self._ctl_host

    # -------------------------------------------------------------- programs
    @_guarded
    def program(self, dispatches):
        p = VulkanProgram(self, dispatches)
        self._programs.append(p)
        return p

    @_guarded
    def run(self, program, grads=None, download=True, upload_params=False):
        if grads is not None:
            self._upload(grads)
        if upload_params:       # the caller's arrays are the truth (edits between steps are kept)
            view, slices, params = self._param_out, self._slices, self._params
            for i in self._active_list:
                view[slices[i]] = params[i].reshape(-1)
        if program.pool is None:
            raise RuntimeError("this program was freed (the parameters or the control buffer changed since it was built)")
        staging = self.ctx.staging
        self._last_program = program
        ctl = self._ctl.floats()[: self._ctl_host.size]
        ctl[:] = self._ctl_host
        for mapped, table in zip(program.mapped_tables, program.tables):
            mapped[...] = table
        program.launch(upload=grads is not None and staging, upload_params=upload_params and staging,
                       download=download and staging)
        self._ctl_host[:] = ctl
        if download:
            view, slices, params = self._param_out, self._slices, self._params
            for i in self._active_list:
                p = params[i]
                p[...] = view[slices[i]].reshape(p.shape)
        return [buf.floats(self.dtype)[: len(self._params) * n].reshape(-1, n).astype(np.float64)
                for buf, n in program.sum_outputs]

    @property
    def last_kernel_seconds(self):
        """GPU time of the last step's dispatches alone (timestamps on), else None."""
        program = getattr(self, "_last_program", None)
        return program.kernel_seconds if program is not None else None

    @property
    def last_submit_seconds(self):
        """GPU time of the last step's whole command buffer, copies included (timestamps on), else None."""
        program = getattr(self, "_last_program", None)
        return program.submit_seconds if program is not None else None

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
        self._close("this optimizer was closed: close() released its Vulkan memory; build a new optimizer")

    def _close(self, reason, wait=None):
        if not self.lock.acquire(timeout=-1 if wait is None else wait):
            return       # a step that never finishes: its memory goes with the process
        try:
            if self._closed is None:
                self._closed = reason
                # detach, then release: a finalizer called after weakref's own exit hook does nothing
                if self._finalizer.detach() is not None:
                    _release(self._owned)       # skips the parent's objects (after fork)
        finally:
            self.lock.release()


def _release(res):
    if not res["ctx"].owned:
        return          # garbage collected in a forked child: the objects are the parent's
    with res["ctx"].lock:
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
        dtype, k = backend.dtype, backend.itemsize      # the precision of tables, partials and sums
        self.dispatches = [dispatch(k, names) for k, names in dispatches]
        self._buffers: list[Buffer] = []
        self.tables, self.mapped_tables, self.sum_outputs = [], [], []
        self._sets = []            # (pipeline, layout, descriptor set, push constants, group count) in order
        n_sets = sum(len(backend._windows) + 1 for _ in self.dispatches) + 1
        self.pool = vk.vkCreateDescriptorPool(ctx.device, vk.VkDescriptorPoolCreateInfo(
            maxSets=n_sets, poolSizeCount=1, pPoolSizes=[vk.VkDescriptorPoolSize(
                type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=n_sets * 16)]), None)
        last_sums = None
        steps = []
        for kernel, names in self.dispatches:
            table = self._own(n_seg * max(1, len(kernel.scalars)) * k)
            self.mapped_tables.append(table.floats(dtype)[: n_seg * len(kernel.scalars)].reshape(n_seg, len(kernel.scalars)))
            self.tables.append(np.zeros_like(self.mapped_tables[-1]))   # filled by the host, copied in by run()
            n_bind = FRAME_BINDINGS + len(kernel.buffers)
            pipe = ctx.pipeline(kernel.shader + backend.variant, n_bind)
            if kernel.kind == CONTROL:
                sums, n_sums = last_sums if last_sums else (self._own(16), 0)
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
                sums = self._own(n_seg * n_sums * k)
                red = ctx.pipeline("segment-sum" + backend.variant, FRAME_BINDINGS + 1)
                ds = self._set(red, [backend._work, backend._ranges, partials, backend._ctl, sums])
                steps.append([(red, ds, (0, 0, n_seg, n_sums), n_seg)])
                self.sum_outputs.append((sums, n_sums))
                last_sums = (sums, n_sums)
        self._steps = steps
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

    def _record(self, upload, upload_params, download, timed=False):
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
        for step in self._steps:
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

    def launch(self, upload, upload_params, download):
        timed = self.ctx.timestamps and self.ctx.timestamp_bits > 0
        key = (upload, upload_params, download, timed)
        with self.ctx.lock:        # the command pool and the queue are shared by the device's optimizers
            if timed and self._queries is None:
                self._queries = vk.vkCreateQueryPool(self.ctx.device, vk.VkQueryPoolCreateInfo(
                    queryType=vk.VK_QUERY_TYPE_TIMESTAMP, queryCount=4), None)
            if key not in self._cmds:
                self._cmds[key] = self._record(*key)
            self.ctx.submit(self._cmds[key][1])
            if timed:
                self._read_timestamps()

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
