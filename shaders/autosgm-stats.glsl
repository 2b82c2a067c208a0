#version 450
// AutoSGM pass 1 of 3 (a numerator estimator is active): the front end of autosgm-update.glsl, the step
// direction v stored in upd[], the estimator's state updated, and the per-element estimate e summed per
// tensor.  Every expression is precise (no fused multiply-add).  NumPy twin: hyperopt/kernels/autosgm.py
#include "common.glsli"

struct Scalars {
    float wd;
    float coupled;
    float decoupled;
    float eta_i;
    float beta_i;
    float gamma_i;
    float smooth_scale;
    float aopt;
    float eta_a;
    float beta_a;
    float moment_scale;
    float eps;
    float huber;
    float one_minus_beta_a;
    float huber_scale;
    float num_lrc;           // 1 parcor, 2 parcor + Huber, 3 moment; anything else: e = 0
    float lr0;
    float beta_n;
    float one_minus_beta_n;
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) readonly buffer Param { float param[]; };
layout(set = 0, binding = 5, std430) readonly buffer Grad { float grad[]; };
layout(set = 0, binding = 6, std430) buffer GSm { float g_sm[]; };
layout(set = 0, binding = 7, std430) buffer GVar { float g_var[]; };
layout(set = 0, binding = 8, std430) buffer GMag { float g_mag[]; };
layout(set = 0, binding = 9, std430) buffer Wsq { float wsq[]; };
layout(set = 0, binding = 10, std430) buffer Pcor { float pcor[]; };
layout(set = 0, binding = 11, std430) buffer Pcx { float pcx[]; };
layout(set = 0, binding = 12, std430) writeonly buffer Upd { float upd[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    int mode = int(s.num_lrc);
    float acc = 0.0;
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
        precise float d = 1.0;
        if (s.aopt != 0.0) {
            precise float q = g + s.eps;
            q = q * q;
            q = q * s.eta_a;
            q = q + g_var[k];
            d = sqrt(q * s.moment_scale) + s.eps;
            g_var[k] = s.beta_a * q;
            v = v / d;
        }
        if (s.decoupled != 0.0) v = v + s.decoupled * wd_w;
        upd[k] = v;

        precise float est = 0.0;
        if (mode == 1 || mode == 2) {
            precise float c = wsq[k] + s.one_minus_beta_n * (w * w);
            wsq[k] = s.beta_n * c;
            precise float cap = s.lr0 * (c + 1.0);
            precise float r;
            if (mode == 1) {
                r = pcor[k] + s.lr0 * w * v;
            } else {
                precise float x = w * v;
                precise float mag = abs(x);
                precise float mu = pcx[k] + s.one_minus_beta_a * mag;
                pcx[k] = s.beta_a * mu;
                x = sign(x) * min(mag, 4.0 * mu);
                r = pcor[k] + s.lr0 * x / (c + 1.0);
            }
            pcor[k] = s.beta_n * r;
            est = min(abs(r), cap);
        } else if (mode == 3) {
            precise float u = g / d;
            precise float r = pcor[k] + s.one_minus_beta_n * (s.lr0 * (u * u));
            pcor[k] = s.beta_n * r;
            est = min(r, s.lr0);
        }
        acc += est;
    }
    write_partial(0, workgroup_sum(acc));
}
