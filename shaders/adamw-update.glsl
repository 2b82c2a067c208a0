#version 450
// AdamW in torch.optim.AdamW's order of operations.  NumPy twin: hyperopt/kernels/adamw.py
// Four elements per invocation (vec4 loads run ~1.5x faster on CPU Vulkan and cost nothing on a
// GPU); lanes past the end of the row keep their old values.
#include "common.glsli"

struct Scalars {
    float decay;                  // 1 - lr * weight_decay
    float one_minus_beta1;
    float beta2;
    float one_minus_beta2;
    float eps;
    float neg_step_size;          // -lr / (1 - beta1^t)
    float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
    float amsgrad;
    float maximize;
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) buffer Param { vec4 param[]; };
layout(set = 0, binding = 5, std430) readonly buffer Grad { vec4 grad[]; };
layout(set = 0, binding = 6, std430) buffer ExpAvg { vec4 exp_avg[]; };
layout(set = 0, binding = 7, std430) buffer ExpAvgSq { vec4 exp_avg_sq[]; };
layout(set = 0, binding = 8, std430) buffer MaxExpAvgSq { vec4 max_exp_avg_sq[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    FOR_EACH_VEC4(q) {
        bvec4 live = LIVE(q);
        vec4 g = s.maximize != 0.0 ? -grad[q] : grad[q];
        vec4 p = param[q];
        vec4 m = exp_avg[q];
        vec4 v = exp_avg_sq[q];
        vec4 m_new = m + (g - m) * s.one_minus_beta1;
        vec4 v_new = v * s.beta2 + s.one_minus_beta2 * g * g;
        exp_avg[q] = mix(m, m_new, live);
        exp_avg_sq[q] = mix(v, v_new, live);
        if (s.amsgrad != 0.0) {
            vec4 v_max = max_exp_avg_sq[q];
            v_new = max(v_max, v_new);
            max_exp_avg_sq[q] = mix(v_max, v_new, live);
        }
        vec4 denom = sqrt(v_new) / s.bias_correction2_sqrt + s.eps;
        param[q] = mix(p, p * s.decay + (s.neg_step_size * m_new) / denom, live);
    }
}
