#version 450
// HysteroGrad pass 1: metric EMA, preconditioned gradient c = g / (G^power + eps), and sum(c^2) per
// workgroup (summed per segment by the backend).  NumPy twin: hyperopt/kernels/hysterograd.py
// Four elements per invocation (vec4 loads: faster on CPU Vulkan, free on a GPU); lanes past the end
// of the row keep their values and add nothing to the sum.
#include "common.glsli"
#include "hysterograd.glsli"

struct Scalars {
    real beta;
    real metric_gain;    // (1 - beta) * metric_scale, derived on the host in double
    real eps;
    real metric_power;   // 0.5: g / (sqrt(G) + eps) (upstream); 1.0: g / (G + eps)
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) readonly buffer Grad { real4 grad[]; };
layout(set = 0, binding = 5, std430) buffer Metric { real4 metric[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    real acc = 0.0;
    FOR_EACH_VEC4(q) {
        bvec4 live = LIVE(q);
        real4 g = grad[q];
        real4 old = metric[q];
        // precise: no fused multiply-add, so the metric matches the twin bit for bit
        precise real4 G = s.beta * old + (s.metric_gain * g) * g;
        metric[q] = mix(old, G, live);
        precise real4 c = mix(real4(0.0), g / (metric_root(G, s.metric_power) + s.eps), live);
        acc += dot(c, c);
    }
    write_partial(0, workgroup_sum(acc));
}
