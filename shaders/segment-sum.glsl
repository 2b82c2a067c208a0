#version 450
// The reductions' passes after the kernel: one workgroup per range, adding ranges[w].y consecutive
// partials from ranges[w].x in a fixed order (deterministic).  Run twice: (1) the rows' partials of
// each CHUNK-element block into that block's partial, which the host reads and totals per segment in
// float64, in block order; (2) where a control kernel reads sums, the block partials of each segment
// into the per-segment sums it reads.  A range covers whole blocks, so under comm (where pass 2 runs
// over every rank's block partials, gathered) the results are the bits of one process.
// Backend-internal: it has no NumPy twin.
#extension GL_GOOGLE_include_directive : require
#include "common.glsli"

layout(set = 0, binding = 1, std430) readonly buffer Ranges { uvec2 ranges[]; };   // (first partial, count)
layout(set = 0, binding = 4, std430) writeonly buffer Sums { real sums[]; };       // ranges x n_sums

void main() {
    uint range = gl_WorkGroupID.x;
    uvec2 r = ranges[range];
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
        if (gl_LocalInvocationID.x == 0) sums[range * pc.n_sums + k] = total;
    }
}
