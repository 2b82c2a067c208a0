#version 450
// The Adam direction d = m_hat / (sqrt(v_hat) + eps), kept for the next step, and |d|^2.
// NumPy twin: hyperopt/kernels/hypergradient.py.  vec4 form (see common.glsli); lanes past the
// end of the row add nothing and keep their values.
#include "common.glsli"

struct Scalars {
    real bias_correction1;   // 1 - beta1^t
    real bias_correction2;   // 1 - beta2^t
    real eps;
    real amsgrad;            // take v from max_exp_avg_sq
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) readonly buffer ExpAvg { real4 exp_avg[]; };
layout(set = 0, binding = 5, std430) readonly buffer ExpAvgSq { real4 exp_avg_sq[]; };
layout(set = 0, binding = 6, std430) readonly buffer MaxExpAvgSq { real4 max_exp_avg_sq[]; };
layout(set = 0, binding = 7, std430) buffer Direction { real4 direction[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    bool amsgrad = s.amsgrad != 0.0;
    real dd = 0.0;
    FOR_EACH_VEC4(q) {
        bvec4 live = LIVE(q);
        real4 v = amsgrad ? max_exp_avg_sq[q] : exp_avg_sq[q];
        real4 d = (exp_avg[q] / s.bias_correction1) / (sqrt(v / s.bias_correction2) + s.eps);
        if (all(live)) {
            direction[q] = d;
        } else {   // the row's last vec4: only live lanes change or count
            d = mix(real4(0.0), d, live);
            direction[q] = mix(direction[q], d, live);
        }
        dd += dot(d, d);
    }
    write_partial(0, workgroup_sum(dd));
}
