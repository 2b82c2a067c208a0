"""Plant realistic bugs one at a time and check that the test suite catches each (not run in CI: slow).

    python tools/mutation.py                 # every mutant, Markdown table on stdout
    python tools/mutation.py -k hyster       # the mutants whose id contains "hyster"
    python tools/mutation.py --list          # ids and descriptions only

Each mutant is one exact text replacement in one file of a scratch copy of the working tree (the
working tree itself is never touched).  A mutant of a shader is recompiled (shaders/compile.py)
before its tests run.  Then the mutant's own test selection runs with HYPEROPT_REQUIRE_VULKAN=1 and a
time limit: "killed" if it fails, "SURVIVED" if it passes, "timeout" if it runs past the limit (counted
as killed: a hang is caught), "baseline fails" if the selection fails even without the mutant, "n/a" if the text to replace is not in the file any more (the code
moved on: update the mutant).  The exit status is 1 when any mutant survived or could not be
planted or tested ("n/a", "baseline fails"): a mutant that tests nothing must not pass as killed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# Test selections (pytest arguments), kept small: 2 shared cores.
ADAMW = ["tests/test_adamw.py", "tests/test_options.py", "-k", "AdamW or adamw or torch"]
HYST = ["tests/test_hysterograd.py", "tests/test_options.py", "tests/test_mutation_survivors.py", "-k", "HIOptimizer or hyster or golden or clip"]
HYPER = ["tests/test_hypergradient.py", "tests/test_options.py", "-k", "Hypergradient or golden or hyper"]
HL = ["tests/test_hamiltonian.py", "tests/test_options.py", "-k", "HL or golden or costate or local"]
NAT = ["tests/test_natural_grad.py", "tests/test_options.py", "-k", "HCNaturalGrad or hash or golden or natural"]
ASGM = ["tests/test_autosgm.py", "tests/test_schedules.py", "tests/test_windows_reference.py"]
STATE = ["tests/test_state_dict.py", "tests/test_adamw.py", "tests/test_hysterograd.py", "tests/test_hamiltonian.py",
         "-k", "state or resume or load"]
CORE = ["tests/test_adamw.py", "tests/test_state_dict.py"]
# The fused bodies against their NumPy twins, bit for bit (tests/test_fused.py), one kernel each.  A
# leading NAME=value item goes to the environment: these selections have no Vulkan test, so the
# session's "no Vulkan test passed" check (HYPEROPT_REQUIRE_VULKAN=1) is turned off by HYPEROPT_ONLY_CPU.
CPU_ONLY = "HYPEROPT_ONLY_CPU=1"
# The NumPy twins run only where the CPU path uses them: the default CPU kernels are the fused ones.
TWINS = "HYPEROPT_CPU_KERNELS=numpy"
FUSED_ADAMW = [CPU_ONLY, "tests/test_fused.py", "-k", "kernel_bits and adamw_update and f32"]
FUSED_DOT = [CPU_ONLY, "tests/test_fused.py", "-k", "kernel_bits and reduce_dot and f32"]
FUSED_HYST = [CPU_ONLY, "tests/test_fused.py", "-k", "kernel_bits and natural_gradient and f32"]
FUSED_HL = [CPU_ONLY, "tests/test_fused.py", "-k", "kernel_bits and hamiltonian_euler and f32"]
FUSED_HYPER = [CPU_ONLY, "tests/test_fused.py", "-k", "kernel_bits and hypergradient_direction and f32"]
FUSED_CONTROL = [CPU_ONLY, "tests/test_fused.py", "-k", "control_bodies"]
FUSED_FOLDED_CHECK = [CPU_ONLY, "tests/test_fused.py", "-k", "rides"]
SELECT = ["tests/test_adamw.py", "tests/test_vulkan_backend.py", "tests/test_options.py", "-k", "AdamW or submit or adamw"]

# (id, file, old text, new text, tests, what the bug is)
MUTANTS = [
    # ---- NumPy twins
    ("twin-adamw-eps-order", "hyperopt/kernels/adamw.py", "    denom /= bias_correction2_sqrt\n    denom += eps",
     "    denom += eps\n    denom /= bias_correction2_sqrt", [TWINS, *ADAMW], "eps added before the bias correction"),
    ("twin-adamw-amsgrad-min", "hyperopt/kernels/adamw.py", "np.maximum(max_exp_avg_sq, exp_avg_sq",
     "np.minimum(max_exp_avg_sq, exp_avg_sq", [TWINS, *ADAMW], "amsgrad keeps the minimum"),
    ("twin-hyst-clip-eps", "hyperopt/kernels/hysterograd.py", "_CLIP_EPS = _F32(1e-6)", "_CLIP_EPS = _F32(1e-3)",
     [TWINS, *HYST], "clip epsilon 1e-3 instead of 1e-6"),
    ("twin-hyst-energy-eps", "hyperopt/kernels/hysterograd.py", "_ENERGY_EPS = _F32(1e-8)",
     "_ENERGY_EPS = _F32(0.0)", [TWINS, *HYST], "adaptive barrier without its epsilon"),
    ("twin-hyst-strict", "hyperopt/kernels/hysterograd.py", "r[CTL_LIQUID] = 1.0 if n_eff > threshold else 0.0",
     "r[CTL_LIQUID] = 1.0 if n_eff >= threshold else 0.0", [TWINS, *HYST], "Liquid when n_eff == h (upstream: strict)"),
    ("twin-hyst-cooling-after", "hyperopt/kernels/hysterograd.py", "temp = r[CTL_TEMP] * cooling",
     "temp = r[CTL_TEMP]", [TWINS, *HYST], "temperature never cools"),
    ("twin-hl-order", "hyperopt/kernels/hamiltonian.py", "    if costate_first:\n", "    if not costate_first:\n",
     [TWINS, *HL], "local / non-local orders swapped"),
    ("twin-hash-column-bit", "hyperopt/kernels/natural_grad.py", "(h >> np.uint32(int(bit0) + j))",
     "(h >> np.uint32(int(bit0) + j + 1))", [TWINS, *NAT], "hash projection reads the next bit"),
    ("twin-hash-sign", "hyperopt/kernels/natural_grad.py", "out[j] = 1.0 - 2.0 * bit.astype(np.float32)",
     "out[j] = 2.0 * bit.astype(np.float32) - 1.0", [TWINS, *NAT], "hash signs flipped (P -> -P)"),
    ("twin-autosgm-eps-inside", "hyperopt/kernels/autosgm.py", "        np.sqrt(d, out=d)\n        d += eps",
     "        d += eps\n        np.sqrt(d, out=d)", [TWINS, *ASGM], "AutoSGM's eps inside the square root"),
    # ---- shaders (recompiled)
    ("glsl-adamw-amsgrad-old-v", "shaders/adamw-update.glsl", "v_new = max(v_max, v_new);", "v_new = max(v_max, v);",
     ADAMW, "amsgrad compares with the previous v"),
    ("glsl-adamw-eps-inside", "shaders/adamw-update.glsl", "sqrt(v_new) / s.bias_correction2_sqrt + s.eps",
     "sqrt(v_new / s.bias_correction2_sqrt + s.eps)", ADAMW, "eps under the square root"),
    ("glsl-hyst-clip-eps", "shaders/hysteresis-control.glsl", "s.clip / (n + RATIO(1.0, 1000000.0))", "s.clip / (n + RATIO(1.0, 10000.0))",
     HYST, "HysteroGrad clip epsilon in the shader"),
    ("glsl-hyst-energy-eps", "shaders/hysteresis-control.glsl", "h = h * (energy + RATIO(1.0, 100000000.0));", "h = h * energy;",
     HYST, "adaptive barrier epsilon dropped in the shader"),
    ("glsl-hl-order", "shaders/hamiltonian-euler.glsl", "(first ? updated : p)", "(first ? p : updated)",
     HL, "costate order swapped in the shader"),
    ("glsl-hash-clip-one-sided", "shaders/natural-grad-hash-expand.glsl", "p = clamp(p, -s.clip, s.clip);",
     "p = min(p, s.clip);", NAT, "hash expand clips only from above"),
    ("glsl-hyper-direction-eps", "shaders/hypergradient-direction.glsl",
     "(sqrt(v / s.bias_correction2) + s.eps)", "(sqrt(v / s.bias_correction2 + s.eps))", HYPER,
     "hypergradient direction with eps inside the sqrt"),
    ("glsl-autosgm-eps-inside", "shaders/autosgm-front.glsli", "d = sqrt(q * s.moment_scale) + s.eps;",
     "d = sqrt(q * s.moment_scale + s.eps);", ASGM, "AutoSGM shader eps inside the sqrt"),
    # ---- fused CPU bodies (numba; a changed source recompiles)
    ("fused-adamw-bias2", "hyperopt/kernels/adamw.py", "denom = np.sqrt(v) / bias_correction2_sqrt + eps",
     "denom = np.sqrt(v) + eps", FUSED_ADAMW, "fused AdamW without the second moment's bias correction"),
    ("fused-lanes-add-lane", "hyperopt/kernels/core.py",
     "acc += terms[k, group * LANES + j]",
     "acc += terms[k, group * LANES + (j + 1) % LANES]", FUSED_DOT,
     "fused sums add each term into the next lane (sum order differs from the twin)"),
    ("fused-hyst-metric-assoc", "hyperopt/kernels/hysterograd.py", "m = metric[i] * beta + (metric_gain * g) * g",
     "m = metric[i] * beta + metric_gain * (g * g)", FUSED_HYST,
     "fused HysteroGrad metric update reassociated (rounding differs from the twin)"),
    ("fused-hyst-norm-f32", "hyperopt/kernels/hysterograd.py",
     "c = np.float64(g / (metric.dtype.type(metric_root_fused(m, metric_power)) + eps))",
     "c = g / (metric.dtype.type(metric_root_fused(m, metric_power)) + eps)", FUSED_HYST,
     "fused HysteroGrad squares the step in float32 before the float64 sum"),
    ("fused-hl-order", "hyperopt/kernels/hamiltonian.py", "        if costate_first != 0:\n",
     "        if costate_first == 0:\n", FUSED_HL, "fused HL: local / non-local costate orders swapped"),
    ("fused-hyper-direction-bc1", "hyperopt/kernels/hypergradient.py",
     "d = (exp_avg[i] / bias_correction1) / (np.sqrt(second[i] / bias_correction2) + eps)",
     "d = exp_avg[i] / (np.sqrt(second[i] / bias_correction2) + eps)", FUSED_HYPER,
     "fused hypergradient direction without the first moment's bias correction"),
    ("fused-check-nan-only", "hyperopt/backends/numba_backend.py", "ok &= abs(g[j]) <= limit",
     "ok &= abs(g[j]) == abs(g[j])", [CPU_ONLY, "tests/test_fused.py", "-k", "bad_element"],
     "the compiled gradient check lets infinities and overflowing squares through"),
    ("fused-block-order", "hyperopt/backends/numba_backend.py",
     "    for w in range(items.shape[0]):\n        for k in range(partials.shape[1]):",
     "    for w in range(items.shape[0] - 1, -1, -1):\n        for k in range(partials.shape[1]):",
     FUSED_DOT, "block partials added last block first (sum order differs from the twin)"),
    ("fused-pair-short", "hyperopt/backends/numba_backend.py", "_item2(lo, hi, addresses2[i]",
     "_item2(lo, hi - np.uint64(1), addresses2[i]", [CPU_ONLY, "tests/test_fused.py", "-k", "optimizer_bits and Hypergradient and f32"],
     "the second kernel of a fused pair skips the last element of each item"),
    ("fused-piece-sums", "hyperopt/backends/numba_backend.py",
     "self.item = CHUNK if any(kernel.sums for kernel in self.kernels) else PIECE",
     "self.item = PIECE", FUSED_DOT,
     "kernels with sums run in items finer than the blocks their sums are defined on"),
    ("fused-gradient-column-once", "hyperopt/backends/numba_backend.py",
     "if grad_column is not None and filled_by is not gradients:",
     "if grad_column is not None and filled_by is None:",
     [CPU_ONLY, "tests/test_fused.py", "-k", "optimizer_bits and AdamW-f32"],
     "the gradients' addresses are filled in once, so later steps read the first step's arrays"),
    ("fused-stale-gradient-copy", "hyperopt/backends/numba_backend.py",
     "return not self.keep and grads.keys() == arrays.keys()", "return grads.keys() == arrays.keys()",
     [CPU_ONLY, "tests/test_fused.py", "-k", "refilled"],
     "a refilled gradient that runs on a C-order copy keeps the first step's copy"),
    ("fused-folded-check-dropped", "hyperopt/backends/numba_backend.py",
     "bad[w] = not _within(g, lo, hi, limit)", "bad[w] = False", FUSED_FOLDED_CHECK,
     "the gradient check folded into a reading pass checks nothing"),
    ("fused-hyper-ema-placeholder", "hyperopt/kernels/hypergradient.py",
     "        if with_surprise != 0:\n            for i in range(start, stop):",
     "        if True:\n            for i in range(start, stop):",
     FUSED_HYPER, "the fused direction moves the EMA on without the surprise signal (into its placeholder)"),
    ("host-hyper-ema-restart", "hyperopt/hypergradient.py", 'if self._param_state.get(i, {}).get("has_ema"):',
     "if False:", HYPER, "the surprise signal's gradient EMA restarts at the gradient every step"),
    ("fused-hyst-control-clip-eps", "hyperopt/kernels/hysterograd.py",
     "ratio = clip / (n + _CLIP_EPS)", "ratio = clip / n", FUSED_CONTROL,
     "compiled hysteresis control clips without the norm's epsilon"),
    ("fused-hyst-control-strict", "hyperopt/kernels/hysterograd.py",
     "ctl[r + CTL_LIQUID] = 1.0 if n_eff > threshold else 0.0", "ctl[r + CTL_LIQUID] = 1.0 if n_eff >= threshold else 0.0",
     HYST, "compiled hysteresis control: Liquid when n_eff == h (upstream: strict)"),
    ("fused-autosgm-control-pole", "hyperopt/kernels/autosgm.py",
     "ctl[base + CTL_LR_NUM] = np.float32(LR_NUM_POLE) * y", "ctl[base + CTL_LR_NUM] = y", FUSED_CONTROL,
     "compiled AutoSGM control keeps the numerator's filter state unscaled"),
    # ---- host control logic
    ("host-hyst-group-clip", "hyperopt/hysterograd.py", 'group["lr"], group["grad_clip"] or 0.0,',
     'group["lr"], self.defaults["grad_clip"] or 0.0,', HYST, "a group's own grad_clip ignored"),
    ("host-hyst-group-cooling", "hyperopt/hysterograd.py", '                           group["cooling_rate"], beta,',
     '                           self.defaults["cooling_rate"], beta,', HYST, "a group's own cooling_rate ignored"),
    ("host-autosgm-nudge-kept", "hyperopt/autosgm.py", "                    p[small] = old\n",
     "                    pass\n", ["tests/test_step_semantics.py", "-k", "failing_first_step"],
     "a failed first AutoSGM step leaves its nudge in the caller's arrays"),
    ("host-hyper-total-slice-end", "hyperopt/hypergradient.py", "sums[first:last + 1].sum(axis=0)",
     "sums[first:last].sum(axis=0)", [CPU_ONLY, "tests/test_hypergradient.py", "-k", "group_totals"],
     "a group's sums leave out its last parameter"),
    ("host-hyper-total-one-row", "hyperopt/hypergradient.py", "return sums[first] + 0.0 if first == last",
     "return sums[first].copy() if first == last", [CPU_ONLY, "tests/test_hypergradient.py", "-k", "group_totals"],
     "a one-parameter group's sums keep a -0.0 that NumPy's sum turns into +0.0"),
    ("host-hyper-sign", "hyperopt/hypergradient.py", 'lr = lr + group["beta_hyper"] * h',
     'lr = lr - group["beta_hyper"] * h', HYPER, "hypergradient step with the wrong sign"),
    ("host-hyper-max-change", "hyperopt/hypergradient.py", "_MAX_LR_CHANGE = 0.1", "_MAX_LR_CHANGE = 0.2",
     HYPER, "Auto variant's lr may move 20% per step"),
    ("host-nat-hash-scale", "hyperopt/natural_grad.py", 'coef[gi] = -float(group["lr"]) * v * scale',
     'coef[gi] = -float(group["lr"]) * v', NAT, "hash expand without 1/sqrt(D)"),
    ("host-nat-cg-tol", "hyperopt/natural_grad.py", "if math.sqrt(rho_new) < tol:", "if rho_new < tol:",
     NAT, "CG stops on the squared residual"),
    ("host-hl-decay", "hyperopt/hamiltonian.py", "return 1.0 - decay, -delta * group[\"flip\"]",
     "return 1.0 - delta * decay, -delta * group[\"flip\"]", HL, "costate decay scaled by delta"),
    ("host-adamw-bias1", "hyperopt/adamw.py", "-lr / (1 - beta1 ** t)", "-lr / (1 - beta1 ** (t + 1))",
     ADAMW, "bias correction one step ahead"),
    # ---- validation
    ("valid-shape", "hyperopt/optimizer.py", "if g.shape != p.shape:", "if g.size != p.size:", CORE,
     "a gradient of another shape with the same size is accepted"),
    ("valid-overflow", "hyperopt/optimizer.py", "            return True\n    return bool(np.abs(a).max() <= _square_limit(a.dtype))\n",
     "            return True\n    return False\n", CORE, "a large finite gradient is refused as non-finite"),
    ("valid-once", "hyperopt/optimizer.py", "            same = snapshot == seen", "            same = seen is not None",
     ["tests/test_hypergradient.py", "tests/test_adamw.py", "-k", "user_edits or bad_input_leaves"],
     "groups are checked at the first step only: a value written between steps goes unchecked"),
    ("valid-beta-open", "hyperopt/adamw.py", 'check_range("beta", b, 0, 1, high_open=True,',
     'check_range("beta", b, 0, 1, high_open=False,', ADAMW, "beta = 1 accepted"),
    # ---- state_dict
    ("state-rollback", "hyperopt/optimizer.py", "                self._load_state(self._check_state_dict(backup))\n",
     "                pass\n",
     STATE, "a failed load_state_dict is not rolled back"),
    ("state-hash-step", "hyperopt/natural_grad.py", 'self._hash_step = state_dict["hash_step"]',
     "self._hash_step = 0", ["tests/test_natural_grad.py", "tests/test_mutation_survivors.py", "-k", "state or resume or load"], "hash projection loses its stream position on load"),
    ("state-hash-step-process", "hyperopt/natural_grad.py", 'self._hash_step = state_dict["hash_step"]',
     "self._hash_step = 0", ["tests/test_state_dict_process.py", "-k", "hash"],
     "hash projection loses its stream position on load (seen by the new-process state_dict resume)"),
    ("state-nat-rng-process", "hyperopt/natural_grad.py",
     '        super()._load_state(state_dict)\n        self._rng.bit_generator.state = state_dict["rng"]\n',
     "        super()._load_state(state_dict)\n", ["tests/test_state_dict_process.py", "-k", "HCNaturalGrad"],
     "the numpy projection's generator not restored on load (seen by the new-process state_dict resume)"),
    ("state-hyst-started", "hyperopt/hysterograd.py", "                rec[CTL_STARTED] = 1",
     "                rec[CTL_STARTED] = 0", STATE, "loaded HysteroGrad group state is overwritten"),
    ("state-hl-costate", "hyperopt/hamiltonian.py", 'p_xi[...] = e["neuron_costate"]', "pass", STATE,
     "HL's neuron costate not restored"),
    # ---- schedules
    ("sched-epoch", "hyperopt/schedules.py", "return (int(t) - 1) // self.spe + 1", "return int(t) // self.spe + 1",
     ASGM, "epoch off by one"),
    ("sched-flat-top", "hyperopt/schedules.py", "if f < self.e or self.e == 1:", "if f <= self.e or self.e == 1:",
     ASGM, "flat top one point longer"),
    ("sched-floor", "hyperopt/schedules.py", "        y *= 1 - self.x\n        y += self.x",
     "        y *= 1 - self.x", ASGM, "window floor x forgotten"),
    # ---- benchmark
    ("bench-paired-inverted", "benchmarks/run.py", "ratios.append((time.perf_counter() - t1) / (t1 - t0))",
     "ratios.append((t1 - t0) / (time.perf_counter() - t1))", [CPU_ONLY, "tests/test_benchmark_cli.py", "-k", "paired"],
     "the paired multiple of AdamW is AdamW's over the optimizer's"),
    # ---- backend selection and the device path
    ("select-silent-cpu", "hyperopt/backends/__init__.py", "    if use_gpu is False or device == \"cpu\":\n", "    if True:\n", SELECT,
     "use_gpu=True silently runs the CPU path"),
    ("vulkan-no-param-upload", "hyperopt/backends/vulkan/backend.py", "                view[slices[i]] = params[i].reshape(-1)",
     "                pass", ["tests/test_autosgm.py", "-k", "edits"],
     "the parameter upload dropped on Vulkan (in-place edits lost)"),
]


def _copy_tree(dest: Path):
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    shutil.copytree(ROOT / "hyperopt" / "spirv", dest / "hyperopt" / "spirv", dirs_exist_ok=True)


def _env_and_args(work: Path, tests):
    """The environment and pytest arguments of a selection (leading NAME=value items set variables)."""
    env = dict(os.environ, PYTHONPATH=str(work), HYPEROPT_REQUIRE_VULKAN="1", HYPEROPT_VULKAN_VALIDATION="1",
               HYPEROPT_SKIP_HUGE="1")
    tests = list(tests)
    while tests and "=" in tests[0] and not tests[0].startswith("-"):
        name, value = tests.pop(0).split("=", 1)
        env[name] = value
    return env, tests


def baseline(work: Path, tests, timeout: float) -> bool:
    """Whether a test selection passes on the unmutated tree (else its kills would mean nothing)."""
    env, tests = _env_and_args(work, tests)
    try:
        return subprocess.run([PY, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=work, env=env,
                              capture_output=True, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def run_one(work: Path, mutant, timeout: float) -> tuple[str, float, str]:
    mid, rel, old, new, tests, _ = mutant
    path = work / rel
    text = path.read_text()
    if text.count(old) != 1:
        return "n/a", 0.0, f"text found {text.count(old)} times"
    spirv = work / "hyperopt" / "spirv"
    saved_spirv = {p.name: p.read_bytes() for p in spirv.iterdir()} if rel.startswith("shaders/") else None
    path.write_text(text.replace(old, new))
    env, tests = _env_and_args(work, tests)
    t0 = time.monotonic()
    try:
        if saved_spirv is not None:
            done = subprocess.run([PY, "shaders/compile.py"], cwd=work, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                return "killed", time.monotonic() - t0, "does not compile"
        try:
            done = subprocess.run([PY, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=work,
                                  env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", time.monotonic() - t0, ""
        out = done.stdout.splitlines()
        failed = [l for l in out if l.startswith("FAILED")]
        summary = [l for l in out if (" passed" in l or " failed" in l) and not l.startswith("Vulkan-backed")]
        if done.returncode == 0:
            return "SURVIVED", time.monotonic() - t0, summary[-1] if summary else ""
        if done.returncode in (4, 5):          # usage error / nothing collected: the selection is broken
            return "error", time.monotonic() - t0, (done.stdout + done.stderr)[-300:]
        return "killed", time.monotonic() - t0, (failed or summary or [""])[0][:120]
    finally:
        path.write_text(text)
        if saved_spirv is not None:
            for name, data in saved_spirv.items():
                (spirv / name).write_bytes(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="run the mutants whose id contains this text")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant's tests")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if args.k in m[0]]
    if args.list:
        for m in chosen:
            print(f"{m[0]:28} {m[1]:40} {m[5]}")
        return 0
    rows, survived = [], 0
    with tempfile.TemporaryDirectory(prefix="hyperopt-mutants-") as tmp:
        work = Path(tmp)
        _copy_tree(work)
        clean: dict[tuple, bool] = {}
        for m in chosen:
            key = tuple(m[4])
            if key not in clean:
                clean[key] = baseline(work, m[4], args.timeout)
            if not clean[key]:
                verdict, seconds, detail = "baseline fails", 0.0, "the selection fails without the mutant"
            else:
                verdict, seconds, detail = run_one(work, m, args.timeout)
            survived += verdict == "SURVIVED"
            rows.append((m[0], m[1], m[5], verdict, seconds, detail))
            print(f"{m[0]}: {verdict} ({seconds:.0f} s) {detail}", file=sys.stderr, flush=True)
    print("| mutant | file | planted bug | result | seconds | first failing test / note |")
    print("|---|---|---|---|---|---|")
    for mid, rel, what, verdict, seconds, detail in rows:
        print(f"| {mid} | {rel} | {what} | {verdict} | {seconds:.0f} | {detail.replace('|', '/')} |")
    untested = sum(r[3] in ("n/a", "baseline fails") for r in rows)
    print(f"\n{len(rows)} mutants, {survived} survived" + (f", {untested} not tested (n/a or baseline fails)"
                                                         if untested else ""))
    return 1 if survived or untested else 0


if __name__ == "__main__":
    sys.exit(main())
