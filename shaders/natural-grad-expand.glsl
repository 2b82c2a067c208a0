#version 450
// HCNaturalGrad: p += sum_j c_j * P[:, j] over four columns (c_j = -lr * v_j from the host's D x D
// solve), then on the last dispatch of a step the box clip(p, -clip, clip).  With the gradient as its
// only column this is plain gradient descent.  NumPy twin: hyperopt/kernels/natural_grad.py
#include "common.glsli"

struct Scalars {
    real c0;
    real c1;
    real c2;
    real c3;
    real n_cols;       // 1..4 columns in use
    real clip;
    real apply_clip;   // nonzero: clip after the update
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) buffer Param { real param[]; };
layout(set = 0, binding = 5, std430) readonly buffer Proj0 { real proj0[]; };
layout(set = 0, binding = 6, std430) readonly buffer Proj1 { real proj1[]; };
layout(set = 0, binding = 7, std430) readonly buffer Proj2 { real proj2[]; };
layout(set = 0, binding = 8, std430) readonly buffer Proj3 { real proj3[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    uint n = uint(s.n_cols);
    bool clip = s.apply_clip != 0.0;
    FOR_EACH_ELEMENT(e) {
        real p = param[e];
        p += s.c0 * proj0[e];
        if (n > 1u) p += s.c1 * proj1[e];
        if (n > 2u) p += s.c2 * proj2[e];
        if (n > 3u) p += s.c3 * proj3[e];
        if (clip) p = clamp(p, -s.clip, s.clip);
        param[e] = p;
    }
}
