#version 450
// Second pass of every reduction: the per-workgroup partials of each segment, summed in a fixed
// order (deterministic), one workgroup per segment.  Backend-internal: it has no NumPy twin,
// because the NumPy backend sums each segment directly.
#extension GL_GOOGLE_include_directive : require
#include "common.glsli"

layout(set = 0, binding = 1, std430) readonly buffer Ranges { uvec2 ranges[]; };   // (first workgroup, count)
layout(set = 0, binding = 4, std430) writeonly buffer Sums { real sums[]; };       // n_segments x n_sums

void main() {
    uint segment = gl_WorkGroupID.x;
    uvec2 r = ranges[segment];
    for (uint k = 0; k < pc.n_sums; ++k) {
        // Kahan-compensated strided sum per invocation, then the tree.
        precise real acc = 0.0, comp = 0.0;
        for (uint w = gl_LocalInvocationID.x; w < r.y; w += WG_SIZE) {
            precise real y = partials[(r.x + w) * pc.n_sums + k] - comp;
            precise real t = acc + y;
            comp = (t - acc) - y;
            acc = t;
        }
        real total = workgroup_sum(acc);
        if (gl_LocalInvocationID.x == 0) sums[segment * pc.n_sums + k] = total;
    }
}
