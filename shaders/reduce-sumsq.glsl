#version 450
// Per-parameter squared norm ||a||^2.  NumPy twin: hyperopt/kernels/reductions.py
#include "common.glsli"

struct Scalars { real unused; };
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) readonly buffer A { real a[]; };

void main() {
    WORK_ROW
    real acc = 0.0;
    FOR_EACH_ELEMENT(e) { acc += a[e] * a[e]; }
    write_partial(0, workgroup_sum(acc));
}
