// Pieces of the patch attention op shared by the decode (patch_attention.cu) and prefill
// (patch_attention_prefill.cu) kernels.
//
// Key order inside a kernel: the null key/value first (bias 0), then the "segments": the valid
// context slots of the page table compacted in slot order (slot -1 is dropped here, so its page is
// never read), then the own page as the last segment. A segment is one physical page; its keys are
// 0..P-1 (own page: 0..q_start+m-1 for row m). The flat key index j over all segments is
// seg = j / P, key = j % P: any P (9, 100, 256) balances over the threads without per-page tails.
#pragma once

#include "common.cuh"

namespace nuwa {

// Dynamic shared memory of the segment list: seg_page int32[C + 1], then seg_bias fp32[C + 1].
inline size_t segment_smem_bytes(int C) { return static_cast<size_t>(C + 1) * 8; }

// Fills the segment list of sample b, head h; returns nv, the number of valid context slots
// (the own page is segment nv). Block-wide: every thread of the block (NWARPS warps) must call it.
// seg_bias holds the ADC bias times log2(e) (scores are in the base-2 domain).
template <int NWARPS>
__device__ int build_segments(const PatchAttnParams& p, int b, int h, int* seg_page, float* seg_bias,
                              int* warp_cnt) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int base = 0;
  for (int c0 = 0; c0 < p.C; c0 += NWARPS * 32) {  // block-uniform trip count
    const int c = c0 + tid;
    int page = -1;
    if (c < p.C) page = p.page_table[b * p.pt_sb + c * p.pt_sc];
    const bool valid = page >= 0;
    const unsigned ballot = __ballot_sync(kFullMask, valid);
    if (lane == 0) warp_cnt[warp] = __popc(ballot);
    __syncthreads();
    int off = base, total = 0;
#pragma unroll
    for (int w = 0; w < NWARPS; ++w) {
      off += w < warp ? warp_cnt[w] : 0;
      total += warp_cnt[w];
    }
    if (valid) {
      const int pos = off + __popc(ballot & ((1u << lane) - 1u));
      seg_page[pos] = page;
      seg_bias[pos] = __ldg(p.bias + c * p.bias_sr + h * p.bias_sh) * kLog2e;
    }
    base += total;
    __syncthreads();  // warp_cnt is rewritten by the next chunk
  }
  if (tid == 0) {
    seg_page[base] = p.own_page[b * p.own_s];
    seg_bias[base] = __ldg(p.bias + static_cast<int64_t>(p.own_rel) * p.bias_sr + h * p.bias_sh) * kLog2e;
  }
  __syncthreads();
  return base;
}

// Opts `kernel` in to `bytes` of dynamic shared memory (needed above 48 KB), once per device and
// size: a per-instantiation cache `done` keeps the launch path free of repeated attribute calls.
constexpr int kMaxDevices = 64;
template <typename Kernel>
inline cudaError_t allow_dynamic_smem(Kernel kernel, size_t bytes, int (&done)[kMaxDevices]) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (dev < kMaxDevices && static_cast<int>(bytes) <= done[dev]) return cudaSuccess;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (e == cudaSuccess && dev < kMaxDevices) done[dev] = static_cast<int>(bytes);
  return e;
}

// Softmax state merge (base 2): (m, l, acc) <- (m, l, acc) (+) (m_o, l_o, acc_o). Empty states have
// m = -inf, l = 0, acc = 0 and merge to zero weight.
template <int N>
__device__ __forceinline__ void merge_state(float& m, float& l, float (&acc)[N], float m_o, float l_o,
                                            const float (&acc_o)[N]) {
  const float mn = fmaxf(m, m_o);
  const float a = rescale(m, mn), b = rescale(m_o, mn);
  l = l * a + l_o * b;
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] = acc[i] * a + acc_o[i] * b;
  m = mn;
}

// The M > 1 shape (patch_attention_prefill.cu).
cudaError_t launch_prefill(const PatchAttnParams& p, int dtype, int impl, cudaStream_t stream);

}  // namespace nuwa
