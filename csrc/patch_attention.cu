// NCP patch attention, decode shape (M == 1), and the op's launcher.
//
// Decode is a paged decode request: per (sample b, head h) one query row against the null key, the
// valid context pages (full, + ADC bias of their slot) and the first q_start keys of the own page
// (+ bias row own_rel), one online softmax in fp32 (base 2: q is pre-scaled by scale*log2 e).
//
// Grid (B*H, S), 128 threads. Thread blocking: a key's D elements are read by a lane group of
// TPK = D*sizeof(T)/16 lanes, one 16-byte vector per lane (D=64 bf16: 8 lanes, 4 keys per warp per
// step); each group keeps its own softmax state over the flat keys j = gid, gid + GROUPS, ... of
// its split, UNROLL keys per iteration so that 2*UNROLL 16-byte loads per thread are in flight
// before the first use. Dot products reduce over the group with xor shuffles; the group states merge
// with shuffles inside a warp, then across the 4 warps through shared memory.
// K/V go straight from global memory to registers: every byte is used once per block, so staging it
// through shared memory (cp.async / TMA) would add no reuse; 2*UNROLL outstanding 16-byte loads per
// thread are already several times what Little's law needs for full HBM bandwidth.
//
// Split (flash-decoding) when B*H leaves SMs idle: split s takes flat keys [s*per, (s+1)*per), writes
// its unnormalised (acc, max, sum) to the fp32 workspace, and decode_reduce_kernel merges the S
// states. Split 0 holds the null key, so the merged max is always finite.
#include <cooperative_groups.h>

#include "patch_attention.cuh"

namespace nuwa {
namespace {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kDecodeUnroll = 4;
constexpr int kMaxClusterSplits = 8;  // portable cluster size

template <typename T, int D>
struct DecodeTraits {
  static constexpr int VEC = Vec16<T>::N;       // elements per 16-byte load
  static constexpr int TPK = D / VEC;           // lanes per key: 4, 8, 16 or 32
  static constexpr int KPW = 32 / TPK;          // keys per warp per step
  static constexpr int GROUPS = kDecodeWarps * KPW;
  static_assert(TPK >= 1 && TPK <= 32 && (TPK & (TPK - 1)) == 0, "head dim must be 32, 64 or 128");
};

template <typename T, int D, bool CLUSTER>
__global__ void __launch_bounds__(kDecodeThreads)
decode_kernel(const PatchAttnParams p) {
  using Tr = DecodeTraits<T, D>;
  constexpr int VEC = Tr::VEC, TPK = Tr::TPK, GROUPS = Tr::GROUPS, U = kDecodeUnroll;
  extern __shared__ int smem_dyn[];
  __shared__ float red[kDecodeWarps][D + 2];   // per warp: acc[D], max, sum
  __shared__ int warp_cnt[kDecodeWarps];

  const int bh = blockIdx.x, split = blockIdx.y, S = gridDim.y;
  const int b = bh / p.H, h = bh - b * p.H;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int lig = lane % TPK;                                  // lane in group: dims lig*VEC ..
  const int gid = warp * Tr::KPW + lane / TPK;                 // group id in the block
  int* seg_page = smem_dyn;
  float* seg_bias = reinterpret_cast<float*>(smem_dyn + p.C + 1);

  const int nv = build_segments<kDecodeWarps>(p, b, h, seg_page, seg_bias, warp_cnt);

  const T* qp = static_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh + lig * VEC;
  float q[VEC];
  unpack16<T>(ldg16(qp), q);
#pragma unroll
  for (int i = 0; i < VEC; ++i) q[i] *= p.scale_log2;

  float m = neg_inf(), l = 0.f, acc[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0.f;

  if (split == 0) {  // null key/value, bias 0: seeds group 0 of split 0
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) s += q[i] * load_null<T>(p.null_k, h * p.nk_sh + lig * VEC + i, p.null_fp32);
    s = group_sum<TPK>(s);
    if (gid == 0) {
      m = s;
      l = 1.f;
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] = load_null<T>(p.null_v, h * p.nv_sh + lig * VEC + i, p.null_fp32);
    }
  }

  const int P = p.P;
  const int total = nv * P + p.q_start;                        // context keys, then own keys 0..q_start-1
  const int per = (total + S - 1) / S;
  const int kb = split * per;
  const int ke = min(total, kb + per);
  const T* kbase = static_cast<const T*>(p.k) + h * p.k_sh + lig * VEC;
  const T* vbase = static_cast<const T*>(p.v) + h * p.v_sh + lig * VEC;

  for (int j0 = kb; j0 < ke; j0 += GROUPS * U) {  // block-uniform trip count (shuffles inside)
    uint4 kr[U], vr[U];
    float sb[U];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * GROUPS + gid;
      ok[u] = j < ke;
      kr[u] = make_uint4(0u, 0u, 0u, 0u);
      vr[u] = make_uint4(0u, 0u, 0u, 0u);
      sb[u] = 0.f;
      if (ok[u]) {  // unused pages are never touched: they may hold NaN
        const int seg = j / P, key = j - seg * P;
        const int64_t page = seg_page[seg];
        sb[u] = seg_bias[seg];
        kr[u] = ldg16(kbase + page * p.k_sn + key * p.k_sp);
        vr[u] = ldg16(vbase + page * p.v_sn + key * p.v_sp);
      }
    }
    float s[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[VEC];
      unpack16<T>(kr[u], kf);
      float d = 0.f;
#pragma unroll
      for (int i = 0; i < VEC; ++i) d += q[i] * kf[i];
      s[u] = d;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) s[u] = group_sum<TPK>(s[u]);
    float mx = m;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      s[u] = ok[u] ? s[u] + sb[u] : neg_inf();
      mx = fmaxf(mx, s[u]);
    }
    if (mx != neg_inf()) {  // group-uniform
      const float alpha = rescale(m, mx);
      l *= alpha;
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float pu = exp2f(s[u] - mx);                     // 0 for masked keys (their v is 0 too)
        float vf[VEC];
        unpack16<T>(vr[u], vf);
        l += pu;
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] += pu * vf[i];
      }
      m = mx;
    }
  }

  // Merge the groups of a warp (same lig, lanes TPK apart), then the warps.
#pragma unroll
  for (int o = TPK; o < 32; o <<= 1) {
    const float m_o = __shfl_xor_sync(kFullMask, m, o);
    const float l_o = __shfl_xor_sync(kFullMask, l, o);
    float acc_o[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc_o[i] = __shfl_xor_sync(kFullMask, acc[i], o);
    merge_state<VEC>(m, l, acc, m_o, l_o, acc_o);
  }
  if (lane < TPK) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) red[warp][lig * VEC + i] = acc[i];
    if (lane == 0) {
      red[warp][D] = m;
      red[warp][D + 1] = l;
    }
  }
  __syncthreads();
  const bool leader = warp == 0 && lane < TPK;                 // holds dims lig*VEC.. of the block state
  if (leader) {
    for (int w = 1; w < kDecodeWarps; ++w) {
      float acc_o[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc_o[i] = red[w][lig * VEC + i];
      merge_state<VEC>(m, l, acc, red[w][D], red[w][D + 1], acc_o);
    }
  }
  if constexpr (CLUSTER) {
    // Hopper: the S splits of (b, h) are one thread block cluster; split 0 merges the others' states
    // straight from their shared memory (DSMEM), so no workspace round trip and no reduce kernel.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    float* part = &red[0][0];                                  // reuse: warp 0's row, now merged
    __syncthreads();                                           // every warp is done reading red
    if (leader) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) part[lig * VEC + i] = acc[i];
      if (lane == 0) {
        part[D] = m;
        part[D + 1] = l;
      }
    }
    cluster.sync();                                            // parts written, visible cluster-wide
    if (split == 0 && leader) {
      for (int r = 1; r < S; ++r) {
        const float* rp = cluster.map_shared_rank(part, r);
        float acc_o[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc_o[i] = rp[lig * VEC + i];
        merge_state<VEC>(m, l, acc, rp[D], rp[D + 1], acc_o);
      }
      const float inv = 1.f / l;
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] *= inv;
      store16<T>(static_cast<T*>(p.out) + b * p.o_sb + h * p.o_sh + lig * VEC, acc);
    }
    cluster.sync();                                            // keep every part alive until read
#endif
    return;
  }
  if (!leader) return;
  if (S == 1) {
    const float inv = 1.f / l;                                 // l >= the null key's weight > 0
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] *= inv;
    store16<T>(static_cast<T*>(p.out) + b * p.o_sb + h * p.o_sh + lig * VEC, acc);
  } else {
    float* ws = p.ws + (static_cast<int64_t>(bh) * S + split) * (D + 2);
#pragma unroll
    for (int i = 0; i < VEC; ++i) ws[lig * VEC + i] = acc[i];
    if (lane == 0) {
      ws[D] = m;
      ws[D + 1] = l;
    }
  }
}

// One block of D threads per (b, h): merges the S split states of the workspace.
template <typename T, int D>
__global__ void __launch_bounds__(D) decode_reduce_kernel(const PatchAttnParams p) {
  const int bh = blockIdx.x, d = threadIdx.x, S = p.num_splits;
  const int b = bh / p.H, h = bh - b * p.H;
  const float* ws = p.ws + static_cast<int64_t>(bh) * S * (D + 2);
  float g = neg_inf();
  for (int s = 0; s < S; ++s) g = fmaxf(g, ws[s * (D + 2) + D]);   // finite: split 0 has the null key
  float num = 0.f, den = 0.f;
  for (int s = 0; s < S; ++s) {
    const float w = rescale(ws[s * (D + 2) + D], g);
    num += w * ws[s * (D + 2) + d];
    den += w * ws[s * (D + 2) + D + 1];
  }
  static_cast<T*>(p.out)[b * p.o_sb + h * p.o_sh + d] = from_float<T>(num / den);
}

// Whether the cluster variant runs natively here: a Hopper-class device and a module with sm_90+
// code for it (a module built for sm_80 only runs its sm_80 code on an H100, where the cluster
// body is compiled out). Cached per device.
template <typename Kernel>
bool cluster_ok(Kernel kernel) {
  static int state[kMaxDevices] = {};                          // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev >= kMaxDevices) return false;
  if (state[dev] == 0) {
    int major = 0;
    cudaFuncAttributes attr{};
    const bool yes = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                     major >= 9 && cudaFuncGetAttributes(&attr, kernel) == cudaSuccess &&
                     attr.binaryVersion >= 90 && attr.ptxVersion >= 90;      // not JIT from sm_80 PTX
    state[dev] = yes ? 1 : 2;
  }
  return state[dev] == 1;
}

template <typename T, int D>
cudaError_t launch_decode(const PatchAttnParams& p, int split_reduce, cudaStream_t stream) {
  const size_t smem = segment_smem_bytes(p.C);
  const int S = p.num_splits;
  const dim3 grid(static_cast<unsigned>(p.B * p.H), static_cast<unsigned>(S));
  const bool want_cluster = S > 1 && S <= kMaxClusterSplits && split_reduce != kSplitReduceKernel;
  if (want_cluster && cluster_ok(decode_kernel<T, D, true>)) {
    auto kernel = decode_kernel<T, D, true>;
    static int done[kMaxDevices] = {};
    if (smem > 32 * 1024) {
      const cudaError_t e = allow_dynamic_smem(kernel, smem, done);
      if (e != cudaSuccess) return e;
    }
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(kDecodeThreads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 1;
    attr[0].val.clusterDim.y = static_cast<unsigned>(S);
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, p);
    return e != cudaSuccess ? e : cudaGetLastError();
  }
  if (split_reduce == kSplitReduceCluster && S > 1) return cudaErrorNotSupported;
  auto kernel = decode_kernel<T, D, false>;
  static int done[kMaxDevices] = {};
  if (smem > 32 * 1024) {  // huge C only: static usage is ~2 KB, opt in above the 48 KB default
    const cudaError_t e = allow_dynamic_smem(kernel, smem, done);
    if (e != cudaSuccess) return e;
  }
  kernel<<<grid, kDecodeThreads, smem, stream>>>(p);
  if (S > 1) decode_reduce_kernel<T, D><<<p.B * p.H, D, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_decode_dim(const PatchAttnParams& p, int split_reduce, cudaStream_t stream) {
  switch (p.D) {
    case 32: return launch_decode<T, 32>(p, split_reduce, stream);
    case 64: return launch_decode<T, 64>(p, split_reduce, stream);
    case 128: return launch_decode<T, 128>(p, split_reduce, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_patch_attention(const PatchAttnParams& p, int dtype, int prefill_impl,
                                   int split_reduce, cudaStream_t stream) {
  NUWA_NVTX_RANGE(p.M == 1 ? "nuwa.patch_attention.decode" : "nuwa.patch_attention.prefill");
  if (p.B == 0 || p.H == 0 || p.M == 0) return cudaSuccess;
  if (p.num_splits < 1 || p.num_splits > 65535) return cudaErrorInvalidValue;
  if (p.M > 1) return launch_prefill(p, dtype, prefill_impl, stream);
  switch (dtype) {
    case kFloat32: return launch_decode_dim<float>(p, split_reduce, stream);
    case kFloat16: return launch_decode_dim<__half>(p, split_reduce, stream);
    case kBFloat16: return launch_decode_dim<__nv_bfloat16>(p, split_reduce, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace nuwa
