#version 450
// Hypergradient dot products and the surprise signal's error; reads only (the gradient EMA moves on
// in hypergradient-direction.glsl, the step's last run).
// NumPy twin: hyperopt/kernels/hypergradient.py.  vec4 form (see common.glsli); lanes past the
// end of the row add nothing and keep their values.
#include "common.glsli"

struct Scalars {
    real with_momentum;   // also sum <g, m>
    real with_surprise;   // also sum |g|^2 and |g - ema|^2
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) readonly buffer Grad { real4 grad[]; };
layout(set = 0, binding = 5, std430) readonly buffer Direction { real4 direction[]; };
layout(set = 0, binding = 6, std430) readonly buffer ExpAvg { real4 exp_avg[]; };
layout(set = 0, binding = 7, std430) readonly buffer GradEma { real4 grad_ema[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    // Uniform per segment: buffers that are off are never touched (they may be placeholders).
    bool momentum = s.with_momentum != 0.0;
    bool surprise = s.with_surprise != 0.0;
    real gd = 0.0, gm = 0.0, gg = 0.0, err = 0.0;
    FOR_EACH_VEC4(q) {
        bvec4 live = LIVE(q);
        real4 g = mix(real4(0.0), grad[q], live);
        gd += dot(g, direction[q]);
        if (momentum) gm += dot(g, exp_avg[q]);
        if (surprise) {
            real4 r = mix(real4(0.0), g - grad_ema[q], live);
            gg += dot(g, g);
            err += dot(r, r);
        }
    }
    real4 total = workgroup_sum4(real4(gd, gm, gg, err));
    write_partial(0, total.x);
    write_partial(1, total.y);
    write_partial(2, total.z);
    write_partial(3, total.w);
}
