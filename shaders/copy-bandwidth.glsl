#version 450
// Device-memory bandwidth probe (benchmarks/gpu_probe.py): dst = src, one vec4 per invocation per
// pass of a grid-stride loop.  Not an optimizer kernel: it has no NumPy twin and no declaration.
layout(local_size_x = 256) in;

layout(push_constant) uniform Args {
    uint n_vec4;       // vec4s to copy
    uint unused0, unused1, unused2;
} pc;

layout(set = 0, binding = 0, std430) readonly buffer Src { vec4 src[]; };
layout(set = 0, binding = 1, std430) writeonly buffer Dst { vec4 dst[]; };

void main() {
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < pc.n_vec4; i += stride) dst[i] = src[i];
}
