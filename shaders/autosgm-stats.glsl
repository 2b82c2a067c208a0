#version 450
// AutoSGM pass 1 of 3 (a numerator estimator is active): the shared front end, the step
// direction v stored in upd[], the estimator's state updated, and the per-element estimate e summed per
// tensor.  Every expression is precise (no fused multiply-add).  NumPy twin: hyperopt/kernels/autosgm.py
#include "common.glsli"

struct Scalars {
    real wd;
    real coupled;
    real decoupled;
    real eta_i;
    real beta_i;
    real gamma_i;
    real smooth_scale;
    real aopt;
    real eta_a;
    real beta_a;
    real moment_scale;
    real eps;
    real huber;
    real one_minus_beta_a;
    real huber_scale;
    real num_lrc;           // 1 parcor, 2 parcor + Huber, 3 moment; anything else: e = 0
    real lr0;
    real beta_n;
    real one_minus_beta_n;
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) readonly buffer Param { real param[]; };
layout(set = 0, binding = 5, std430) readonly buffer Grad { real grad[]; };
layout(set = 0, binding = 6, std430) buffer GSm { real g_sm[]; };
layout(set = 0, binding = 7, std430) buffer GVar { real g_var[]; };
layout(set = 0, binding = 8, std430) buffer GMag { real g_mag[]; };
layout(set = 0, binding = 9, std430) buffer Wsq { real wsq[]; };
layout(set = 0, binding = 10, std430) buffer Pcor { real pcor[]; };
layout(set = 0, binding = 11, std430) buffer Pcx { real pcx[]; };
layout(set = 0, binding = 12, std430) writeonly buffer Upd { real upd[]; };

#include "autosgm-front.glsli"

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    int mode = int(s.num_lrc);
    real acc = 0.0;
    FOR_EACH_ELEMENT(k) {
        precise real w = param[k];
        precise real g = grad[k];
        real d;
        precise real v = autosgm_front(s, k, w, g, d);
        upd[k] = v;

        precise real est = 0.0;
        if (mode == 1 || mode == 2) {
            precise real c = wsq[k] + s.one_minus_beta_n * (w * w);
            wsq[k] = s.beta_n * c;
            precise real cap = s.lr0 * (c + 1.0);
            precise real r;
            if (mode == 1) {
                r = pcor[k] + s.lr0 * w * v;
            } else {
                precise real x = w * v;
                precise real mag = abs(x);
                precise real mu = pcx[k] + s.one_minus_beta_a * mag;
                pcx[k] = s.beta_a * mu;
                x = sign(x) * min(mag, 4.0 * mu);
                r = pcor[k] + s.lr0 * x / (c + 1.0);
            }
            pcor[k] = s.beta_n * r;
            est = min(abs(r), cap);
        } else if (mode == 3) {
            precise real u = g / d;
            precise real r = pcor[k] + s.one_minus_beta_n * (s.lr0 * (u * u));
            pcor[k] = s.beta_n * r;
            est = min(r, s.lr0);
        }
        acc += est;
    }
    write_partial(0, workgroup_sum(acc));
}
