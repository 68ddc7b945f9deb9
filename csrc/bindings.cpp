// pybind11 module nuwa_fast._C: thin launchers over raw device pointers (Python ints from
// tensor.data_ptr()), element strides, sizes and a stream (torch.cuda.current_stream().cuda_stream).
// No torch headers: the Python wrappers in nuwa_fast/_cuda_backend.py check dtypes, devices and
// shapes and allocate outputs. Every launcher raises RuntimeError on a CUDA launch error.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "launchers.h"

namespace py = pybind11;

namespace {

template <typename T> T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }
cudaStream_t stream_of(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("nuwa_fast._C.") + what + ": " + cudaGetErrorString(e));
}

using S4 = std::array<int64_t, 4>;
using S2 = std::array<int64_t, 2>;

void patch_attention(std::uintptr_t q, S4 q_st, std::uintptr_t k, S4 k_st, std::uintptr_t v, S4 v_st,
                     std::uintptr_t page_table, S2 pt_st, std::uintptr_t own_page, int64_t own_st,
                     std::uintptr_t bias, S2 bias_st, std::uintptr_t null_k, S2 nk_st, std::uintptr_t null_v,
                     S2 nv_st, bool null_fp32, std::uintptr_t out, S4 o_st, std::uintptr_t ws, int B, int H,
                     int M, int D, int P, int C, int q_start, int own_rel, double scale, int dtype,
                     int num_splits, int prefill_impl, int split_reduce, std::uintptr_t stream) {
  if (q_st[3] != 1 || k_st[3] != 1 || v_st[3] != 1 || o_st[3] != 1 || nk_st[1] != 1 || nv_st[1] != 1)
    throw std::invalid_argument("patch_attention: the head dim must be contiguous (stride 1)");
  if (M == 1 && num_splits > 1 && ws == 0) throw std::invalid_argument("patch_attention: split needs ws");
  nuwa::PatchAttnParams p{};
  p.q = ptr<const void>(q);
  p.q_sb = q_st[0]; p.q_sh = q_st[1]; p.q_sm = q_st[2];
  p.k = ptr<const void>(k);
  p.k_sn = k_st[0]; p.k_sh = k_st[1]; p.k_sp = k_st[2];
  p.v = ptr<const void>(v);
  p.v_sn = v_st[0]; p.v_sh = v_st[1]; p.v_sp = v_st[2];
  p.page_table = ptr<const int32_t>(page_table);
  p.pt_sb = pt_st[0]; p.pt_sc = pt_st[1];
  p.own_page = ptr<const int32_t>(own_page);
  p.own_s = own_st;
  p.bias = ptr<const float>(bias);
  p.bias_sr = bias_st[0]; p.bias_sh = bias_st[1];
  p.null_k = ptr<const void>(null_k);
  p.null_v = ptr<const void>(null_v);
  p.nk_sh = nk_st[0]; p.nv_sh = nv_st[0];
  p.null_fp32 = null_fp32 ? 1 : 0;
  p.out = ptr<void>(out);
  p.o_sb = o_st[0]; p.o_sh = o_st[1]; p.o_sm = o_st[2];
  p.ws = ptr<float>(ws);
  p.B = B; p.H = H; p.M = M; p.D = D; p.P = P; p.C = C;
  p.q_start = q_start; p.own_rel = own_rel;
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.num_splits = M == 1 ? num_splits : 1;
  check(nuwa::launch_patch_attention(p, dtype, prefill_impl, split_reduce, stream_of(stream)), "patch_attention");
}

void adc_gather(std::uintptr_t bias, S2 bias_st, std::uintptr_t page_table, S2 pt_st, std::uintptr_t out, int B,
                int H, int C, std::uintptr_t stream) {
  check(nuwa::launch_adc_gather(ptr<const float>(bias), bias_st[0], bias_st[1], ptr<const int32_t>(page_table),
                                pt_st[0], pt_st[1], ptr<float>(out), B, H, C, stream_of(stream)),
        "adc_gather");
}

void ncp_select(std::uintptr_t page_index, int64_t n_index, std::uintptr_t cur, std::uintptr_t out, S2 o_st,
                int T, int Hg, int Wg, int et, int eh, int ew, int batch, std::uintptr_t stream) {
  check(nuwa::launch_ncp_select(ptr<const int32_t>(page_index), n_index, ptr<const int32_t>(cur),
                                ptr<int32_t>(out), o_st[0], o_st[1], T, Hg, Wg, et, eh, ew, batch,
                                stream_of(stream)),
        "ncp_select");
}

void ncp_add(std::uintptr_t page_index, std::uintptr_t free_stack, std::uintptr_t free_top, std::uintptr_t cur,
             std::uintptr_t page_out, std::uintptr_t stream) {
  check(nuwa::launch_ncp_add(ptr<int32_t>(page_index), ptr<int32_t>(free_stack), ptr<int32_t>(free_top),
                             ptr<const int32_t>(cur), ptr<int32_t>(page_out), stream_of(stream)),
        "ncp_add");
}

void ncp_remove(std::uintptr_t page_index, int64_t n_index, std::uintptr_t free_stack, int64_t n_stack,
                std::uintptr_t free_top, std::uintptr_t patches, int64_t patches_st, int K, std::uintptr_t stream) {
  check(nuwa::launch_ncp_remove(ptr<int32_t>(page_index), n_index, ptr<int32_t>(free_stack), n_stack,
                                ptr<int32_t>(free_top), ptr<const int32_t>(patches), patches_st, K,
                                stream_of(stream)),
        "ncp_remove");
}

int runtime_version() {
  int v = 0;
  check(cudaRuntimeGetVersion(&v), "runtime_version");
  return v;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "nuwa-fast CUDA kernels: torch-independent launchers (pointers, strides, stream)";
  m.attr("DTYPE_FLOAT32") = static_cast<int>(nuwa::kFloat32);
  m.attr("DTYPE_FLOAT16") = static_cast<int>(nuwa::kFloat16);
  m.attr("DTYPE_BFLOAT16") = static_cast<int>(nuwa::kBFloat16);
  m.attr("PREFILL_AUTO") = static_cast<int>(nuwa::kPrefillAuto);
  m.attr("PREFILL_SIMT") = static_cast<int>(nuwa::kPrefillSimt);
  m.attr("PREFILL_WMMA") = static_cast<int>(nuwa::kPrefillWmma);
  m.attr("SPLIT_REDUCE_AUTO") = static_cast<int>(nuwa::kSplitReduceAuto);
  m.attr("SPLIT_REDUCE_KERNEL") = static_cast<int>(nuwa::kSplitReduceKernel);
  m.attr("SPLIT_REDUCE_CLUSTER") = static_cast<int>(nuwa::kSplitReduceCluster);
#ifdef NUWA_FAST_CUDA_ARCHS_STR
  m.attr("CUDA_ARCHS") = NUWA_FAST_CUDA_ARCHS_STR;
#endif
  m.def("runtime_version", &runtime_version, "CUDA runtime version the module was linked with");
  m.def("patch_attention", &patch_attention,
        "NCP patch attention (decode M == 1, split when num_splits > 1; prefill M > 1)", py::arg("q"),
        py::arg("q_strides"), py::arg("k"), py::arg("k_strides"), py::arg("v"), py::arg("v_strides"),
        py::arg("page_table"), py::arg("pt_strides"), py::arg("own_page"), py::arg("own_stride"), py::arg("bias"),
        py::arg("bias_strides"), py::arg("null_k"), py::arg("nk_strides"), py::arg("null_v"),
        py::arg("nv_strides"), py::arg("null_fp32"), py::arg("out"), py::arg("out_strides"), py::arg("ws"),
        py::arg("B"), py::arg("H"), py::arg("M"), py::arg("D"), py::arg("P"), py::arg("C"), py::arg("q_start"),
        py::arg("own_rel"), py::arg("scale"), py::arg("dtype"), py::arg("num_splits"), py::arg("prefill_impl"),
        py::arg("split_reduce"), py::arg("stream"));
  m.def("adc_gather", &adc_gather, "ADC bias gather into out [B, H, C] fp32", py::arg("bias"),
        py::arg("bias_strides"), py::arg("page_table"), py::arg("pt_strides"), py::arg("out"), py::arg("B"),
        py::arg("H"), py::arg("C"), py::arg("stream"));
  m.def("ncp_select", &ncp_select, "NCP select into out [B, C] int32", py::arg("page_index"),
        py::arg("n_index"), py::arg("cur"), py::arg("out"), py::arg("out_strides"), py::arg("T"), py::arg("Hg"),
        py::arg("Wg"), py::arg("et"), py::arg("eh"), py::arg("ew"), py::arg("batch"), py::arg("stream"));
  m.def("ncp_add", &ncp_add, "NCP add (pop a free page, map the current patch)", py::arg("page_index"),
        py::arg("free_stack"), py::arg("free_top"), py::arg("cur"), py::arg("page_out"), py::arg("stream"));
  m.def("ncp_remove", &ncp_remove, "NCP remove (push pages, unmap patches)", py::arg("page_index"),
        py::arg("n_index"), py::arg("free_stack"), py::arg("n_stack"), py::arg("free_top"), py::arg("patches"),
        py::arg("patches_stride"), py::arg("K"), py::arg("stream"));
}
