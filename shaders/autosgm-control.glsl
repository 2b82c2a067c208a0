#version 450
// AutoSGM pass 2 of 3 (control, one workgroup): per tensor i, its step size alpha in ctl[2i+1]; for
// the numerator estimators the per-tensor mean of e (from the segment sums) is smoothed by the filter
// whose state is ctl[2i]: y = ctl[2i] + 0.9 mean, ctl[2i] = 0.1 y, alpha = direction * y * W.
// Tensors are independent, so the 256 invocations share them out.  NumPy twin: hyperopt/kernels/autosgm.py
#include "common.glsli"

struct Scalars {
    real mode;               // 0: no gradient this step (skip); 1: alpha = alpha_const; 2: estimator
    real window;            // W for this tensor's step (computed on the host)
    real numel;
    real alpha_const;
    real direction;         // -1, or +1 when maximizing
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };

void main() {
    for (uint i = gl_LocalInvocationID.x; i < pc.n_segments; i += WG_SIZE) {
        Scalars s = seg[i];
        if (s.mode == 0.0) continue;
        if (s.mode == 1.0) {
            ctl[2u * i + 1u] = TO_CTL(s.alpha_const);
            continue;
        }
        precise real mean = partials[i * pc.n_sums] / s.numel;
        precise real y = ctl[2u * i] + RATIO(9.0, 10.0) * mean;
        ctl[2u * i] = TO_CTL(RATIO(1.0, 10.0) * y);
        ctl[2u * i + 1u] = TO_CTL(s.direction * (y * s.window));
    }
}
