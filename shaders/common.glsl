// The frame every hyperopt kernel shares (included by each shader; the Vulkan backend binds it).
//
// Elementwise kernels run one workgroup per row of the work table: a range of one parameter's
// region ("segment") in the flat arena buffers.  Control kernels run as a single workgroup.
//
//   binding 0  work[]      uvec4 (segment, begin, end, 0) per workgroup; begin/end are arena indices
//   binding 1  seg[]       the kernel's own per-segment Scalars struct (declared by the kernel)
//   binding 2  partials[]  elementwise: per-workgroup sums written here, n_sums floats per workgroup;
//                          control: the per-segment sums of the previous summing kernel (n_segments x n_sums)
//   binding 3  ctl[]       the optimizer's small control buffer (device-side scalar state)
//   binding 4+ arena buffers, in the order the kernel declaration lists them
//
// Arena buffers may be bound as a window of a larger buffer (the 128 MiB binding limit):
// element e of the arena is at index e - pc.elem_base of the binding.
#extension GL_GOOGLE_include_directive : require

#define WG_SIZE 64      // 64 suits CPU drivers best and keeps GPUs fully occupied
layout(local_size_x = WG_SIZE) in;

layout(push_constant) uniform Dispatch {
    uint wg_base;      // global index of this dispatch's first workgroup (row of work[])
    uint elem_base;    // arena index of the first element of the bound window
    uint n_segments;
    uint n_sums;
} pc;

layout(set = 0, binding = 0, std430) readonly buffer WorkTable { uvec4 work[]; };
layout(set = 0, binding = 2, std430) buffer Partials { float partials[]; };
layout(set = 0, binding = 3, std430) buffer Control { float ctl[]; };

shared float wg_scratch[WG_SIZE];

// Deterministic tree sum over the workgroup; every invocation must call it.
float workgroup_sum(float x) {
    uint lid = gl_LocalInvocationID.x;
    wg_scratch[lid] = x;
    barrier();
    for (uint s = WG_SIZE / 2; s > 0; s >>= 1) {
        if (lid < s) wg_scratch[lid] += wg_scratch[lid + s];
        barrier();
    }
    float r = wg_scratch[0];
    barrier();
    return r;
}

// Store sum k of this workgroup (call after workgroup_sum, from any invocation).
void write_partial(uint k, float value) {
    if (gl_LocalInvocationID.x == 0) partials[(pc.wg_base + gl_WorkGroupID.x) * pc.n_sums + k] = value;
}

// The work row of this workgroup, and the loop over its elements (i: arena index, e: binding index).
#define WORK_ROW uvec4 row = work[pc.wg_base + gl_WorkGroupID.x]; uint segment = row.x;
#define FOR_EACH_ELEMENT(e) for (uint i_ = row.y + gl_LocalInvocationID.x, e = i_ - pc.elem_base; i_ < row.z; i_ += WG_SIZE, e += WG_SIZE)

// The vec4 form, for kernels that bind their arenas as vec4[] (segments are 64-float aligned, so a
// row starts on a vec4): q indexes vec4s; LIVE(q) masks the lanes before the end of the row.  Write
// with mix(old, new, LIVE(q)) so lanes past the end keep their values.
#define FOR_EACH_VEC4(q) for (uint q = (row.y - pc.elem_base) / 4 + gl_LocalInvocationID.x, end_ = row.z - pc.elem_base; q * 4 < end_; q += WG_SIZE)
#define LIVE(q) lessThan(uvec4(q * 4) + uvec4(0, 1, 2, 3), uvec4(end_))
