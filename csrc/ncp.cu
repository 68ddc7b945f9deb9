// NCP (nearby context pool) tables on the device: select / add / remove. Semantics: the reference
// nuwa_fast/ops/reference.py (ncp_select, ncp_add, ncp_remove). The tables are tiny (one entry per
// patch of the grid, one per page), so add and remove run on a single thread: what matters is that
// they stay on the device and never synchronise with the host inside the patch loop.
#include "common.cuh"

namespace nuwa {
namespace {

// out[b, c] = physical page of slot c (offset d = rel_index^-1(c)) around patch *cur, -1 if none.
__global__ void ncp_select_kernel(const int32_t* page_index, const int32_t* cur, int32_t* out,
                                  int64_t o_sb, int64_t o_sc, int T, int Hg, int Wg, int et, int eh,
                                  int ew, int batch) {
  const int wx = 2 * ew + 1, wy = 2 * eh + 1, C = (et + 1) * wy * wx;
  const int64_t c0 = cur[0];
  const int64_t t0 = c0 / (static_cast<int64_t>(Hg) * Wg), y0 = (c0 / Wg) % Hg, x0 = c0 % Wg;
  const int64_t n = static_cast<int64_t>(batch) * C;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int b = static_cast<int>(idx / C), c = static_cast<int>(idx - static_cast<int64_t>(b) * C);
    const int64_t t = t0 + c / (wy * wx) - et;
    const int64_t y = y0 + (c / wx) % wy - eh;
    const int64_t x = x0 + c % wx - ew;
    const bool inside = t >= 0 && t < T && y >= 0 && y < Hg && x >= 0 && x < Wg;
    const int64_t logical = inside ? page_index[(t * Hg + y) * Wg + x] : -1;
    out[b * o_sb + c * o_sc] = logical >= 0 ? static_cast<int32_t>(logical * batch + b) : -1;
  }
}

__global__ void ncp_add_kernel(int32_t* page_index, int32_t* free_stack, int32_t* free_top,
                               const int32_t* cur, int32_t* page_out) {
  const int top = free_top[0] - 1;
  const int32_t page = free_stack[top > 0 ? top : 0];
  page_index[cur[0]] = page;
  free_top[0] = top;
  page_out[0] = page;
}

// Reads every page before unmapping, like the reference (pages are gathered, then pushed, then the
// patches unmapped). Padding entries (-1) touch only the scratch entries, as in the reference.
__global__ void ncp_remove_kernel(int32_t* page_index, int64_t n_index, int32_t* free_stack,
                                  int64_t n_stack, int32_t* free_top, const int32_t* patches,
                                  int64_t patches_s, int K) {
  const int64_t ns = n_index - 1, gs = n_stack - 1;
  const int top = free_top[0];
  int cnt = 0;
  for (int k = 0; k < K; ++k) {
    const int32_t pk = patches[k * patches_s];
    const bool valid = pk >= 0;
    const int32_t page = page_index[valid ? pk : ns];
    const int64_t pos = valid ? static_cast<int64_t>(top) + cnt : gs;
    cnt += valid;
    if (pos >= 0 && pos < n_stack) free_stack[pos] = page;
  }
  for (int k = 0; k < K; ++k) {
    const int32_t pk = patches[k * patches_s];
    if (pk >= 0) page_index[pk] = -1;
  }
  page_index[ns] = -1;
  free_top[0] = top + cnt;
}

}  // namespace

cudaError_t launch_ncp_select(const int32_t* page_index, int64_t n_index, const int32_t* cur,
                              int32_t* out, int64_t o_sb, int64_t o_sc, int T, int Hg, int Wg,
                              int et, int eh, int ew, int batch, cudaStream_t stream) {
  NUWA_NVTX_RANGE("nuwa.ncp_select");
  (void)n_index;
  const int64_t n = static_cast<int64_t>(batch) * (et + 1) * (2 * eh + 1) * (2 * ew + 1);
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  const int blocks = static_cast<int>(n / threads + 1 < 1024 ? n / threads + 1 : 1024);
  ncp_select_kernel<<<blocks, threads, 0, stream>>>(page_index, cur, out, o_sb, o_sc, T, Hg, Wg, et,
                                                     eh, ew, batch);
  return cudaGetLastError();
}

cudaError_t launch_ncp_add(int32_t* page_index, int32_t* free_stack, int32_t* free_top,
                           const int32_t* cur, int32_t* page_out, cudaStream_t stream) {
  NUWA_NVTX_RANGE("nuwa.ncp_add");
  ncp_add_kernel<<<1, 1, 0, stream>>>(page_index, free_stack, free_top, cur, page_out);
  return cudaGetLastError();
}

cudaError_t launch_ncp_remove(int32_t* page_index, int64_t n_index, int32_t* free_stack,
                              int64_t n_stack, int32_t* free_top, const int32_t* patches,
                              int64_t patches_s, int K, cudaStream_t stream) {
  NUWA_NVTX_RANGE("nuwa.ncp_remove");
  ncp_remove_kernel<<<1, 1, 0, stream>>>(page_index, n_index, free_stack, n_stack, free_top, patches,
                                         patches_s, K);
  return cudaGetLastError();
}

}  // namespace nuwa
