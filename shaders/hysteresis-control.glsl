#version 450
// HysteroGrad pass 2 (control, one workgroup): per group, from the per-segment sums of c^2, the norm
// n, clip factor k, internal time tau, temperature T, energy E, barrier h and the Liquid/Frozen
// decision, kept in ctl[] (one record of CTL_STRIDE floats per group).  Row g of the table is group g.
// float32 throughout, every expression precise (no fused multiply-add) so it matches the twin
// bit for bit.  NumPy twin: hyperopt/kernels/hysterograd.py
#include "common.glsli"
#include "hysterograd.glsli"

struct Scalars {
    real seg_begin;          // the group's segments are [seg_begin, seg_end)
    real seg_end;
    real has_grad;            // 0: no parameter of the group has a gradient; the group is skipped
    real lr;
    real clip;               // 0: no clipping
    real cooling_rate;
    real beta;
    real one_minus_beta;
    real stiffening;
    real hysteresis_scale;
    real adaptive;
    real freeze_below;       // a Liquid group freezes once n <= freeze_below * h
    real thaw_above;         // a Frozen group thaws once n > thaw_above * h
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };

void main() {
    if (gl_LocalInvocationID.x != 0u) return;
    for (uint g = 0u; g < pc.n_segments; ++g) {
        Scalars s = seg[g];
        if (s.has_grad == 0.0) continue;
        uint base = g * CTL_STRIDE;
        precise real sq = 0.0;
        for (uint i = uint(s.seg_begin); i < uint(s.seg_end); ++i) sq = sq + partials[i * pc.n_sums];
        precise real n = sqrt(sq);
        precise real k = 1.0;
        if (s.clip > 0.0) k = min(1.0, s.clip / (n + RATIO(1.0, 1000000.0)));
        precise real n_eff = n * k;
        precise real tau = ctl[base + CTL_TAU] + s.lr * n_eff;
        precise real temp = ctl[base + CTL_TEMP] * s.cooling_rate;
        precise real energy = s.beta * ctl[base + CTL_ENERGY] + s.one_minus_beta * n_eff;
        precise real h = s.stiffening * sqrt(tau) * (1.0 - clamp(temp, 0.0, 1.0)) * s.hysteresis_scale;
        if (s.adaptive != 0.0) h = h * (energy + RATIO(1.0, 100000000.0));
        precise real threshold = (ctl[base + CTL_LIQUID] != 0.0 ? s.freeze_below : s.thaw_above) * h;
        ctl[base + CTL_TAU] = TO_CTL(tau);
        ctl[base + CTL_TEMP] = TO_CTL(temp);
        ctl[base + CTL_ENERGY] = TO_CTL(energy);
        ctl[base + CTL_NORM] = TO_CTL(n_eff);
        ctl[base + CTL_BARRIER] = TO_CTL(h);
        ctl[base + CTL_CLIP] = TO_CTL(k);
        ctl[base + CTL_LIQUID] = TO_CTL(n_eff > threshold ? 1.0 : 0.0);
    }
}
