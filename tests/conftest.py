"""Shared fixtures: every optimizer test runs on both backends.

The ``backend`` fixture is "numpy" or "vulkan"; ``opt_kwargs`` are the matching constructor
arguments.  Vulkan tests run on the device named by HYPEROPT_TEST_DEVICE (default "vulkan:cpu", i.e.
lavapipe).  Where no Vulkan device exists they are skipped, unless HYPEROPT_REQUIRE_VULKAN=1 (CI),
which turns a skip into a failure and also fails the session if no Vulkan test ran.  With
HYPEROPT_VULKAN_VALIDATION=1 any validation-layer message fails the test that caused it.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # benchmarks.tasks

GOLDENS = Path(__file__).resolve().parent / "goldens"   # reference trajectories (see its README)
DEVICE = os.environ.get("HYPEROPT_TEST_DEVICE", "vulkan:cpu")
REQUIRE = os.environ.get("HYPEROPT_REQUIRE_VULKAN") == "1"
_vulkan_tests_passed = 0
_vulkan_nodes: set[str] = set()      # tests that asked for the Vulkan backend


def vulkan_available() -> str | None:
    """None if a Vulkan device for the tests exists, else the reason."""
    try:
        from hyperopt.backends.vulkan import VulkanUnavailable, context
    except OSError as exc:
        return f"no Vulkan loader ({exc})"
    try:
        context(DEVICE)
    except VulkanUnavailable as exc:
        return str(exc)
    return None


@pytest.fixture(params=["numpy", "vulkan"])
def backend(request):
    if request.param == "vulkan":
        _require_vulkan(request)
    return request.param


@pytest.fixture
def vulkan_device(request):
    """The Vulkan device name for tests that need the device itself (skips or fails like ``backend``)."""
    _require_vulkan(request)
    return DEVICE


def _require_vulkan(request):
    reason = vulkan_available()
    if reason is not None:
        if REQUIRE:
            pytest.fail(f"HYPEROPT_REQUIRE_VULKAN=1 but {reason}")
        pytest.skip(reason)
    _vulkan_nodes.add(request.node.nodeid)


@pytest.fixture
def opt_kwargs(backend):
    return {"use_gpu": False} if backend == "numpy" else {"use_gpu": True, "device": DEVICE}


@pytest.fixture(autouse=True)
def _no_validation_messages():
    try:
        from hyperopt.backends import vulkan
    except OSError:
        yield
        return
    vulkan.validation_messages.clear()
    yield
    messages = list(vulkan.validation_messages)
    vulkan.validation_messages.clear()
    assert not messages, "Vulkan validation layer reported:\n" + "\n".join(messages)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_runtest_logreport(report):
    global _vulkan_tests_passed
    if report.when == "call" and report.passed and (report.nodeid in _vulkan_nodes or "test_vulkan_backend.py" in report.nodeid):
        _vulkan_tests_passed += 1


def pytest_sessionfinish(session, exitstatus):
    if REQUIRE and session.testscollected and _vulkan_tests_passed == 0:
        session.exitstatus = 1
        print("\nHYPEROPT_REQUIRE_VULKAN=1 but no Vulkan test passed", file=sys.stderr)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"Vulkan-backed tests passed: {_vulkan_tests_passed}")
