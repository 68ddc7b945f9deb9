// ADC dynamic positional bias gather: the dense form of what patch attention fuses.
// out[b, h, c] = bias[c, h] if page_table[b, c] >= 0 else -inf   (out [B, H, C] fp32 contiguous)
#include "common.cuh"

namespace nuwa {
namespace {

__global__ void adc_gather_kernel(const float* bias, int64_t bias_sr, int64_t bias_sh,
                                  const int32_t* page_table, int64_t pt_sb, int64_t pt_sc, float* out,
                                  int B, int H, int C) {
  const int64_t n = static_cast<int64_t>(B) * H * C;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = idx % C, bh = idx / C, h = bh % H, b = bh / H;   // out is [B, H, C]: c fastest
    const bool valid = page_table[b * pt_sb + c * pt_sc] >= 0;
    out[idx] = valid ? bias[c * bias_sr + h * bias_sh] : neg_inf();
  }
}

}  // namespace

cudaError_t launch_adc_gather(const float* bias, int64_t bias_sr, int64_t bias_sh,
                              const int32_t* page_table, int64_t pt_sb, int64_t pt_sc, float* out,
                              int B, int H, int C, cudaStream_t stream) {
  NUWA_NVTX_RANGE("nuwa.adc_gather");
  const int64_t n = static_cast<int64_t>(B) * H * C;
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  const int blocks = static_cast<int>((n + threads - 1) / threads < 4096 ? (n + threads - 1) / threads : 4096);
  adc_gather_kernel<<<blocks, threads, 0, stream>>>(bias, bias_sr, bias_sh, page_table, pt_sb, pt_sc,
                                                    out, B, H, C);
  return cudaGetLastError();
}

}  // namespace nuwa
