#version 450
// HysteroGrad pass 2 (control, one workgroup): per group, from the per-segment sums of c^2, the norm
// n, clip factor k, internal time tau, temperature T, energy E, barrier h and the Liquid/Frozen
// decision, kept in ctl[] (one record of CTL_STRIDE floats per group).  Row g of the table is group g.
// float32 throughout, every expression precise (no fused multiply-add) so it matches the twin
// bit for bit.  NumPy twin: hyperopt/kernels/hysterograd.py
#include "common.glsli"
#include "hysterograd.glsli"

struct Scalars {
    float seg_begin;          // the group's segments are [seg_begin, seg_end)
    float seg_end;
    float has_grad;            // 0: no parameter of the group has a gradient; the group is skipped
    float lr;
    float clip;               // 0: no clipping
    float cooling_rate;
    float beta;
    float one_minus_beta;
    float stiffening;
    float hysteresis_scale;
    float adaptive;
    float freeze_below;       // a Liquid group freezes once n <= freeze_below * h
    float thaw_above;         // a Frozen group thaws once n > thaw_above * h
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };

void main() {
    if (gl_LocalInvocationID.x != 0u) return;
    for (uint g = 0u; g < pc.n_segments; ++g) {
        Scalars s = seg[g];
        if (s.has_grad == 0.0) continue;
        uint base = g * CTL_STRIDE;
        precise float sq = 0.0;
        for (uint i = uint(s.seg_begin); i < uint(s.seg_end); ++i) sq = sq + partials[i * pc.n_sums];
        precise float n = sqrt(sq);
        precise float k = 1.0;
        if (s.clip > 0.0) k = min(1.0, s.clip / (n + 1e-6));
        precise float n_eff = n * k;
        precise float tau = ctl[base + CTL_TAU] + s.lr * n_eff;
        precise float temp = ctl[base + CTL_TEMP] * s.cooling_rate;
        precise float energy = s.beta * ctl[base + CTL_ENERGY] + s.one_minus_beta * n_eff;
        precise float h = s.stiffening * sqrt(tau) * (1.0 - clamp(temp, 0.0, 1.0)) * s.hysteresis_scale;
        if (s.adaptive != 0.0) h = h * (energy + 1e-8);
        precise float threshold = (ctl[base + CTL_LIQUID] != 0.0 ? s.freeze_below : s.thaw_above) * h;
        ctl[base + CTL_TAU] = tau;
        ctl[base + CTL_TEMP] = temp;
        ctl[base + CTL_ENERGY] = energy;
        ctl[base + CTL_NORM] = n_eff;
        ctl[base + CTL_BARRIER] = h;
        ctl[base + CTL_CLIP] = k;
        ctl[base + CTL_LIQUID] = n_eff > threshold ? 1.0 : 0.0;
    }
}
