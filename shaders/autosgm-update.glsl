#version 450
// AutoSGM, one pass with a host-side step size: Huber prefilter (num_lrc 4), coupled decay, lowpass
// filter, moment normalisation, decoupled decay, then p += alpha * v.  Every expression is precise
// (no fused multiply-add) to follow the NumPy twin's rounding.  NumPy twin: hyperopt/kernels/autosgm.py
#include "common.glsli"

struct Scalars {
    real wd;
    real coupled;           // 1: weight decay added to the gradient (wd_lvl 0)
    real decoupled;         // (1 - beta_i)/(1 - gamma_i) for wd_lvl 1, else 0
    real eta_i;
    real beta_i;
    real gamma_i;
    real smooth_scale;      // 1/(1 - gamma_i) (1 at t=1) times the debiasing factor
    real aopt;              // 1: divide by the moment estimate
    real eta_a;
    real beta_a;
    real moment_scale;      // the moment estimator's debiasing factor
    real eps;
    real huber;             // 1: Huber-clip the gradient at 4x its running mean magnitude
    real one_minus_beta_a;
    real huber_scale;       // 1/(1 - beta_a^t) with debias
    real alpha;             // -lr_init * W (positive when maximizing)
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) buffer Param { real param[]; };
layout(set = 0, binding = 5, std430) readonly buffer Grad { real grad[]; };
layout(set = 0, binding = 6, std430) buffer GSm { real g_sm[]; };
layout(set = 0, binding = 7, std430) buffer GVar { real g_var[]; };
layout(set = 0, binding = 8, std430) buffer GMag { real g_mag[]; };

#include "autosgm-front.glsli"

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    FOR_EACH_ELEMENT(k) {
        precise real w = param[k];
        precise real g = grad[k];
        real d;
        precise real v = autosgm_front(s, k, w, g, d);
        param[k] = w + s.alpha * v;
    }
}
