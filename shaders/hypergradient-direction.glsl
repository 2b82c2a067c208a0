#version 450
// What the next step reads: the Adam direction d = m_hat / (sqrt(v_hat) + eps) with |d|^2, and the
// surprise signal's gradient EMA moved on (written here, in the step's last run, not by the reduction).
// NumPy twin: hyperopt/kernels/hypergradient.py.  vec4 form (see common.glsli); lanes past the
// end of the row add nothing and keep their values.
#include "common.glsli"

struct Scalars {
    real bias_correction1;   // 1 - beta1^t
    real bias_correction2;   // 1 - beta2^t
    real eps;
    real amsgrad;            // take v from max_exp_avg_sq
    real with_surprise;      // move the gradient EMA on
    real ema_decay;          // gamma, or 0 when the EMA starts at this gradient
    real ema_rate;           // 1 - gamma, or 1 when the EMA starts at this gradient
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) readonly buffer ExpAvg { real4 exp_avg[]; };
layout(set = 0, binding = 5, std430) readonly buffer ExpAvgSq { real4 exp_avg_sq[]; };
layout(set = 0, binding = 6, std430) readonly buffer MaxExpAvgSq { real4 max_exp_avg_sq[]; };
layout(set = 0, binding = 7, std430) buffer Direction { real4 direction[]; };
layout(set = 0, binding = 8, std430) readonly buffer Grad { real4 grad[]; };
layout(set = 0, binding = 9, std430) buffer GradEma { real4 grad_ema[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    bool amsgrad = s.amsgrad != 0.0;
    // uniform per segment: without the surprise signal grad_ema is never touched (a placeholder)
    bool surprise = s.with_surprise != 0.0;
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
        if (surprise) {
            real4 ema = grad_ema[q];
            grad_ema[q] = mix(ema, s.ema_decay * ema + s.ema_rate * grad[q], live);
        }
    }
    write_partial(0, workgroup_sum(dd));
}
