#version 450
// HCNaturalGrad: per-parameter sums of P[:, j] * g for four columns j of the projection, each column
// in its own state buffer.  Columns at or above n_cols are masked (the host binds the last column
// again in their slots).  NumPy twin: hyperopt/kernels/natural_grad.py
#include "common.glsli"

struct Scalars {
    real scale;     // multiplies every sum (1.0 when P is uploaded already scaled)
    real n_cols;    // 1..4 columns in use
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) readonly buffer Grad { real grad[]; };
layout(set = 0, binding = 5, std430) readonly buffer Proj0 { real proj0[]; };
layout(set = 0, binding = 6, std430) readonly buffer Proj1 { real proj1[]; };
layout(set = 0, binding = 7, std430) readonly buffer Proj2 { real proj2[]; };
layout(set = 0, binding = 8, std430) readonly buffer Proj3 { real proj3[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    uint n = uint(s.n_cols);
    real4 acc = real4(0.0);
    FOR_EACH_ELEMENT(e) {
        real g = grad[e];
        acc.x += proj0[e] * g;
        // masked columns are not read: they alias a float column and would only cost bandwidth
        if (n > 1u) acc.y += proj1[e] * g;
        if (n > 2u) acc.z += proj2[e] * g;
        if (n > 3u) acc.w += proj3[e] * g;
    }
    write_partial(0, s.scale * workgroup_sum(acc.x));
    write_partial(1, s.scale * workgroup_sum(acc.y));
    write_partial(2, s.scale * workgroup_sum(acc.z));
    write_partial(3, s.scale * workgroup_sum(acc.w));
}
