#version 450
// HCNaturalGrad with a device-generated projection: p += sum_j c_j * sign_j over four columns (the
// signs of natural-grad-hash-project.glsl; c_j already carries the scale), then on the last dispatch
// of a step the box clip(p, -clip, clip).  NumPy twin: hyperopt/kernels/natural_grad.py
#include "common.glsli"
#include "natural-grad-hash.glsli"

struct Scalars {
    real stream;
    real bit0;
    real n_cols;
    real c0;
    real c1;
    real c2;
    real c3;
    real clip;
    real apply_clip;
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) buffer Param { real param[]; };
layout(set = 0, binding = 5, std430) readonly buffer Key { real key[]; };


// hash_sign(...) * c is exactly +c or -c, so the update rounds as the NumPy twin's does
void main() {
    WORK_ROW
    Scalars s = seg[segment];
    uint n = uint(s.n_cols);
    uint b = uint(s.bit0);
    uint st = hash32(uint(s.stream));
    bool clip = s.apply_clip != 0.0;
    FOR_EACH_ELEMENT(e) {
        uint h = hash32(key_bits(key[e]) ^ st);
        real p = param[e];
        p += hash_sign(h, b) * s.c0;
        if (n > 1u) p += hash_sign(h, b + 1u) * s.c1;
        if (n > 2u) p += hash_sign(h, b + 2u) * s.c2;
        if (n > 3u) p += hash_sign(h, b + 3u) * s.c3;
        if (clip) p = clamp(p, -s.clip, s.clip);
        param[e] = p;
    }
}
