"""Shared fixtures: every optimizer test runs on both backends.

The ``backend`` fixture is "numpy" or "vulkan"; ``opt_kwargs`` are the matching constructor
arguments.  Vulkan tests run on the device named by HYPEROPT_TEST_DEVICE (default "vulkan:cpu", i.e.
lavapipe).  Where no Vulkan device exists they are skipped, unless HYPEROPT_REQUIRE_VULKAN=1 (CI),
which turns a skip into a failure and also fails the session if no Vulkan test ran.  With
HYPEROPT_VULKAN_VALIDATION=1 any validation-layer message fails the test that caused it.

Proof of what ran (``pytest_runtest_call`` below): a test that uses the Vulkan backend (the
``backend`` fixture's "vulkan" param, ``vulkan_device``, or test_vulkan_backend.py) fails unless
Vulkan dispatches ran during it (``hyperopt.backends.launch_counts``) and every optimizer it built
for the test device reports a ``vulkan:`` backend; a "numpy"-param test fails unless the CPU
kernels (HYPEROPT_CPU_KERNELS, else what a CPU optimizer reports) ran and its CPU optimizers say so.
"Vulkan-backed tests passed" counts the tests that passed *with* that proof.  A test that
legitimately launches nothing (validation errors, layout checks) says so with
``@pytest.mark.no_launch``; the optimizers it builds are still checked.  In CI
(HYPEROPT_REQUIRE_VULKAN=1 or CI set) a test module whose every test was skipped fails the session.
"""
import os
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # benchmarks.tasks

GOLDENS = Path(__file__).resolve().parent / "goldens"   # reference trajectories (see its README)
DEVICE = os.environ.get("HYPEROPT_TEST_DEVICE", "vulkan:cpu")
REQUIRE = os.environ.get("HYPEROPT_REQUIRE_VULKAN") == "1"
_vulkan_tests_passed = 0
_vulkan_nodes: set[str] = set()      # tests that asked for the Vulkan backend
_proven: set[str] = set()            # tests whose Vulkan launches were seen
STRICT = REQUIRE or bool(os.environ.get("CI"))
STAGING = os.environ.get("HYPEROPT_VULKAN_STAGING") == "1"
ONLY_VULKAN = os.environ.get("HYPEROPT_ONLY_VULKAN") == "1"   # run just the Vulkan tests (CI's staging pass)
ONLY_CPU = os.environ.get("HYPEROPT_ONLY_CPU") == "1"         # run just the others (CI's NumPy-twins pass)
_module_outcomes: dict[str, list[str]] = {}


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


# ---------------------------------------------------------------- proof of what ran
def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_fallback: the test checks a documented move to the CPU path "
                            "(its Vulkan-requested optimizers are expected to report a CPU backend)")
    config.addinivalue_line("markers", "no_launch: the test runs no kernel on purpose (its optimizers "
                                       "are still checked for the backend they report)")


def pytest_collection_modifyitems(config, items):
    if ONLY_VULKAN or ONLY_CPU:
        keep = [it for it in items if uses_vulkan(it) == ONLY_VULKAN]
        config.hook.pytest_deselected(items=[it for it in items if uses_vulkan(it) != ONLY_VULKAN])
        items[:] = keep


def cpu_kernels() -> str:
    """The CPU kernel implementation a CPU optimizer must run: HYPEROPT_CPU_KERNELS, else what one reports."""
    want = os.environ.get("HYPEROPT_CPU_KERNELS")
    if want:
        return want
    global _cpu_probe
    if _cpu_probe is None:
        from hyperopt import AdamW
        _cpu_probe = AdamW([np.zeros(2, np.float32)], use_gpu=False).backend
    return _cpu_probe


_cpu_probe = None
_built: list = []        # (weakref to optimizer, use_gpu, device) built during the current test


def _track_optimizers():
    from hyperopt import optimizer
    if getattr(optimizer.Optimizer.__init__, "_tracked", False):
        return
    real = optimizer.Optimizer.__init__
    # Compiled under the package's file name: warnings attributed to the caller's line (which skip
    # the package's own frames) must skip this wrapper too, or they would point here.
    scope = {"real": real, "_built": _built, "weakref": weakref}
    exec(compile("def init(self, *args, **kwargs):\n"
                 "    real(self, *args, **kwargs)\n"
                 "    _built.append((weakref.ref(self), self.backend, kwargs.get('use_gpu'), kwargs.get('device')))\n",
                 optimizer.__file__, "exec"), scope)
    init = scope["init"]
    init._tracked = True
    optimizer.Optimizer.__init__ = init


def uses_vulkan(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return (params.get("backend") == "vulkan" or "vulkan_device" in getattr(item, "fixturenames", ())
            or item.path.name == "test_vulkan_backend.py")


def _proof_failures(item, before) -> list[str]:
    from hyperopt.backends import launch_counts
    cpu = cpu_kernels()
    ran = {k: launch_counts[k] - before.get(k, 0) for k in launch_counts}
    params = getattr(getattr(item, "callspec", None), "params", {})
    problems = []
    no_launch = item.get_closest_marker("no_launch") is not None
    fallback = item.get_closest_marker("cpu_fallback") is not None
    for _, name, use_gpu, device in ([] if fallback else _built):
        if use_gpu is True and device == DEVICE and not name.startswith("vulkan:"):
            problems.append(f"an optimizer built with use_gpu=True, device={DEVICE!r} reports backend {name!r}")
        if use_gpu is False and params.get("backend") == "numpy" and name != cpu:
            problems.append(f"a CPU optimizer reports backend {name!r}, expected {cpu!r}")
    if uses_vulkan(item) and not no_launch:
        built_vulkan = [n for _, n, *_ in _built if n.startswith("vulkan:")]
        if STAGING:
            for ref, name, *_ in _built:
                opt = ref()
                ctx = getattr(getattr(opt, "_backend", None), "ctx", None)
                if name.startswith("vulkan:") and ctx is not None and not ctx.staging:
                    problems.append("HYPEROPT_VULKAN_STAGING=1 but an optimizer ran without the staging path")
        if _built and not built_vulkan:
            problems.append("a Vulkan test built optimizers but none reports a vulkan: backend")
        if ran.get("vulkan", 0) == 0:
            problems.append("a Vulkan test ran no Vulkan dispatch (launch_counts['vulkan'] unchanged)")
    elif params.get("backend") == "numpy" and not no_launch and ran.get(cpu, 0) == 0:
        problems.append(f"a CPU-backend test ran no {cpu} kernel (launch_counts[{cpu!r}] unchanged; ran: {ran})")
    return problems


_before: dict = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    from hyperopt.backends import launch_counts
    cpu_kernels()
    _track_optimizers()
    _built.clear()                 # fixtures' optimizers count as the test's own
    _before.clear()
    _before.update(launch_counts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield            # raises if the test failed: nothing more to prove then
    problems = _proof_failures(item, _before)
    _built.clear()
    if problems:
        pytest.fail("proof of the backend that ran failed:\n  " + "\n  ".join(problems), pytrace=False)
    if uses_vulkan(item) and item.get_closest_marker("no_launch") is None:
        _proven.add(item.nodeid)
    return result


def pytest_runtest_logreport(report):
    global _vulkan_tests_passed
    if report.when == "call" and report.passed and report.nodeid in _proven:
        _vulkan_tests_passed += 1
    module = report.nodeid.split("::")[0]
    if report.when == "call" or report.skipped:
        _module_outcomes.setdefault(module, []).append("skipped" if report.skipped else report.outcome)


def pytest_collectreport(report):
    if report.skipped and report.nodeid.endswith(".py"):      # pytest.skip(allow_module_level=True)
        _module_outcomes.setdefault(report.nodeid, []).append("skipped")


def pytest_sessionfinish(session, exitstatus):
    if REQUIRE and not ONLY_CPU and session.testscollected and _vulkan_tests_passed == 0:
        session.exitstatus = 1
        print("\nHYPEROPT_REQUIRE_VULKAN=1 but no Vulkan test passed", file=sys.stderr)
    whole = sorted(m for m, outcomes in _module_outcomes.items() if outcomes and set(outcomes) == {"skipped"})
    if STRICT and whole:
        session.exitstatus = 1
        print("\nevery test of these modules was skipped: " + ", ".join(whole), file=sys.stderr)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"Vulkan-backed tests passed: {_vulkan_tests_passed} "
                                f"(each with Vulkan dispatches seen during the test)")
