#version 450
// Per-parameter dot product <a, b>.  NumPy twin: hyperopt/kernels/reductions.py
#include "common.glsli"

struct Scalars { real unused; };
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) readonly buffer A { real a[]; };
layout(set = 0, binding = 5, std430) readonly buffer B { real b[]; };

void main() {
    WORK_ROW
    real acc = 0.0;
    FOR_EACH_ELEMENT(e) { acc += a[e] * b[e]; }
    write_partial(0, workgroup_sum(acc));
}
