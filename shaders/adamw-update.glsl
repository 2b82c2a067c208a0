#version 450
// AdamW in torch.optim.AdamW's order of operations.  NumPy twin: hyperopt/kernels/adamw.py
// Four elements per invocation (vec4 loads run ~1.5x faster on CPU Vulkan and cost nothing on a
// GPU); lanes past the end of the row keep their old values.
#include "common.glsli"

struct Scalars {
    real decay;                  // 1 - lr * weight_decay
    real one_minus_beta1;
    real beta2;
    real one_minus_beta2;
    real eps;
    real neg_step_size;          // -lr / (1 - beta1^t)
    real bias_correction2_sqrt;  // sqrt(1 - beta2^t)
    real amsgrad;
    real maximize;
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) buffer Param { real4 param[]; };
layout(set = 0, binding = 5, std430) readonly buffer Grad { real4 grad[]; };
layout(set = 0, binding = 6, std430) buffer ExpAvg { real4 exp_avg[]; };
layout(set = 0, binding = 7, std430) buffer ExpAvgSq { real4 exp_avg_sq[]; };
layout(set = 0, binding = 8, std430) buffer MaxExpAvgSq { real4 max_exp_avg_sq[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    FOR_EACH_VEC4(q) {
        bvec4 live = LIVE(q);
        real4 g = s.maximize != 0.0 ? -grad[q] : grad[q];
        real4 p = param[q];
        real4 m = exp_avg[q];
        real4 v = exp_avg_sq[q];
        real4 m_new = m + (g - m) * s.one_minus_beta1;
        real4 v_new = v * s.beta2 + s.one_minus_beta2 * g * g;
        exp_avg[q] = mix(m, m_new, live);
        exp_avg_sq[q] = mix(v, v_new, live);
        if (s.amsgrad != 0.0) {
            real4 v_max = max_exp_avg_sq[q];
            v_new = max(v_max, v_new);
            max_exp_avg_sq[q] = mix(v_max, v_new, live);
        }
        real4 denom = sqrt(v_new) / s.bias_correction2_sqrt + s.eps;
        param[q] = mix(p, p * s.decay + (s.neg_step_size * m_new) / denom, live);
    }
}
