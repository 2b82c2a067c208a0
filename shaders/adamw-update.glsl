#version 450
// AdamW, torch.optim.AdamW's order of operations. NumPy twin: hyperopt/kernels/adamw.py
#include "common.glsl"

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
layout(set = 0, binding = 4, std430) buffer Param { float param[]; };
layout(set = 0, binding = 5, std430) readonly buffer Grad { float grad[]; };
layout(set = 0, binding = 6, std430) buffer ExpAvg { float exp_avg[]; };
layout(set = 0, binding = 7, std430) buffer ExpAvgSq { float exp_avg_sq[]; };
layout(set = 0, binding = 8, std430) buffer MaxExpAvgSq { float max_exp_avg_sq[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    FOR_EACH_ELEMENT(e) {
        float g = s.maximize != 0.0 ? -grad[e] : grad[e];
        float p = param[e] * s.decay;
        float m = exp_avg[e];
        m = m + (g - m) * s.one_minus_beta1;
        float v = exp_avg_sq[e] * s.beta2 + s.one_minus_beta2 * g * g;
        exp_avg[e] = m;
        exp_avg_sq[e] = v;
        if (s.amsgrad != 0.0) {
            v = max(max_exp_avg_sq[e], v);
            max_exp_avg_sq[e] = v;
        }
        float denom = sqrt(v) / s.bias_correction2_sqrt + s.eps;
        param[e] = p + (s.neg_step_size * m) / denom;
    }
}
