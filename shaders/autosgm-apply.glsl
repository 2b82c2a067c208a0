#version 450
// AutoSGM pass 3 of 3: p += alpha * upd, alpha read from the control array.
// NumPy twin: hyperopt/kernels/autosgm.py
#include "common.glsli"

struct Scalars {
    real alpha_index;       // where this tensor's alpha is in ctl[]
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) buffer Param { real param[]; };
layout(set = 0, binding = 5, std430) readonly buffer Upd { real upd[]; };

void main() {
    WORK_ROW
    real alpha = ctl[uint(seg[segment].alpha_index)];
    FOR_EACH_ELEMENT(k) {
        precise real p = param[k] + alpha * upd[k];
        param[k] = p;
    }
}
