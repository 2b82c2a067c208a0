#version 450
// HCNaturalGrad with a device-generated projection: per-parameter sums of P[:, j] * g for four
// columns, P[i, j] = scale * (bit bit0+j of hash32(key[i] ^ hash32(stream)) ? -1 : +1).  key[] holds
// each element's index as a float32 bit pattern, so it is only reinterpreted, never computed with.
// NumPy twin: hyperopt/kernels/natural_grad.py
#include "common.glsli"
#include "natural-grad-hash.glsli"

struct Scalars {
    real stream;    // 24-bit integer from (seed, step, parameter, column block), exact in float32
    real bit0;      // first sign bit (column index modulo 32)
    real n_cols;    // 1..4 columns in use
    real scale;
};
layout(set = 0, binding = 1, std430) readonly buffer Table { Scalars seg[]; };
layout(set = 0, binding = 4, std430) readonly buffer Grad { real grad[]; };
layout(set = 0, binding = 5, std430) readonly buffer Key { real key[]; };


void main() {
    WORK_ROW
    Scalars s = seg[segment];
    uint n = uint(s.n_cols);
    uint b = uint(s.bit0);
    uint st = hash32(uint(s.stream));
    real4 acc = real4(0.0);
    FOR_EACH_ELEMENT(e) {
        uint h = hash32(key_bits(key[e]) ^ st);
        real g = grad[e];
        acc.x += hash_sign(h, b) * g;
        if (n > 1u) acc.y += hash_sign(h, b + 1u) * g;
        if (n > 2u) acc.z += hash_sign(h, b + 2u) * g;
        if (n > 3u) acc.w += hash_sign(h, b + 3u) * g;
    }
    write_partial(0, s.scale * workgroup_sum(acc.x));
    write_partial(1, s.scale * workgroup_sum(acc.y));
    write_partial(2, s.scale * workgroup_sum(acc.z));
    write_partial(3, s.scale * workgroup_sum(acc.w));
}
