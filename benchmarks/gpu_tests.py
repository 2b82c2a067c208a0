"""pytest plugin for gpu_check's test part: keep the Vulkan-backed tests and every golden replay.

A test is Vulkan-backed when it runs with ``backend="vulkan"``, asks for the ``vulkan_device``
fixture, or lives in test_vulkan_backend.py.  Golden replays (``golden`` in the test's name) are
kept on every backend; gpu_check's own tests are not.  Use: ``python -m pytest -p benchmarks.gpu_tests tests``.
"""


def selected(item) -> bool:
    if item.path.name == "test_gpu_check.py":      # gpu_check's own tests would run the check inside itself
        return False
    params = getattr(getattr(item, "callspec", None), "params", {})
    vulkan = (params.get("backend") == "vulkan" or "vulkan_device" in getattr(item, "fixturenames", ())
              or item.path.name == "test_vulkan_backend.py")
    return vulkan or "golden" in item.name


def pytest_collection_modifyitems(config, items):
    keep = [item for item in items if selected(item)]
    dropped = [item for item in items if not selected(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
