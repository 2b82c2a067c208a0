"""Every option, checked against a formula written here (not computed by the package).

Each case changes one constructor argument (every group gets it) or one per-group key (only the
second group gets it) from its default, runs a few steps on both backends, and compares parameters
(and group diagnostics) with a float64 reference written in this file from the class docstrings and
shared/SPEC.md.  Each case also checks that its reference moves away from the defaults' reference,
so an option the optimizer ignored could not pass.
"""
import math

import numpy as np
import pytest

import hyperopt

STEPS = 4
SHAPES_A = [(4, 3), (3,)]     # group 0
SHAPES_B = [(5,)]             # group 1: gets the per-group override
RTOL, ATOL = 2e-5, 1e-6       # float32 kernels against a float64 reference


def _data(seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES_A + SHAPES_B]
    scales = [3.0, 1.0, 0.3, 0.1]   # shrinking gradients: amsgrad's max differs from v
    grads = [[(c * rng.standard_normal(s)).astype(np.float32) for s in SHAPES_A + SHAPES_B] for c in scales]
    return params, grads


# ---------------------------------------------------------------------------------------- references
def ref_adamw(p, gs, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False):
    p = p.astype(np.float64)
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(gs, 1):
        g = -g.astype(np.float64) if maximize else g.astype(np.float64)
        p = p * (1 - lr * weight_decay)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax if amsgrad else v) / math.sqrt(1 - b2 ** t) + eps
        p = p - lr / (1 - b1 ** t) * m / denom
    return p


def ref_hysterograd_group(ps, gss, lr=1e-3, stiffening_factor=0.01, beta=0.99, epsilon=1e-7, cooling_rate=0.99,
                          initial_temp=1.0, metric_scale=1.0, adaptive_threshold=True, grad_clip=None,
                          hysteresis_scale=1.0, metric_power=0.5, schmitt=None):
    """One group through STEPS steps: parameters and the diagnostics after the last step."""
    ps = [p.astype(np.float64) for p in ps]
    G = [np.zeros_like(p) for p in ps]
    tau, T, E, liquid = 0.0, initial_temp, 0.0, True
    low, high = schmitt or (1.0, 1.0)
    for gs in gss:
        cs = []
        for j, g in enumerate(gs):
            g = g.astype(np.float64)
            G[j] = beta * G[j] + (1 - beta) * metric_scale * g * g
            cs.append(g / (G[j] ** metric_power + epsilon))
        n = math.sqrt(sum(float((c * c).sum()) for c in cs))
        k = min(1.0, grad_clip / (n + 1e-6)) if grad_clip else 1.0
        n_eff = k * n
        tau += lr * n_eff
        T *= cooling_rate
        E = beta * E + (1 - beta) * n_eff
        h = stiffening_factor * math.sqrt(tau) * (1 - min(max(T, 0.0), 1.0)) * hysteresis_scale
        if adaptive_threshold:
            h *= E + 1e-8
        liquid = n_eff > (low if liquid else high) * h
        if liquid:
            ps = [p - lr * k * c for p, c in zip(ps, cs)]
    return ps, {"tau": tau, "temperature": T, "energy": E, "norm": n_eff, "barrier": h, "clip_factor": k,
                "status": "Liquid" if liquid else "Frozen"}


def ref_hypergradient_group(ps, gss, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, beta_hyper=1e-7,
                            lr_min=1e-6, lr_max=1.0, log_scale=False, maximize=False):
    ps = [p.astype(np.float64) for p in ps]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    d = None
    b1, b2 = betas
    for t, gs in enumerate(gss, 1):
        gs = [(-g if maximize else g).astype(np.float64) for g in gs]
        if d is not None:
            h = sum(float((g * dd).sum()) for g, dd in zip(gs, d))
            if log_scale:
                lr = math.exp(min(max(math.log(lr) + beta_hyper * h, math.log(lr_min)), math.log(lr_max)))
            else:
                lr = lr + beta_hyper * h
            lr = min(max(lr, lr_min), lr_max)
        d = []
        for j, g in enumerate(gs):
            ps[j] = ps[j] * (1 - lr * weight_decay)
            m[j] = b1 * m[j] + (1 - b1) * g
            v[j] = b2 * v[j] + (1 - b2) * g * g
            mh, vh = m[j] / (1 - b1 ** t), v[j] / (1 - b2 ** t)
            ps[j] = ps[j] - lr * mh / (np.sqrt(vh) + eps)
            d.append(mh / (np.sqrt(vh) + eps))
    return ps, lr


def ref_hl_group(ws, gss, h_grads, delta=0.1, gamma=1.0, flip=-1.0, theta=0.1, beta=1.0,
                 reset_neuron_costate=False, reset_weight_costate=False, local=True):
    """HL over a stateless model; zero_grad after every step.  Returns weights, p_xi and H(V=0.7)."""
    s, th = -delta * flip, -flip * theta
    ws = [w.astype(np.float64) for w in ws]
    pw = [np.zeros_like(w) for w in ws]
    pxi = np.zeros(1)
    for gs, hg in zip(gss, h_grads):
        pxi = (1 - th) * pxi + s * hg
        for j, g in enumerate(gs):
            if local:
                ws[j] = ws[j] - delta * beta * pw[j]
                pw[j] = (1 - th) * pw[j] + s * g
            else:
                pw[j] = (1 - th) * pw[j] + s * g
                ws[j] = ws[j] - delta * beta * pw[j]
        if reset_neuron_costate:
            pxi = np.zeros(1)
        if reset_weight_costate:
            pw = [np.zeros_like(w) for w in ws]
    dh = np.array([0.5])
    return ws, pxi, gamma * 0.7 + float(dh @ pxi)


def _lowbias32(x):
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def ref_hash_projection(seed, step, segment, n, D):
    """P (n x D) of the hash projection, from the documented recipe: the sign of P[i, j] is bit
    j % 32 of lowbias32(i ^ lowbias32(stream)), stream = the low 24 bits of
    lowbias32(...lowbias32(lowbias32(seed) ^ lowbias32(step)) ^ lowbias32(segment)) ^ lowbias32(j // 32))."""
    P = np.empty((n, D))
    for j in range(D):
        h = _lowbias32(seed)
        for word in (step, segment, j // 32):
            h = _lowbias32(h ^ _lowbias32(word))
        mixed = _lowbias32(h & 0xFFFFFF)
        for i in range(n):
            P[i, j] = -1.0 if (_lowbias32(i ^ mixed) >> (j % 32)) & 1 else 1.0
    return P / math.sqrt(D)


def _cg(A, b, iters, tol=1e-6):
    x, r = np.zeros_like(b), b.copy()
    p, rho = r.copy(), float(r @ r)
    for _ in range(iters):
        Ap = A @ p
        alpha = rho / max(1e-12, float(p @ Ap))
        x, r = x + alpha * p, r - alpha * Ap
        rho_new = float(r @ r)
        if math.sqrt(rho_new) < tol:
            break
        p, rho = r + rho_new / max(1e-12, rho) * p, rho_new
    return x


def ref_natgrad(ps, gss, group_of, group_opts, projection, B, seed=12345):
    """HCNaturalGrad over all parameters (``group_of[j]``: parameter j's group; ``group_opts``: each
    group's options); ``B`` None: plain descent.  One projection stream over all parameters in
    order; each group solves its own D x D system."""
    ps = [p.astype(np.float64) for p in ps]
    opts = [{"lr": 5e-3, "fisher_damp": 1e-3, "cg_iters": 8, "clip": None, **o} for o in group_opts]
    rng = np.random.default_rng(seed)
    for step, gs in enumerate(gss, 1):
        gs = [g.astype(np.float64) for g in gs]
        if B is None:
            ps = [p - opts[group_of[j]]["lr"] * g for j, (p, g) in enumerate(zip(ps, gs))]
        else:
            Xc = B - B.mean(axis=0)
            C = Xc.T @ Xc / max(1, B.shape[0] - 1)
            D = C.shape[0]
            if projection == "numpy":
                Ps = [rng.normal(size=(g.size, D)) / math.sqrt(D) for g in gs]
            else:
                Ps = [ref_hash_projection(seed, step, j, g.size, D) for j, g in enumerate(gs)]
            vs = {}
            for gi, o in enumerate(opts):
                y = sum(Ps[j].T @ gs[j].reshape(-1) for j in range(len(ps)) if group_of[j] == gi)
                vs[gi] = _cg(C + o["fisher_damp"] * np.eye(D), y, o["cg_iters"])
            ps = [p - opts[group_of[j]]["lr"] * (Ps[j] @ vs[group_of[j]]).reshape(p.shape) for j, p in enumerate(ps)]
        ps = [np.clip(p, -opts[group_of[j]]["clip"], opts[group_of[j]]["clip"]) if opts[group_of[j]]["clip"] else p
              for j, p in enumerate(ps)]
    return ps


# ---------------------------------------------------------------------------------------- the table
# (optimizer, option, value, "ctor" | "group")
CASES = [
    *[("AdamW", k, v, w) for k, v in [("lr", 0.05), ("betas", (0.5, 0.9)), ("eps", 0.3), ("weight_decay", 3.0),
                                      ("amsgrad", True), ("maximize", True)] for w in ("ctor", "group")],
    *[("HIOptimizer", k, v, w) for k, v in [
        ("lr", 0.05), ("stiffening_factor", 5.0), ("beta", 0.5), ("epsilon", 0.5), ("cooling_rate", 0.5),
        ("initial_temp", 0.3), ("metric_scale", 7.0), ("adaptive_threshold", False), ("grad_clip", 0.05),
        ("hysteresis_scale", 40.0), ("metric_power", 1.0), ("schmitt", (0.2, 30.0))] for w in ("ctor", "group")],
    *[("HypergradientAdamW", k, v, w) for k, v in [
        ("lr", 0.05), ("betas", (0.5, 0.9)), ("eps", 0.3), ("weight_decay", 3.0), ("beta_hyper", 0.01),
        ("lr_min", 0.02), ("lr_max", 0.0005), ("log_scale", True), ("maximize", True)] for w in ("ctor", "group")],
    *[("HL", k, v, w) for k, v in [
        ("gamma", 3.0), ("flip", 1.0), ("theta", 0.6), ("beta", 0.3), ("reset_neuron_costate", True),
        ("local", False), ("reset_weight_costate", True)] for w in ("ctor", "group")],
    *[(f"HCNaturalGrad-{proj}", k, v, w) for proj in ("plain", "numpy", "hash") for k, v in [
        ("lr", 0.05), ("fisher_damp", 0.5), ("cg_iters", 1), ("clip", 0.3)] for w in ("ctor", "group")
      if not (proj == "plain" and k in ("fisher_damp", "cg_iters"))],
]
# cg_iters and fisher_damp only act with branches; HL's reset_weight_costate needs local=False
# (local=True with it is refused), so those cases run with local=False in both groups.

# Settings (both groups) under which an option's effect is visible in four steps.
_HYPER = {"beta_hyper": 1e-3, "lr": 0.01}
BASES = {
    ("AdamW", "amsgrad"): {"betas": (0.9, 0.5)},                   # v falls, so max(v) differs from v
    **{("HypergradientAdamW", k): _HYPER for k in ("lr", "betas", "eps", "weight_decay", "lr_min", "lr_max",
                                                   "log_scale", "maximize")},
    ("HypergradientAdamW", "lr"): {"beta_hyper": 1e-3},
    ("HypergradientAdamW", "beta_hyper"): {"lr": 0.01},
    **{("HIOptimizer", k): {"initial_temp": 0.5, "lr": 0.05} for k in (
        "stiffening_factor", "cooling_rate", "adaptive_threshold", "hysteresis_scale", "schmitt")},
    ("HIOptimizer", "initial_temp"): {"lr": 0.05},
    ("HIOptimizer", "schmitt"): {"stiffening_factor": 5.0, "initial_temp": 0.5, "lr": 0.05},
}

BRANCHES = np.random.default_rng(5).standard_normal((6, 3))


def _id(case):
    name, key, value, where = case
    return f"{name}-{key}={value}-{where}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_option_matches_the_formula(case, opt_kwargs):
    name, key, value, where = case
    params, grads = _data()
    ctor = {key: value} if where == "ctor" else {}
    group1 = {key: value} if where == "group" else {}
    nA = len(SHAPES_A)
    if name == "HL":
        _check_hl(key, value, where, params, grads, opt_kwargs)
        return
    groups = [{"params": params[:nA]}, {"params": params[nA:], **group1}]
    base = dict(BASES.get((name, key), {}))
    if base:
        groups[1] = {**base, **groups[1]}
    if name == "AdamW":
        opt = hyperopt.AdamW(groups, **{**base, **ctor}, **opt_kwargs)
        ref = lambda gi, opts: [ref_adamw(p, [g[j] for g in grads], **opts) for j, p in _members(gi, params)]
    elif name == "HIOptimizer":
        opt = hyperopt.HIOptimizer(groups, **{**base, **ctor}, **opt_kwargs)
        def ref(gi, opts):
            ps, diag = ref_hysterograd_group([p for _, p in _members(gi, params)],
                                             [[g[j] for j, _ in _members(gi, params)] for g in grads], **opts)
            return ps + [np.array([diag[k] for k in ("tau", "temperature", "energy", "barrier", "clip_factor")])]
    elif name == "HypergradientAdamW":
        opt = hyperopt.HypergradientAdamW(groups, **{**base, **ctor}, **opt_kwargs)
        ref = lambda gi, opts: ref_hypergradient_group([p for _, p in _members(gi, params)],
                                                       [[g[j] for j, _ in _members(gi, params)] for g in grads],
                                                       **opts)[0]
    else:
        proj = name.split("-")[1]
        B = None if proj == "plain" else BRANCHES
        kw = {} if proj == "plain" else {"branches": B, "projection": proj}
        opt = hyperopt.HCNaturalGrad(groups, **{**base, **ctor}, **kw, **opt_kwargs)
        group_of = [0] * nA + [1] * len(SHAPES_B)

        def ref(gi, opts):
            other = {**base, **(ctor if where == "ctor" else group1 if gi == 0 else {})}
            both = [opts, other] if gi == 0 else [other, opts]
            out = ref_natgrad(params, grads, group_of, both, proj, B)
            return [out[j] for j, _ in _members(gi, params)]
    originals = [p.copy() for p in params]
    for g in grads:
        opt.step(gradients=g)
    assert opt.backend.startswith("vulkan:" if opt_kwargs["use_gpu"] else "n")
    params_now = params
    params[:] = originals                     # the references start from the same initial values
    for gi in (0, 1):
        opts = {**base, **(ctor if where == "ctor" else group1 if gi == 1 else {})}
        expect = ref(gi, opts)
        default = ref(gi, base)
        got = [params_now_j for params_now_j in _group_arrays(opt, gi)]
        for e, gv in zip(expect, got):     # (zip stops before HIOptimizer's diagnostics row)
            np.testing.assert_allclose(gv, e, rtol=RTOL, atol=ATOL, err_msg=f"group {gi}")
        if opts != base:    # the option must make a difference the test can see
            assert any(not np.allclose(e, d, rtol=1e-4, atol=1e-5) for e, d in zip(expect, default)), \
                f"{key}={value} does not change the reference: a useless case"
    if name == "HIOptimizer":
        for gi, diag in enumerate(opt.diagnostics()):
            opts = {**base, **(ctor if where == "ctor" else group1 if gi == 1 else {})}
            _, want = ref_hysterograd_group([p for _, p in _members(gi, originals)],
                                            [[g[j] for j, _ in _members(gi, originals)] for g in grads], **opts)
            for k in ("tau", "temperature", "energy", "norm", "barrier", "clip_factor"):
                assert diag[k] == pytest.approx(want[k], rel=1e-5, abs=1e-9), (gi, k)
            assert diag["status"] == want["status"]
    if name == "HypergradientAdamW":
        for gi, group in enumerate(opt.param_groups):
            opts = {**base, **(ctor if where == "ctor" else group1 if gi == 1 else {})}
            _, lr = ref_hypergradient_group([p for _, p in _members(gi, originals)],
                                            [[g[j] for j, _ in _members(gi, originals)] for g in grads], **opts)
            assert group["lr"] == pytest.approx(lr, rel=1e-5)


def _members(gi, params):
    nA = len(SHAPES_A)
    idx = range(nA) if gi == 0 else range(nA, nA + len(SHAPES_B))
    return [(j, params[j]) for j in idx]


def _group_arrays(opt, gi):
    return [p for p in opt.param_groups[gi]["params"]]


def _check_hl(key, value, where, params, grads, opt_kwargs):
    from hyperopt.hamiltonian import StatelessModel
    nA = len(SHAPES_A)
    originals = [p.copy() for p in params]
    extra = {"local": False} if key == "reset_weight_costate" else {}
    models = [StatelessModel(params[:nA]), StatelessModel(params[nA:])]
    for m in models:
        m.dh = np.array([0.5], np.float32)
    ctor = {**extra, **({key: value} if where == "ctor" else {})}
    groups = [{"params": models[0]}, {"params": models[1], **({key: value} if where == "group" else {})}]
    hl = hyperopt.HL(groups, **ctor, **opt_kwargs)
    rng = np.random.default_rng(9)
    h_grads = [[rng.standard_normal(1).astype(np.float32) for _ in range(2)] for _ in grads]
    for g, hg in zip(grads, h_grads):
        hl.step(gradients=[{f"p{j}": x for j, x in enumerate(g[:nA])}, {"p0": g[nA]}], h_grad=hg)
        hl.zero_grad()
    total_H = 0.0
    for gi in (0, 1):
        opts = {**extra, **({key: value} if where == "ctor" or gi == 1 else {})}
        members = _members(gi, originals)
        ws, pxi, H = ref_hl_group([p for _, p in members], [[g[j] for j, _ in members] for g in grads],
                                  [hg[gi].astype(np.float64) for hg in h_grads], **opts)
        got = params[:nA] if gi == 0 else params[nA:]
        for e, gv in zip(ws, got):
            np.testing.assert_allclose(gv, e, rtol=RTOL, atol=ATOL, err_msg=f"group {gi}")
        np.testing.assert_allclose(np.ravel(hl.neuron_costate(gi)), pxi, rtol=RTOL, atol=ATOL)
        total_H += H
    assert hl.compute_hamiltonian(0.7, 0.7) == pytest.approx(total_H, rel=1e-5, abs=1e-7)


# ---------------------------------------------------------------------------------- AutoHypergradientAdamW
def ref_auto_group(ps, gss, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, hyper_lr=0.01,
                   hyper_lr_beta=1.0, lr_min=1e-6, lr_max=1.0, adapt_momentum=False, beta_min=0.5,
                   beta_max=0.9995, warmup_steps=10, amsgrad=False, maximize=False):
    """One group of AutoHypergradientAdamW (SPEC §2.5, 7922440b: normaliser |d_{k-1}|^2, per group).
    Returns parameters, the adapted lr and beta1."""
    ps = [p.astype(np.float64) for p in ps]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    vmax = [np.zeros_like(p) for p in ps]
    d, norm, G_lr, G_b = None, 0.0, 1.0, 1.0
    b1, b2 = betas
    for k, gs in enumerate(gss):            # k: the group's steps before this one
        gs = [(-g if maximize else g).astype(np.float64) for g in gs]
        if k >= warmup_steps and norm > 1e-12:
            h = min(max(-sum(float((g * dd).sum()) for g, dd in zip(gs, d)) / norm, -1.0), 1.0)
            G_lr = 0.99 * G_lr + 0.01 * h * h
            target = lr - hyper_lr * h / (math.sqrt(G_lr) + 1e-12)
            if abs(target - lr) > 0.1 * lr:
                target = lr + math.copysign(0.1 * lr, target - lr)
            lr = min(max(target, lr_min), lr_max)
            if adapt_momentum:
                hb = min(max(sum(float((g * mm).sum()) for g, mm in zip(gs, m)) / norm, -1.0), 1.0)
                G_b = 0.99 * G_b + 0.01 * hb * hb
                b1 = min(max(b1 - hyper_lr_beta * hb / (math.sqrt(G_b) + 1e-12), beta_min), beta_max)
        t = k + 1
        d = []
        for j, g in enumerate(gs):
            ps[j] = ps[j] * (1 - lr * weight_decay)
            m[j] = b1 * m[j] + (1 - b1) * g
            v[j] = b2 * v[j] + (1 - b2) * g * g
            vmax[j] = np.maximum(vmax[j], v[j])
            second = vmax[j] if amsgrad else v[j]
            d.append((m[j] / (1 - b1 ** t)) / (np.sqrt(second / (1 - b2 ** t)) + eps))
            ps[j] = ps[j] - lr * d[j]
        norm = sum(float((dd * dd).sum()) for dd in d)
    return ps, lr, b1


def ref_surprise(gss, warmup_steps=10, surprise_gamma=0.9, surprise_alpha=0.1, trauma_threshold=0.5):
    """The surprise signal over all parameters (SPEC §2.5 step 2): (S, S_bar, gain, S history)."""
    ema, var, S, S_bar, gain, hist = None, 0.0, 0.0, 0.0, 0.0, []
    for k, gs in enumerate(gss):
        if k < warmup_steps:
            continue
        gs = [g.astype(np.float64) for g in gs]
        n2 = sum(float((g * g).sum()) for g in gs)
        pe = sum(float(((g - (0 if ema is None else e)) ** 2).sum()) for g, e in zip(gs, ema or gs))
        var = n2 if (var == 0.0 and k == warmup_steps) else surprise_gamma * var + (1 - surprise_gamma) * n2
        S = math.tanh(pe / (var + 1e-12))
        S_bar = surprise_alpha * S + (1 - surprise_alpha) * S_bar
        gain = S_bar * math.exp(-S_bar / trauma_threshold)
        hist.append(S)
        ema = list(gs) if ema is None else [surprise_gamma * e + (1 - surprise_gamma) * g for e, g in zip(ema, gs)]
    return S, S_bar, gain, hist


# ---------------------------------------------------------------------------------------------- AutoSGM
_SGM_DEFAULTS = {"lr_cfg": dict(aoptlr=True, lr_init=1e-2, num_lrc=0),
                 "beta_cfg": dict(beta_n=0.9999, beta_a=0.999, beta_i=0.9, gamma_i=0.0, eta_i=0.0, debias=True),
                 "rc_cfg": dict(rcm=0, inseq=0, x=0.0, n=2, m=1, tau=1000, spe=1, cfact=1, e=0.0),
                 "wd_cfg": dict(wd=0.0, wd_lvl=0), "eps_cfg": dict(eps=1e-10)}


def ref_window(t, rcm, inseq, x, n, m, tau, spe, cfact, e):
    """W(t) of SPEC §3.5 (uniform sequence; epoch every spe steps), rcm 0-4, cfact 0, 1, 2."""
    if rcm == 0:
        return 1.0
    if inseq == 1:
        return _ref_kronecker_window(t, rcm, x, n, m, tau, spe, cfact, e)
    u, L = (((t - 1) // spe + 1), tau) if cfact == 0 else (t, spe if cfact == 2 else tau * spe)
    f = ((u - 1) % L) / L
    if m == 0:
        f = abs(2 * f - 1)
    if f < e or e == 1:
        return 1.0
    f = (f - e) / (1 - e)
    y = {1: lambda: math.cos(math.pi * f / 2) ** n, 2: lambda: (1 - f) ** n,
         3: lambda: (n ** f - n) / (1 - n), 4: lambda: (1 - f ** n) ** 2}[rcm]()
    return y * (1 - x) + x


def _ref_kronecker_window(t, rcm, x, n, m, tau, spe, cfact, e):
    """inseq=1 (SPEC §3.5, WINF_II of 4520f6c) for cfact 1, rcm 1, 3, 4: per frame, the shape at the
    golden-ratio points frac(j phi), sorted ascending, the flat top's ones appended, for a full
    window a descending copy appended; step tc of the frame takes element -1 - tc."""
    assert cfact == 1 and rcm in (1, 3, 4)
    L = tau * spe
    b = 2 if m == 0 else 1
    cove = int(e * L / b)
    gen = int(L / b - cove)
    if b * (gen + cove) < L:
        cove += 1
    phi = (math.sqrt(5) - 1) / 2
    shape = {1: lambda f: math.cos(math.pi * f / 2) ** n, 3: lambda f: (n ** f - n) / (1 - n),
             4: lambda f: (1 - f ** n) ** 2}[rcm]
    frame = sorted(shape((j * phi) % 1.0) for j in range(gen)) + [1.0] * cove
    if m == 0:
        frame = frame + sorted(frame, reverse=True)
    return frame[-1 - (t - 1) % L] * (1 - x) + x


def _filter(s, x, b, c, h, t, debias):
    """F[b, c, h] of SPEC §3.2: (output, new state)."""
    a = h * x
    y = (s + a) / (1.0 if t == 1 else 1 - c)
    s = b * (s + a) - c * a
    if debias:
        y = y * ((1 - b) / h) / (1 - b ** t)
    return y, s


def ref_autosgm(p, gs, maximize=False, **cfg):
    """One parameter of AutoSGM, element-wise path (SPEC §3.4 with the project's decisions:
    no master copy, num_lrc=4's Huber prefilter applied, debiased with ``debias``)."""
    c = {k: {**v, **cfg.get(k, {})} for k, v in _SGM_DEFAULTS.items()}
    lr, be, rc, wd, eps = (c[k] for k in ("lr_cfg", "beta_cfg", "rc_cfg", "wd_cfg", "eps_cfg"))
    eps = eps["eps"]
    w = p.astype(np.float64)
    w = np.where(np.abs(w) < eps, w + eps, w)
    b_i, g_i, b_a, b_n, deb = be["beta_i"], be["gamma_i"], be["beta_a"], be["beta_n"], be["debias"]
    eta_i = be["eta_i"] or 1 - b_i
    eta_a = be["eta_i"] or 1 - b_a
    nl = lr["num_lrc"] if lr["aoptlr"] else 0
    s = {k: np.zeros_like(w) for k in ("sm", "var", "mag", "wsq", "pc", "pcx")}
    lr_num = 0.0
    for t, g in enumerate(gs, 1):
        g = g.astype(np.float64)
        if nl == 4:
            mu, s["mag"] = _filter(s["mag"], np.abs(g), b_a, 0.0, 1 - b_a, t, deb)
            g = np.sign(g) * np.minimum(np.abs(g), 4 * mu)
        if wd["wd_lvl"] == 0:
            g = g + wd["wd"] * w
        v, s["sm"] = _filter(s["sm"], g, b_i, g_i, eta_i, t, deb)
        if lr["aoptlr"]:
            var, s["var"] = _filter(s["var"], (g + eps) ** 2, b_a, 0.0, eta_a, t, deb)
            dd = np.sqrt(var) + eps
        else:
            dd = 1.0
        v = v / dd
        if wd["wd_lvl"] == 1:
            v = v + (1 - b_i) / (1 - g_i) * wd["wd"] * w
        W = ref_window(t, **rc)
        if nl in (1, 2, 3):
            cw, s["wsq"] = _filter(s["wsq"], w * w, b_n, 0.0, 1 - b_n, t, False)
            if nl == 1:
                r, s["pc"] = _filter(s["pc"], lr["lr_init"] * w * v, b_n, 0.0, 1.0, t, False)
                e = np.minimum(np.abs(r), lr["lr_init"] * (cw + 1))
            elif nl == 2:
                xx = w * v
                mu, s["pcx"] = _filter(s["pcx"], np.abs(xx), b_a, 0.0, 1 - b_a, t, False)
                xt = np.sign(xx) * np.minimum(np.abs(xx), 4 * mu)
                r, s["pc"] = _filter(s["pc"], lr["lr_init"] * xt / (cw + 1), b_n, 0.0, 1.0, t, False)
                e = np.minimum(np.abs(r), lr["lr_init"] * (cw + 1))
            else:
                r, s["pc"] = _filter(s["pc"], lr["lr_init"] * (g / dd) ** 2, b_n, 0.0, 1 - b_n, t, False)
                e = np.minimum(r, lr["lr_init"])
            lr_num = 0.1 * lr_num + 0.9 * float(e.mean())
            alpha = lr_num * W
        else:
            alpha = lr["lr_init"] * W
        w = w + alpha * v if maximize else w - alpha * v
    return w


_RC = {"rcm": 1, "tau": 4}     # a cosine window short enough to act within four steps
SGM_CASES = [
    ("lr_cfg", {"aoptlr": False}), ("lr_cfg", {"lr_init": 0.05}), ("lr_cfg", {"num_lrc": 1}),
    ("lr_cfg", {"num_lrc": 2}), ("lr_cfg", {"num_lrc": 3}), ("lr_cfg", {"num_lrc": 4}),
    ("beta_cfg", {"beta_n": 0.5}), ("beta_cfg", {"beta_a": 0.5}), ("beta_cfg", {"beta_i": 0.5}),
    ("beta_cfg", {"gamma_i": 0.4}), ("beta_cfg", {"eta_i": 0.3}), ("beta_cfg", {"debias": False}),
    ("rc_cfg", _RC), *[("rc_cfg", {**_RC, **o}) for o in (
        {"rcm": 2}, {"rcm": 3, "n": 0.5}, {"rcm": 4}, {"x": 0.5}, {"n": 4}, {"m": 0}, {"tau": 2}, {"spe": 2},
        {"cfact": 0, "spe": 2}, {"cfact": 2, "spe": 3}, {"e": 0.5}, {"inseq": 1}, {"inseq": 1, "m": 0},
        {"inseq": 1, "tau": 3, "x": 0.2})],
    ("wd_cfg", {"wd": 0.5}), ("wd_cfg", {"wd": 0.5, "wd_lvl": 1}), ("eps_cfg", {"eps": 0.3}),
    ("maximize", True),
]
# Bases: the numerator's pole only acts with a numerator estimator, eta_i only without debias (the
# debiasing divides it out), wd_lvl only with a decay, the window's fields only with a window.
SGM_BASES = {("beta_cfg", "beta_n"): {"lr_cfg": {"num_lrc": 1}}, ("lr_cfg", "num_lrc"): {"lr_cfg": {"lr_init": 0.1}}, ("beta_cfg", "eta_i"): {"beta_cfg": {"debias": False}},
             ("wd_cfg", "wd_lvl"): {"wd_cfg": {"wd": 0.5}}}


def _sgm_base(key, value):
    if key == "rc_cfg" and value != _RC:
        return {"rc_cfg": _RC}
    for field in (value if isinstance(value, dict) else ()):
        if (key, field) in SGM_BASES:
            return SGM_BASES[(key, field)]
    return {}


def _sgm_opts(base, change):
    """base options with ``change`` merged field by field into the configs."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in change.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


@pytest.mark.parametrize("where", ["ctor", "group"])
@pytest.mark.parametrize("key,value", SGM_CASES, ids=[f"{k}={v}" for k, v in SGM_CASES])
def test_autosgm_option_matches_the_formula(key, value, where, opt_kwargs):
    params, grads = _data()
    if value == {"num_lrc": 4}:
        # the Huber clip is at 4x the debiased mean magnitude, which includes the current gradient: it
        # can only act after more than four steps, on a spike
        small = [[0.1 * x for x in g] for g in grads + _data(1)[1]]
        grads = small[:5] + [[30 * x for x in g] for g in _data(2)[1][:1]] + small[5:8]
    nA = len(SHAPES_A)
    base = _sgm_base(key, value)
    change = {key: value}
    ctor = _sgm_opts(base, change if where == "ctor" else {})
    groups = [{"params": params[:nA]}, {"params": params[nA:], **(_sgm_opts(base, change) if where == "group" else {})}]
    originals = [p.copy() for p in params]
    opt = hyperopt.AutoSGM(groups, **ctor, **opt_kwargs)
    for g in grads:
        opt.step(gradients=g)
    assert opt.backend.startswith("vulkan:" if opt_kwargs["use_gpu"] else "n")
    for gi in (0, 1):
        opts = _sgm_opts(base, change) if (where == "ctor" or gi == 1) else base
        for j, p0 in _members(gi, originals):
            gs = [g[j] for g in grads]
            expect = ref_autosgm(p0, gs, **opts)
            np.testing.assert_allclose(params[j], expect, rtol=RTOL, atol=ATOL, err_msg=f"group {gi} parameter {j}")
            if opts != base:
                assert not np.allclose(expect, ref_autosgm(p0, gs, **base), rtol=1e-4, atol=1e-5), \
                    f"{key}={value} does not change the reference: a useless case"


_AUTO_HYPER = {"warmup_steps": 1, "lr": 0.01}
_AUTO_MOMENTUM = {**_AUTO_HYPER, "adapt_momentum": True}
AUTO_CASES = [("hyper_lr", 3e-4, _AUTO_HYPER), ("lr_min", 0.02, _AUTO_HYPER), ("lr_max", 0.0085, _AUTO_HYPER),
              ("warmup_steps", 3, _AUTO_HYPER), ("adapt_momentum", True, _AUTO_HYPER),
              ("hyper_lr_beta", 0.01, _AUTO_MOMENTUM), ("beta_min", 0.95, {**_AUTO_MOMENTUM, "hyper_lr_beta": 0.01}),
              ("beta_max", 0.6, _AUTO_MOMENTUM), ("amsgrad", True, {**_AUTO_HYPER, "betas": (0.9, 0.5)}),
              ("maximize", True, _AUTO_HYPER)]


@pytest.mark.parametrize("where", ["ctor", "group"])
@pytest.mark.parametrize("key,value,base", AUTO_CASES, ids=[f"{k}={v}" for k, v, _ in AUTO_CASES])
def test_auto_hypergradient_option_matches_the_formula(key, value, base, where, opt_kwargs):
    params, grads = _data()
    nA = len(SHAPES_A)
    ctor = {**base, **({key: value} if where == "ctor" else {})}
    groups = [{"params": params[:nA]}, {"params": params[nA:], **({**base, key: value} if where == "group" else {})}]
    originals = [p.copy() for p in params]
    opt = hyperopt.AutoHypergradientAdamW(groups, **ctor, **opt_kwargs)
    for g in grads:
        opt.step(gradients=g)
    assert opt.backend.startswith("vulkan:" if opt_kwargs["use_gpu"] else "n")
    for gi in (0, 1):
        opts = {**base, **({key: value} if (where == "ctor" or gi == 1) else {})}
        members = _members(gi, originals)
        args = ([p for _, p in members], [[g[j] for j, _ in members] for g in grads])
        ps, lr, b1 = ref_auto_group(*args, **opts)
        for (j, _), e in zip(members, ps):
            np.testing.assert_allclose(params[j], e, rtol=RTOL, atol=ATOL, err_msg=f"group {gi} parameter {j}")
        assert opt.param_groups[gi]["lr"] == pytest.approx(lr, rel=1e-5)
        assert opt.param_groups[gi]["betas"][0] == pytest.approx(b1, rel=1e-5)
        if opts != base:
            d_ps, d_lr, d_b1 = ref_auto_group(*args, **base)
            assert (any(not np.allclose(e, d, rtol=1e-4, atol=1e-5) for e, d in zip(ps, d_ps))
                    or not math.isclose(lr, d_lr, rel_tol=1e-4) or not math.isclose(b1, d_b1, rel_tol=1e-4)), \
                f"{key}={value} does not change the reference: a useless case"


SURPRISE_CASES = [("track_surprise", True), ("surprise_gamma", 0.3), ("surprise_alpha", 0.7),
                  ("trauma_threshold", 0.05), ("warmup_steps", 2)]


@pytest.mark.parametrize("key,value", SURPRISE_CASES, ids=[f"{k}={v}" for k, v in SURPRISE_CASES])
def test_auto_hypergradient_surprise_options(key, value, opt_kwargs):
    """The optimizer-wide surprise options (constructor only), against SPEC §2.5's surprise signal."""
    params, grads = _data()
    base = {"warmup_steps": 0} if key == "track_surprise" else {"warmup_steps": 0, "track_surprise": True}
    opts = {**base, key: value}
    opt = hyperopt.AutoHypergradientAdamW(params, **opts, **opt_kwargs)
    for g in grads:
        opt.step(gradients=g)
    assert opt.backend.startswith("vulkan:" if opt_kwargs["use_gpu"] else "n")

    def ref(o):
        if not o.get("track_surprise"):
            return 0.0, 0.0, 0.0, []
        return ref_surprise(grads, **{k: v for k, v in o.items() if k != "track_surprise"})
    S, S_bar, gain, hist = ref(opts)
    assert opt.current_surprise == pytest.approx(S, rel=1e-5, abs=1e-9)
    assert opt.accumulated_surprise == pytest.approx(S_bar, rel=1e-5, abs=1e-9)
    assert opt.current_surprise_gain == pytest.approx(gain, rel=1e-5, abs=1e-9)
    assert opt.surprise_history == pytest.approx(hist, rel=1e-5, abs=1e-9)
    dS, dS_bar, dgain, dhist = ref(base)
    assert (not math.isclose(gain, dgain, rel_tol=1e-4) or not math.isclose(S_bar, dS_bar, rel_tol=1e-4)
            or len(hist) != len(dhist)), f"{key}={value} does not change the reference: a useless case"


@pytest.mark.parametrize("history_size", [0, 2, None])
def test_auto_hypergradient_history_size(history_size, opt_kwargs):
    params, grads = _data()
    opt = hyperopt.AutoHypergradientAdamW(params, **{**_AUTO_MOMENTUM, "warmup_steps": 0}, track_surprise=True,
                                          history_size=history_size, **opt_kwargs)
    for g in grads:
        opt.step(gradients=g)
    # lr and beta1: the initial value and 3 adaptations (steps 2-4); surprise: 4 steps
    full = {"lr": 4, "beta1": 4, "surprise": 4}
    want = {k: n if history_size is None else min(n, history_size) for k, n in full.items()}
    assert len(opt.history(0)["lr"]) == want["lr"] and len(opt.lr_history) == want["lr"]
    assert len(opt.history(0)["beta1"]) == want["beta1"]
    assert len(opt.surprise_history) == want["surprise"] == len(opt.s_bar_history)


def _ref_inv_sqrt(m, eps, steps=5):
    """(m + eps I)^(-1/2) as SPEC §3.6 computes it: Frobenius-normalised, then 5 rounds of the cubic
    coupled iteration P = (15 I - 10 Y + 3 Y^2)/8, X <- X P, Y <- Y P^2."""
    eye = np.eye(m.shape[0])
    a = m + eps * eye
    norm = np.linalg.norm(a)
    y, x = a / norm, eye
    for _ in range(steps):
        p = (15 * eye - 10 * y + 3 * y @ y) / 8
        x, y = x @ p, y @ p @ p
    return x / math.sqrt(norm)


def ref_autosgm_mix(p, gs, maximize=False, **cfg):
    """One parameter of AutoSGM on the matrix path (SPEC §3.6; the project keeps the numerator's two
    norms in separate averages), or the element-wise path when mix is off."""
    mix = {"mix": False, "avg": False, "lr_init": 1e-2, "beta": 0.95, "gamma": 0.0, **cfg.get("mix_cfg", {})}
    cfg = {k: v for k, v in cfg.items() if k != "mix_cfg"}
    if not mix["mix"] or p.ndim < 2:
        return ref_autosgm(p, gs, maximize, **cfg)
    c = {k: {**v, **cfg.get(k, {})} for k, v in _SGM_DEFAULTS.items()}
    lr, wd, eps = c["lr_cfg"], c["wd_cfg"], c["eps_cfg"]["eps"]
    w = p.astype(np.float64).reshape(p.shape[0], -1)
    w = np.where(np.abs(w) < eps, w + eps, w)
    flip = w.shape[0] > w.shape[1]
    w = w.T if flip else w
    s, avg = 0.0, {"M": 0.0, "c": 0.0, "cw": 0.0}

    def average(key, value):
        y = avg[key] + 0.5 * value
        avg[key] = 0.5 * y
        return y
    for t, g in enumerate(gs, 1):
        g = g.astype(np.float64).reshape(p.shape[0], -1)
        g = g.T if flip else g
        x = g + wd["wd"] * w if wd["wd_lvl"] == 0 else g
        v, s = _filter(s, x, mix["beta"], mix["gamma"], 1.0, t, False)
        M = v @ v.T
        if mix["avg"]:
            M = average("M", M)
        v = _ref_inv_sqrt(M, eps) @ v
        if wd["wd_lvl"] == 1:
            v = v + (1 - mix["beta"]) / (1 - mix["gamma"]) * wd["wd"] * w
        W = ref_window(t, **c["rc_cfg"])
        if lr["aoptlr"] and lr["num_lrc"] in (1, 2):
            cv, cw = lr["lr_init"] * np.linalg.norm(w @ v.T), lr["lr_init"] * np.linalg.norm(w @ w.T)
            if mix["avg"]:
                cv, cw = average("c", cv), average("cw", cw)
            alpha = min(max(cv, eps), min(max(cw, eps), lr["lr_init"])) * W
        else:
            alpha = mix["lr_init"] * W
        w = w + alpha * v if maximize else w - alpha * v
    return (w.T if flip else w).reshape(p.shape)


_MIX = {"mix": True}
MIX_CASES = [("mix_cfg", _MIX, {}), *[("mix_cfg", {**_MIX, **o}, {"mix_cfg": _MIX}) for o in (
    {"avg": True}, {"lr_init": 0.05}, {"beta": 0.5}, {"gamma": 0.4})],
    ("lr_cfg", {"num_lrc": 1}, {"mix_cfg": {**_MIX, "lr_init": 0.05}}),   # the parcor numerator, capped at lr_init
    ("mix_cfg", {**_MIX, "avg": True}, {"mix_cfg": _MIX, "lr_cfg": {"num_lrc": 1}}),
    ("wd_cfg", {"wd": 0.5}, {"mix_cfg": _MIX}), ("wd_cfg", {"wd": 0.5, "wd_lvl": 1}, {"mix_cfg": _MIX, "wd_cfg": {"wd": 0.5}}),
    ("maximize", True, {"mix_cfg": _MIX})]


@pytest.mark.parametrize("where", ["ctor", "group"])
@pytest.mark.parametrize("key,value,base", MIX_CASES, ids=[f"{k}={v}-base{b}" for k, v, b in MIX_CASES])
def test_autosgm_mix_option_matches_the_formula(key, value, base, where, opt_kwargs):
    """mix_cfg: the host's matrix path, for 2-D views with both sides in [4, 2048] (and a 1-D
    parameter beside them, which stays on the element-wise path)."""
    rng = np.random.default_rng(3)
    shapes_a, shapes_b = [(6, 4), (3,)], [(4, 5)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes_a + shapes_b]
    grads = [[(c * rng.standard_normal(s)).astype(np.float32) for s in shapes_a + shapes_b] for c in (3.0, 1.0, 0.3, 0.1)]
    change = {key: value}
    ctor = _sgm_opts(base, change if where == "ctor" else {})
    groups = [{"params": params[:2]}, {"params": params[2:], **(_sgm_opts(base, change) if where == "group" else {})}]
    originals = [p.copy() for p in params]
    opt = hyperopt.AutoSGM(groups, **ctor, **opt_kwargs)
    for g in grads:
        opt.step(gradients=g)
    assert opt.backend.startswith("vulkan:" if opt_kwargs["use_gpu"] else "n")
    for gi, members in ((0, (0, 1)), (1, (2,))):
        opts = _sgm_opts(base, change) if (where == "ctor" or gi == 1) else base
        for j in members:
            gs = [g[j] for g in grads]
            expect = ref_autosgm_mix(originals[j], gs, **opts)
            np.testing.assert_allclose(params[j], expect, rtol=1e-4, atol=1e-5, err_msg=f"group {gi} parameter {j}")
            if opts != base and originals[j].ndim == 2:
                assert not np.allclose(expect, ref_autosgm_mix(originals[j], gs, **base), rtol=1e-3, atol=1e-4), \
                    f"{key}={value} does not change the reference: a useless case"
