// Host-side launchers of the csrc/ kernels (declarations). Plain types only: raw device pointers,
// element strides (int64), sizes, a cudaStream_t. Included by the .cu files and by bindings.cpp.
// Every launcher returns the cudaError_t of its launches (cudaSuccess when there is nothing to do).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace nuwa {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Which kernel runs the M > 1 (prefill) shape. kPrefillAuto: tensor cores (wmma) for fp16/bf16,
// SIMT for fp32.
enum PrefillImpl : int { kPrefillAuto = 0, kPrefillSimt = 1, kPrefillWmma = 2 };

// How the S splits of a decode row are merged. kSplitReduceAuto: a thread block cluster merging
// through distributed shared memory on sm_90+ when S <= 8, else a second (reduce) kernel.
enum SplitReduce : int { kSplitReduceAuto = 0, kSplitReduceKernel = 1, kSplitReduceCluster = 2 };

// patch_attention arguments; layouts as nuwa_fast/ops/reference.py. Strides are in elements.
struct PatchAttnParams {
  const void* q;              // [B, H, M, D] dtype, last dim contiguous
  int64_t q_sb, q_sh, q_sm;
  const void* k;              // [N, H, P, D] dtype (a strided view of the pool)
  int64_t k_sn, k_sh, k_sp;
  const void* v;              // [N, H, P, D]
  int64_t v_sn, v_sh, v_sp;
  const int32_t* page_table;  // [B, C] int32, -1 = empty slot
  int64_t pt_sb, pt_sc;
  const int32_t* own_page;    // [B] int32
  int64_t own_s;
  const float* bias;          // [R, H] fp32
  int64_t bias_sr, bias_sh;
  const void* null_k;         // [H, D] dtype of q, or fp32 when null_fp32
  const void* null_v;
  int64_t nk_sh, nv_sh;
  int null_fp32;
  void* out;                  // [B, H, M, D] dtype, last dim contiguous
  int64_t o_sb, o_sh, o_sm;
  float* ws;                  // split decode workspace: [B*H, S, D + 2] fp32 (acc, max, sum)
  int B, H, M, D, P, C;
  int q_start, own_rel;
  float scale_log2;           // scale * log2(e): scores live in the base-2 domain
  int num_splits;             // S >= 1, decode (M == 1) only
};

cudaError_t launch_patch_attention(const PatchAttnParams& p, int dtype, int prefill_impl,
                                   int split_reduce, cudaStream_t stream);

// out[b, h, c] = bias[c, h] if page_table[b, c] >= 0 else -inf; out [B, H, C] fp32 contiguous.
cudaError_t launch_adc_gather(const float* bias, int64_t bias_sr, int64_t bias_sh,
                              const int32_t* page_table, int64_t pt_sb, int64_t pt_sc, float* out,
                              int B, int H, int C, cudaStream_t stream);

// out [B, C] int32 (strides o_sb, o_sc): physical page of each slot of the current patch.
cudaError_t launch_ncp_select(const int32_t* page_index, int64_t n_index, const int32_t* cur,
                              int32_t* out, int64_t o_sb, int64_t o_sc, int T, int Hg, int Wg,
                              int et, int eh, int ew, int batch, cudaStream_t stream);

// Pops a free logical page, maps patch *cur to it, writes it to page_out[0].
cudaError_t launch_ncp_add(int32_t* page_index, int32_t* free_stack, int32_t* free_top,
                           const int32_t* cur, int32_t* page_out, cudaStream_t stream);

// Frees the pages of patches[0..K) (-1 = padding) and unmaps those patches.
cudaError_t launch_ncp_remove(int32_t* page_index, int64_t n_index, int32_t* free_stack,
                              int64_t n_stack, int32_t* free_top, const int32_t* patches,
                              int64_t patches_s, int K, cudaStream_t stream);

}  // namespace nuwa
