#version 450
// AutoSGM, one pass with a host-side step size: Huber prefilter (num_lrc 4), coupled decay, lowpass
// filter, moment normalisation, decoupled decay, then p += alpha * v.  Every expression is precise
// (no fused multiply-add) to follow the NumPy twin's rounding.  NumPy twin: hyperopt/kernels/autosgm.py
// (the front end is the same as in autosgm-stats.glsl).
#include "common.glsli"

struct Scalars {
    float wd;
    float coupled;           // 1: weight decay added to the gradient (wd_lvl 0)
    float decoupled;         // (1 - beta_i)/(1 - gamma_i) for wd_lvl 1, else 0
    float eta_i;
    float beta_i;
    float gamma_i;
    float smooth_scale;      // 1/(1 - gamma_i) (1 at t=1) times the debiasing factor
    float aopt;              // 1: divide by the moment estimate
    float eta_a;
    float beta_a;
    float moment_scale;      // the moment estimator's debiasing factor
    float eps;
    float huber;             // 1: Huber-clip the gradient at 4x its running mean magnitude
    float one_minus_beta_a;
    float huber_scale;       // 1/(1 - beta_a^t) with debias
    float alpha;             // -lr_init * W (positive when maximizing)
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) buffer Param { float param[]; };
layout(set = 0, binding = 5, std430) readonly buffer Grad { float grad[]; };
layout(set = 0, binding = 6, std430) buffer GSm { float g_sm[]; };
layout(set = 0, binding = 7, std430) buffer GVar { float g_var[]; };
layout(set = 0, binding = 8, std430) buffer GMag { float g_mag[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    FOR_EACH_ELEMENT(k) {
        precise float w = param[k];
        precise float g = grad[k];
        if (s.huber != 0.0) {
            precise float mag = abs(g);
            precise float h = g_mag[k] + s.one_minus_beta_a * mag;
            precise float mu = h * s.huber_scale;
            g_mag[k] = s.beta_a * h;
            g = sign(g) * min(mag, 4.0 * mu);
        }
        precise float wd_w = s.wd * w;
        if (s.coupled != 0.0) g = g + wd_w;
        precise float a = s.eta_i * g;
        precise float sm = g_sm[k] + a;
        precise float v = sm * s.smooth_scale;
        g_sm[k] = s.beta_i * sm - s.gamma_i * a;
        if (s.aopt != 0.0) {
            precise float q = g + s.eps;
            q = q * q;
            q = q * s.eta_a;
            q = q + g_var[k];
            precise float d = sqrt(q * s.moment_scale) + s.eps;
            g_var[k] = s.beta_a * q;
            v = v / d;
        }
        if (s.decoupled != 0.0) v = v + s.decoupled * wd_w;
        param[k] = w + s.alpha * v;
    }
}
