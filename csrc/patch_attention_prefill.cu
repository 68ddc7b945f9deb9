// NCP patch attention, prefill shape (M > 1 rows per sample): the rows of a block share K/V tiles
// staged in shared memory. Same key order and softmax as the decode kernel (patch_attention.cuh).
//
// SIMT kernel (all dtypes; the fp32 path): grid (B*H, ceil(M/16)), 128 threads, 16 rows per block,
// 4 rows per warp. K/V tiles of 32 keys are converted to fp32 in shared memory; lane = key for the
// scores (K rows padded to D+1 floats: conflict-free), lane = head-dim column for P.V.
//
// Tensor-core kernel (fp16/bf16, wmma 16x16x16, fp32 accumulate): grid (B*H, ceil(M/64)), 128
// threads, each warp owns 16 rows. K/V tiles of 32 keys are double-buffered with cp.async (16-byte
// copies; masked keys are zero-filled with src-size 0, so unused pages are never read). Per tile:
// S = Q K^T (wmma) -> shared fp32 -> online softmax by lane pairs (2 lanes per row) -> P in the
// input dtype -> O += P V (wmma; the fp32 O tile lives in shared memory so that it can be rescaled
// by row).
#include <mma.h>

#include "patch_attention.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "nuwa_fast csrc needs sm_80 or newer (cp.async, bf16 wmma)"
#endif

namespace nuwa {
namespace {

constexpr int kPfThreads = 128;  // 4 warps

// ---------------------------------------------------------------------------------------------
// SIMT
// ---------------------------------------------------------------------------------------------
constexpr int kSimtRowsPerWarp = 4;
constexpr int kSimtBM = 4 * kSimtRowsPerWarp;  // 16 rows
constexpr int kSimtBN = 32;                    // keys per tile: lane = key

template <typename T, int D>
__global__ void __launch_bounds__(kPfThreads)
prefill_simt_kernel(const PatchAttnParams p) {
  constexpr int VEC = Vec16<T>::N, NVEC = D / VEC, DPL = D / 32, RPW = kSimtRowsPerWarp;
  constexpr int BM = kSimtBM, BN = kSimtBN;
  extern __shared__ int smem_dyn[];
  __shared__ float Qs[BM][D];        // q * scale * log2 e
  __shared__ float Ks[BN][D + 1];    // +1: lane = key reads column d without bank conflicts
  __shared__ float Vs[BN][D];
  __shared__ float kbias[BN];        // bias of each key of the tile (base 2)
  __shared__ int kown[BN];           // -1: context key; own page key index; INT_MAX: past the end
  __shared__ int warp_cnt[4];

  const int bh = blockIdx.x, m0 = blockIdx.y * BM;
  const int b = bh / p.H, h = bh - b * p.H;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int* seg_page = smem_dyn;
  float* seg_bias = reinterpret_cast<float*>(smem_dyn + p.C + 1);
  const int nv = build_segments<4>(p, b, h, seg_page, seg_bias, warp_cnt);
  const int rows = min(BM, p.M - m0);

  const T* qb = static_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh;
  for (int idx = tid; idx < BM * NVEC; idx += kPfThreads) {
    const int r = idx / NVEC, dv = idx - r * NVEC;
    float f[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) f[i] = 0.f;
    if (r < rows) unpack16<T>(ldg16(qb + (m0 + r) * p.q_sm + dv * VEC), f);
#pragma unroll
    for (int i = 0; i < VEC; ++i) Qs[r][dv * VEC + i] = f[i] * p.scale_log2;
  }
  __syncthreads();

  // Per row: softmax state seeded by the null key/value (bias 0), so m is always finite.
  float m_i[RPW], l_i[RPW], acc[RPW][DPL];
  int lim[RPW];
#pragma unroll
  for (int i = 0; i < RPW; ++i) {
    const int r = warp * RPW + i;
    lim[i] = p.q_start + m0 + r;                               // own keys < lim are visible
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < DPL; ++k)
      s += Qs[r][lane + 32 * k] * load_null<T>(p.null_k, h * p.nk_sh + lane + 32 * k, p.null_fp32);
    m_i[i] = group_sum<32>(s);
    l_i[i] = lane == 0 ? 1.f : 0.f;                            // per-lane partial sums
#pragma unroll
    for (int k = 0; k < DPL; ++k) acc[i][k] = load_null<T>(p.null_v, h * p.nv_sh + lane + 32 * k, p.null_fp32);
  }

  const int P = p.P;
  const int total = nv * P + p.q_start + m0 + rows - 1;        // the last row sees own keys < q_start+m
  const T* kbase = static_cast<const T*>(p.k) + h * p.k_sh;
  const T* vbase = static_cast<const T*>(p.v) + h * p.v_sh;
  for (int t0 = 0; t0 < total; t0 += BN) {
    if (tid < BN) {
      const int j = t0 + tid;
      if (j < total) {
        const int seg = j / P;
        kbias[tid] = seg_bias[seg];
        kown[tid] = seg == nv ? j - seg * P : -1;
      } else {
        kbias[tid] = 0.f;
        kown[tid] = 0x7fffffff;
      }
    }
    for (int idx = tid; idx < BN * NVEC; idx += kPfThreads) {
      const int kk = idx / NVEC, dv = idx - kk * NVEC, j = t0 + kk;
      float kf[VEC], vf[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) kf[i] = vf[i] = 0.f;
      if (j < total) {
        const int seg = j / P, key = j - seg * P;
        const int64_t page = seg_page[seg];
        unpack16<T>(ldg16(kbase + page * p.k_sn + key * p.k_sp + dv * VEC), kf);
        unpack16<T>(ldg16(vbase + page * p.v_sn + key * p.v_sp + dv * VEC), vf);
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        Ks[kk][dv * VEC + i] = kf[i];
        Vs[kk][dv * VEC + i] = vf[i];
      }
    }
    __syncthreads();

    float s[RPW];
#pragma unroll
    for (int i = 0; i < RPW; ++i) s[i] = 0.f;
#pragma unroll 8
    for (int d = 0; d < D; ++d) {
      const float kd = Ks[lane][d];
#pragma unroll
      for (int i = 0; i < RPW; ++i) s[i] += Qs[warp * RPW + i][d] * kd;
    }
    const float kb = kbias[lane];
    const int ko = kown[lane];
    float pr[RPW];
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
      const float x = ko < lim[i] ? s[i] + kb : neg_inf();
      const float mn = fmaxf(m_i[i], warp_max(x));
      const float alpha = exp2f(m_i[i] - mn);
      pr[i] = exp2f(x - mn);
      m_i[i] = mn;
      l_i[i] = l_i[i] * alpha + pr[i];
#pragma unroll
      for (int k = 0; k < DPL; ++k) acc[i][k] *= alpha;
    }
#pragma unroll 4
    for (int jj = 0; jj < BN; ++jj) {
      float vv[DPL];
#pragma unroll
      for (int k = 0; k < DPL; ++k) vv[k] = Vs[jj][lane + 32 * k];
#pragma unroll
      for (int i = 0; i < RPW; ++i) {
        const float pj = __shfl_sync(kFullMask, pr[i], jj);
#pragma unroll
        for (int k = 0; k < DPL; ++k) acc[i][k] += pj * vv[k];
      }
    }
    __syncthreads();  // the next tile overwrites Ks/Vs/kbias/kown
  }

  T* ob = static_cast<T*>(p.out) + b * p.o_sb + h * p.o_sh;
#pragma unroll
  for (int i = 0; i < RPW; ++i) {
    const int r = warp * RPW + i;
    const float inv = 1.f / group_sum<32>(l_i[i]);
    if (r < rows) {
#pragma unroll
      for (int k = 0; k < DPL; ++k) ob[(m0 + r) * p.o_sm + lane + 32 * k] = from_float<T>(acc[i][k] * inv);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor cores (wmma) + cp.async double buffering, fp16/bf16
// ---------------------------------------------------------------------------------------------
constexpr int kWmBM = 64;  // 4 warps x 16 rows
constexpr int kWmBN = 32;  // keys per tile

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_size = valid ? 16 : 0;                         // 0: zero-fill, nothing is read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_size));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Shared memory plan of the wmma kernel (bytes; every region 128-byte aligned, row pitches padded
// so that 16-row fragment pointers stay 32-byte aligned and ldmatrix avoids bank conflicts).
template <typename T, int D>
struct WmmaPlan {
  static constexpr int QLD = D + 8, KLD = D + 8, SLD = kWmBN + 4, PLD = kWmBN + 8, OLD = D + 4;
  static constexpr size_t align(size_t x) { return (x + 127) / 128 * 128; }
  static constexpr size_t q_off = 0;
  static constexpr size_t k_off = align(q_off + sizeof(T) * kWmBM * QLD);      // [2][BN][KLD]
  static constexpr size_t v_off = align(k_off + sizeof(T) * 2 * kWmBN * KLD);  // [2][BN][KLD]
  static constexpr size_t s_off = align(v_off + sizeof(T) * 2 * kWmBN * KLD);  // [BM][SLD] fp32
  static constexpr size_t p_off = align(s_off + sizeof(float) * kWmBM * SLD);  // [BM][PLD] T
  static constexpr size_t o_off = align(p_off + sizeof(T) * kWmBM * PLD);      // [BM][OLD] fp32
  static constexpr size_t kb_off = align(o_off + sizeof(float) * kWmBM * OLD); // [2][BN] fp32
  static constexpr size_t ko_off = kb_off + sizeof(float) * 2 * kWmBN;         // [2][BN] int32
  static constexpr size_t l_off = ko_off + sizeof(int) * 2 * kWmBN;            // [BM] fp32
  static constexpr size_t seg_off = align(l_off + sizeof(float) * kWmBM);      // segment list
  static size_t bytes(int C) { return seg_off + segment_smem_bytes(C); }
};

template <typename T, int D>
__global__ void __launch_bounds__(kPfThreads)
prefill_wmma_kernel(const PatchAttnParams p) {
  namespace wmma = nvcuda::wmma;
  using Plan = WmmaPlan<T, D>;
  constexpr int BM = kWmBM, BN = kWmBN, CH = D * static_cast<int>(sizeof(T)) / 16;  // 16 B chunks/row
  constexpr int QLD = Plan::QLD, KLD = Plan::KLD, SLD = Plan::SLD, PLD = Plan::PLD, OLD = Plan::OLD;
  extern __shared__ __align__(128) unsigned char smem[];
  T* Qs = reinterpret_cast<T*>(smem + Plan::q_off);
  T* Ks = reinterpret_cast<T*>(smem + Plan::k_off);
  T* Vs = reinterpret_cast<T*>(smem + Plan::v_off);
  float* Ss = reinterpret_cast<float*>(smem + Plan::s_off);
  T* Ps = reinterpret_cast<T*>(smem + Plan::p_off);
  float* Os = reinterpret_cast<float*>(smem + Plan::o_off);
  float* kbias = reinterpret_cast<float*>(smem + Plan::kb_off);
  int* kown = reinterpret_cast<int*>(smem + Plan::ko_off);
  float* Ls = reinterpret_cast<float*>(smem + Plan::l_off);
  int* seg_page = reinterpret_cast<int*>(smem + Plan::seg_off);
  float* seg_bias = reinterpret_cast<float*>(seg_page + p.C + 1);
  __shared__ int warp_cnt[4];

  const int bh = blockIdx.x, m0 = blockIdx.y * BM;
  const int b = bh / p.H, h = bh - b * p.H;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int nv = build_segments<4>(p, b, h, seg_page, seg_bias, warp_cnt);
  const int rows = min(BM, p.M - m0);
  const int P = p.P;
  const int total = nv * P + p.q_start + m0 + rows - 1;
  const int ntiles = (total + BN - 1) / BN;
  const T* qb = static_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh;
  const T* kbase = static_cast<const T*>(p.k) + h * p.k_sh;
  const T* vbase = static_cast<const T*>(p.v) + h * p.v_sh;

  for (int idx = tid; idx < BM * CH; idx += kPfThreads) {      // Q tile, rows past M zero-filled
    const int r = idx / CH, c = idx - r * CH;
    const bool ok = r < rows;
    cp_async16(Qs + r * QLD + c * (16 / sizeof(T)),
               ok ? static_cast<const void*>(qb + (m0 + r) * p.q_sm + c * (16 / sizeof(T))) : p.q, ok);
  }
  auto issue_tile = [&](int t, int buf) {
    const int t0 = t * BN;
    if (tid < BN) {
      const int j = t0 + tid;
      if (j < total) {
        const int seg = j / P;
        kbias[buf * BN + tid] = seg_bias[seg];
        kown[buf * BN + tid] = seg == nv ? j - seg * P : -1;
      } else {
        kbias[buf * BN + tid] = 0.f;
        kown[buf * BN + tid] = 0x7fffffff;
      }
    }
    for (int idx = tid; idx < BN * CH; idx += kPfThreads) {
      const int kk = idx / CH, c = idx - kk * CH, j = t0 + kk;
      const bool ok = j < total;
      const T* ks = static_cast<const T*>(p.k);
      const T* vs = static_cast<const T*>(p.v);
      if (ok) {
        const int seg = j / P, key = j - seg * P;
        const int64_t page = seg_page[seg];
        ks = kbase + page * p.k_sn + key * p.k_sp + c * (16 / sizeof(T));
        vs = vbase + page * p.v_sn + key * p.v_sp + c * (16 / sizeof(T));
      }
      cp_async16(Ks + (buf * BN + kk) * KLD + c * (16 / sizeof(T)), ks, ok);
      cp_async16(Vs + (buf * BN + kk) * KLD + c * (16 / sizeof(T)), vs, ok);
    }
    cp_async_commit();
  };
  issue_tile(0, 0);  // commit group 0 holds the Q tile and K/V tile 0 (total >= 1: q_start+m0 >= 1)

  // Per row state: lane pair (2*row, 2*row+1) of the warp owns row r0 + (lane >> 1).
  const int r0 = warp * 16, rl = lane >> 1, hf = lane & 1, row = r0 + rl;
  const int lim = p.q_start + m0 + row;
  cp_async_wait<0>();
  __syncthreads();
  float m_row, l_row;
  {
    float s = 0.f;
    for (int d = hf * (D / 2); d < (hf + 1) * (D / 2); ++d)
      s += to_float<T>(Qs[row * QLD + d]) * load_null<T>(p.null_k, h * p.nk_sh + d, p.null_fp32);
    s += __shfl_xor_sync(kFullMask, s, 1);
    m_row = s * p.scale_log2;
    l_row = 1.f;
    for (int d = hf * (D / 2); d < (hf + 1) * (D / 2); ++d)
      Os[row * OLD + d] = load_null<T>(p.null_v, h * p.nv_sh + d, p.null_fp32);
  }
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[D / 16];
#pragma unroll
  for (int kd = 0; kd < D / 16; ++kd) wmma::load_matrix_sync(qf[kd], Qs + r0 * QLD + kd * 16, QLD);
  __syncwarp();

  for (int t = 0; t < ntiles; ++t) {
    const int buf = t & 1;
    if (t + 1 < ntiles) {
      issue_tile(t + 1, buf ^ 1);  // buf^1 was released by the __syncthreads ending iteration t-1
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* Kt = Ks + buf * BN * KLD;
    const T* Vt = Vs + buf * BN * KLD;

    // S = Q K^T for this warp's 16 rows: [16, BN] fp32 (unscaled)
#pragma unroll
    for (int n = 0; n < BN / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
      wmma::fill_fragment(sf, 0.f);
#pragma unroll
      for (int kd = 0; kd < D / 16; ++kd) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
        wmma::load_matrix_sync(kf, Kt + n * 16 * KLD + kd * 16, KLD);
        wmma::mma_sync(sf, qf[kd], kf, sf);
      }
      wmma::store_matrix_sync(Ss + r0 * SLD + n * 16, sf, SLD, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax: lane pair per row, 16 keys per lane.
    {
      const float* kb = kbias + buf * BN;
      const int* ko = kown + buf * BN;
      float x[16], tmax = neg_inf();
#pragma unroll
      for (int c = 0; c < 16; ++c) {
        const int col = hf * 16 + c;
        const float v = Ss[row * SLD + col] * p.scale_log2 + kb[col];
        x[c] = ko[col] < lim ? v : neg_inf();
        tmax = fmaxf(tmax, x[c]);
      }
      tmax = fmaxf(tmax, __shfl_xor_sync(kFullMask, tmax, 1));
      const float mn = fmaxf(m_row, tmax);                     // finite: the null key seeded m_row
      const float alpha = exp2f(m_row - mn);
      float sum = 0.f;
#pragma unroll
      for (int c = 0; c < 16; ++c) {
        const float pc = exp2f(x[c] - mn);
        Ps[row * PLD + hf * 16 + c] = from_float<T>(pc);
        sum += pc;
      }
      sum += __shfl_xor_sync(kFullMask, sum, 1);
      l_row = l_row * alpha + sum;
      m_row = mn;
      if (alpha != 1.f) {
        for (int d = hf * (D / 2); d < (hf + 1) * (D / 2); ++d) Os[row * OLD + d] *= alpha;
      }
    }
    __syncwarp();

    // O += P V for this warp's rows: [16, D] fp32 in shared memory
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> of;
      wmma::load_matrix_sync(of, Os + r0 * OLD + n * 16, OLD, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
        wmma::load_matrix_sync(pf, Ps + r0 * PLD + kk * 16, PLD);
        wmma::load_matrix_sync(vf, Vt + kk * 16 * KLD + n * 16, KLD);
        wmma::mma_sync(of, pf, vf, of);
      }
      wmma::store_matrix_sync(Os + r0 * OLD + n * 16, of, OLD, wmma::mem_row_major);
    }
    __syncthreads();  // K/V buffer `buf` and the metadata are reused by the tile after next
  }

  if (hf == 0) Ls[row] = l_row;
  __syncwarp();
  constexpr int VEC = Vec16<T>::N, NVEC = D / VEC;
  T* ob = static_cast<T*>(p.out) + b * p.o_sb + h * p.o_sh;
  for (int idx = lane; idx < 16 * NVEC; idx += 32) {
    const int r = idx / NVEC, dv = idx - r * NVEC, rb = r0 + r;
    if (rb >= rows) continue;
    const float inv = 1.f / Ls[rb];
    float o[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) o[i] = Os[rb * OLD + dv * VEC + i] * inv;
    store16<T>(ob + (m0 + rb) * p.o_sm + dv * VEC, o);
  }
}

template <typename T, int D>
cudaError_t launch_simt(const PatchAttnParams& p, cudaStream_t stream) {
  const size_t smem = segment_smem_bytes(p.C);
  auto kernel = prefill_simt_kernel<T, D>;
  static int done[kMaxDevices] = {};
  if (smem > 4 * 1024) {  // static usage is up to ~41 KB (D = 128)
    const cudaError_t e = allow_dynamic_smem(kernel, smem, done);
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(static_cast<unsigned>(p.B * p.H), static_cast<unsigned>((p.M + kSimtBM - 1) / kSimtBM));
  kernel<<<grid, kPfThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t launch_wmma(const PatchAttnParams& p, cudaStream_t stream) {
  const size_t smem = WmmaPlan<T, D>::bytes(p.C);
  auto kernel = prefill_wmma_kernel<T, D>;
  static int done[kMaxDevices] = {};
  const cudaError_t e = allow_dynamic_smem(kernel, smem, done);
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(p.B * p.H), static_cast<unsigned>((p.M + kWmBM - 1) / kWmBM));
  kernel<<<grid, kPfThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, bool kTensorCores, int D>
cudaError_t launch_one(const PatchAttnParams& p, cudaStream_t stream) {
  if constexpr (kTensorCores) return launch_wmma<T, D>(p, stream);
  else return launch_simt<T, D>(p, stream);
}

template <typename T, bool kTensorCores>
cudaError_t launch_dim(const PatchAttnParams& p, cudaStream_t stream) {
  switch (p.D) {
    case 32: return launch_one<T, kTensorCores, 32>(p, stream);
    case 64: return launch_one<T, kTensorCores, 64>(p, stream);
    case 128: return launch_one<T, kTensorCores, 128>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_prefill(const PatchAttnParams& p, int dtype, int impl, cudaStream_t stream) {
  const bool tc = impl != kPrefillSimt;  // auto and wmma: tensor cores for 16-bit types
  switch (dtype) {
    case kFloat32:
      if (impl == kPrefillWmma) return cudaErrorInvalidValue;  // no fp32 wmma path
      return launch_dim<float, false>(p, stream);
    case kFloat16:
      return tc ? launch_dim<__half, true>(p, stream) : launch_dim<__half, false>(p, stream);
    case kBFloat16:
      return tc ? launch_dim<__nv_bfloat16, true>(p, stream) : launch_dim<__nv_bfloat16, false>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace nuwa
