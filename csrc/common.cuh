// Device helpers shared by the csrc/ kernels: dtype conversion, 16-byte vector loads, warp
// reductions, the NVTX range macro. No torch headers anywhere in csrc/ (the CPU torch wheel has no
// CUDA headers): launchers take raw pointers, element strides and a cudaStream_t.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "launchers.h"

#if defined(NUWA_FAST_HAVE_NVTX)
#include <nvtx3/nvToolsExt.h>
namespace nuwa {
struct NvtxRange {  // scoped push/pop; nvtx3 is header-only and a no-op without a profiler attached
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
};
}  // namespace nuwa
#define NUWA_NVTX_RANGE(name) ::nuwa::NvtxRange nuwa_nvtx_scope_(name)
#else
#define NUWA_NVTX_RANGE(name) ((void)0)
#endif

namespace nuwa {

constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// 16 bytes = VEC elements: 4 fp32 or 8 fp16/bf16.
template <typename T> struct Vec16 { static constexpr int N = 16 / static_cast<int>(sizeof(T)); };

// Raw 16-byte load through the read-only path; the caller guarantees 16-byte alignment
// (the Python wrapper checks pointers and strides and falls back to the reference otherwise).
__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

template <typename T>
__device__ __forceinline__ void unpack16(const uint4& raw, float (&out)[Vec16<T>::N]) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < Vec16<T>::N; ++i) out[i] = to_float<T>(e[i]);
}

template <typename T>
__device__ __forceinline__ void store16(T* p, const float (&in)[Vec16<T>::N]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < Vec16<T>::N; ++i) e[i] = from_float<T>(in[i]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// Element i of a null key/value row that is either in the dtype of q or fp32 (null_fp32).
template <typename T>
__device__ __forceinline__ float load_null(const void* base, int64_t off, int null_fp32) {
  return null_fp32 ? __ldg(static_cast<const float*>(base) + off)
                   : to_float<T>(static_cast<const T*>(base)[off]);
}

// Sum over aligned groups of WIDTH lanes (WIDTH a power of two <= 32); every lane gets its group's sum.
template <int WIDTH>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}

// exp2(x - m) that is 0 (not NaN) when both are -inf: used to rescale empty softmax states.
__device__ __forceinline__ float rescale(float x, float m) {
  return x == neg_inf() ? 0.f : exp2f(x - m);
}

}  // namespace nuwa
