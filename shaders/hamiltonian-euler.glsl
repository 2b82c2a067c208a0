#version 450
// Hamiltonian Learning: Euler step of weights w and costates p.  Local HL moves w with the old
// costate, then updates it; non-local HL updates the costate first and moves w with the new one.
// NumPy twin: hyperopt/kernels/hamiltonian.py
#include "common.glsli"

struct Scalars {
    real keep;              // 1 - theta' = 1 + flip * theta
    real costate_step;      // s = -delta * flip
    real neg_weight_step;   // -delta * beta
    real costate_first;     // nonzero: non-local order
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) buffer Param { real param[]; };
layout(set = 0, binding = 5, std430) readonly buffer Grad { real grad[]; };
layout(set = 0, binding = 6, std430) buffer Costate { real costate[]; };

void main() {
    WORK_ROW
    Scalars s = seg[segment];
    bool first = s.costate_first != 0.0;
    FOR_EACH_ELEMENT(e) {
        real p = costate[e];
        // precise: every product rounded on its own (no fused multiply-add), as in the NumPy twin
        precise real updated = s.keep * p + s.costate_step * grad[e];
        precise real w = param[e] + s.neg_weight_step * (first ? updated : p);
        param[e] = w;
        costate[e] = updated;
    }
}
