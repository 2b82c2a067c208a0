#version 450
// HCNaturalGrad: proj = scale * grad, storing one column of the host-drawn projection P that was
// uploaded through the gradient buffer.  NumPy twin: hyperopt/kernels/natural_grad.py
#include "common.glsli"

struct Scalars {
    real scale;    // 1 / sqrt(D)
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) readonly buffer Grad { real grad[]; };
layout(set = 0, binding = 5, std430) writeonly buffer Proj { real proj[]; };

void main() {
    WORK_ROW
    real scale = seg[segment].scale;
    FOR_EACH_ELEMENT(e) {
        proj[e] = scale * grad[e];
    }
}
