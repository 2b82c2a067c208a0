"""The device context: instance, device picking, queue, command pool and fence under the context's
lock, pipelines and the on-disk pipeline cache, validation messages, and the process's life (fork,
interpreter exit).  Module-level state (contexts, live backends, the fork generation) lives here only."""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import vulkan as vk       # the PyPI binding (absolute import: not this package)

from .. import VulkanUnavailable

if TYPE_CHECKING:
    from .backend import VulkanBackend

ffi = vk.ffi
SPIRV = Path(__file__).resolve().parent.parent.parent / "spirv"
ROW_CPU, ROW_GPU = 16384, 4096     # elements per workgroup: fewer, larger rows suit CPU drivers
PUSH_BYTES = 16               # struct Dispatch in common.glsli: 4 x uint
FRAME_BINDINGS = 4            # work, table, partials, ctl: see common.glsli

validation_messages: list[str] = []


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
