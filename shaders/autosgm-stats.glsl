#version 450
// AutoSGM pass 1 of 3 (a numerator estimator is active): the shared front end, the step
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

#include "autosgm-front.glsli"

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    int mode = int(s.num_lrc);
    float acc = 0.0;
    FOR_EACH_ELEMENT(k) {
        precise float w = param[k];
        precise float g = grad[k];
        float d;
        precise float v = autosgm_front(s, k, w, g, d);
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
