#version 450
// HysteroGrad pass 3: p -= (lr * k) * c where the parameter's group is Liquid (decision and clip
// factor k read from the control array).  c is recomputed from g and the updated G, with the same
// operations as natural-gradient.glsl.  NumPy twin: hyperopt/kernels/hysterograd.py
// Four elements per invocation, as in natural-gradient.glsl.
#include "common.glsli"
#include "hysterograd.glsli"

struct Scalars {
    real lr;
    real eps;
    real metric_power;
    real ctl_base;       // index of the group's record in ctl[]
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) buffer Param { real4 param[]; };
layout(set = 0, binding = 5, std430) readonly buffer Grad { real4 grad[]; };
layout(set = 0, binding = 6, std430) readonly buffer Metric { real4 metric[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    uint base = uint(s.ctl_base);
    if (ctl[base + CTL_LIQUID] == 0.0) return;   // Frozen: uniform per workgroup, no barrier follows
    precise real step = s.lr * ctl[base + CTL_CLIP];
    FOR_EACH_VEC4(q) {
        real4 old = param[q];
        precise real4 c = grad[q] / (metric_root(metric[q], s.metric_power) + s.eps);
        precise real4 p = old - step * c;
        param[q] = mix(old, p, LIVE(q));
    }
}
