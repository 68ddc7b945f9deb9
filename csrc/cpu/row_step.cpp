// The whole decode row of the vision decoder in one call, on a CPU: embed -> L x (self-attention over
// the gathered [context | own | null] buffer, cross-attention to the text, MLP) -> ln_f -> head.
//
// Python module nuwa_fast's "_nuwa_cpu" (pybind11, raw pointers, no torch headers), built on first use
// by nuwa_fast/cpu_ext.py with the host compiler (-O3 -march=native) and driven by
// nuwa_fast.gathered.FusedStep (attention="fused"). Every lane (a row of the call) reads its context
// keys/values straight from the NCP page pool through its page table (pages [n_pages, L, 2, H, P, D],
// float32 or bfloat16, widened exactly): nothing is copied per lane, and lanes of a wave that select
// the same page read the same memory (one lane after another on the same thread, so the second read
// is a cache hit). The own page and the null key live in the static buffer K/V [R, H, Ntot, D] of the
// torch step ("gathered"), whose layout the scores keep: [context slots x P | own | null]. The row's
// own key/value is written there as the torch step does, and the logits of every row go to `logits`
// [R, V] (the sampler below, or the torch one, draws from them).
//
// One row of the batch (a lane's sample) is always computed by the same instruction sequence, whatever
// the number of rows in the call: products accumulate over k in a fixed order per output, reductions
// have a fixed tree. So a patch's tokens do not depend on how many lanes decode beside it (waves and
// the sequential schedule give the same logits bit for bit), which BLAS gemms do not promise.
//
// Threads: outputs of each product and the (head, row) pairs of attention are split over
// `threads` std::threads of a pool owned by the module (1 = the caller's thread only). Work is split by
// output, never inside a reduction, so results do not depend on the thread count either.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <unistd.h>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---- a tiny thread pool: run(n, fn) calls fn(i) for i in [0, n) split in contiguous chunks ----------
class Pool {
 public:
  void resize(int threads) {
    threads = threads < 1 ? 1 : threads;
    forked_check();
    if (threads == size_) return;
    stop();
    size_ = threads;
    const uint64_t now = gen_.load();  // new workers wait for the next job, never an old one
    for (int t = 1; t < size_; ++t) workers_.emplace_back([this, t, now] { loop(t, now); });
  }
  ~Pool() { stop(); }
  int size() const { return size_; }

  // fn(begin, end) over [0, n) split into size_ chunks (chunk t: thread t; thread 0 is the caller)
  void run(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    forked_check();
    if (size_ == 1 || n < 2) {
      fn(0, n);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &fn;
      n_ = n;
      pending_.store(size_ - 1);
      ++gen_;
    }
    cv_.notify_all();
    chunk(0, fn);
    while (pending_.load(std::memory_order_acquire) != 0) {
      // the workers' chunks are microseconds: spin, do not sleep
    }
  }

 private:
  void chunk(int t, const std::function<void(int64_t, int64_t)>& fn) {
    int64_t per = (n_ + size_ - 1) / size_;
    int64_t b = t * per, e = b + per < n_ ? b + per : n_;
    if (b < e) fn(b, e);
  }
  // a child of fork() has none of the parent's workers: forget them (never join or destroy them there)
  void forked_check() {
    if (pid_ == getpid()) return;
    pid_ = getpid();
    new std::vector<std::thread>(std::move(workers_));  // leaked on purpose: not joinable in this process
    workers_.clear();
    size_ = 1;
  }
  void loop(int t, uint64_t seen) {
    for (;;) {
      const std::function<void(int64_t, int64_t)>* job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        // spin briefly on the generation counter before sleeping: the next product follows at once
        lk.unlock();
        for (int i = 0; i < 20000 && gen_.load(std::memory_order_acquire) == seen && !quit_.load(); ++i) {
#if defined(__x86_64__)
          __builtin_ia32_pause();
#endif
        }
        lk.lock();
        cv_.wait(lk, [&] { return quit_.load() || gen_.load() != seen; });
        if (quit_.load()) return;
        seen = gen_.load();
        job = job_;
      }
      chunk(t, *job);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }
  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_.store(true);
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    quit_.store(false);
    size_ = 1;
  }
  int size_ = 1;
  pid_t pid_ = getpid();
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> quit_{false};
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t n_ = 0;
};

Pool& pool() {
  static Pool p;
  return p;
}

// ---- vector helpers: AVX-512, AVX2 + FMA, or scalar; VW floats per vector ----------------------------
#if defined(__AVX512F__)
#define NUWA_SIMD "avx512"
constexpr int64_t VW = 16;
using vf = __m512;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vset1(float a) { return _mm512_set1_ps(a); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vload_n(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline void vstore_n(float* p, int64_t n, vf v) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vfnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline float vsum(vf v) { return _mm512_reduce_add_ps(v); }
inline void vsum4(vf a, vf b, vf c, vf d, float* out) {
  out[0] = vsum(a), out[1] = vsum(b), out[2] = vsum(c), out[3] = vsum(d);
}
// out[j] = the sum of a[j]'s 16 lanes, j < 16, in one transpose-and-add tree (45 shuffles and adds for
// 16 sums, where 16 reductions take ~130): pairs of lanes, then quads, then 128-bit quarters
constexpr int kSumKeys = 16;
inline void vsum_keys(const vf* a, float* out) {
  __m512 t[8], u[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit quarter: [a0+a2, b0+b2, a1+a3, b1+b3]
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per quarter: the quarter's sums of keys 4i .. 4i+3
    const __m512d x = _mm512_castps_pd(t[2 * i]), y = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1)));
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_f32x4(w01, w23, _MM_SHUFFLE(3, 1, 3, 1))));
}
inline vf vround(vf v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf vexp2i(vf x, vf n) { return _mm512_scalef_ps(x, n); }            // x * 2^n
inline vf vzero_below(vf e, vf x, float lo) {                              // 0 where x < lo
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(lo), _CMP_GE_OQ), e);
}
#elif defined(__AVX2__) && defined(__FMA__)
#define NUWA_SIMD "avx2"
constexpr int64_t VW = 8;
using vf = __m256;
inline __m256i vmask(int64_t n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vset1(float a) { return _mm256_set1_ps(a); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vload_n(const float* p, int64_t n) { return _mm256_maskload_ps(p, vmask(n)); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline void vstore_n(float* p, int64_t n, vf v) { _mm256_maskstore_ps(p, vmask(n), v); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vfnma(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline float vsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
inline void vsum4(vf a, vf b, vf c, vf d, float* out) {  // four horizontal sums at once
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}
inline vf vround(vf v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf vexp2i(vf x, vf n) {                                             // x * 2^n, n in [-126, 127]
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(x, _mm256_castsi256_ps(e));
}
inline vf vzero_below(vf e, vf x, float lo) { return _mm256_and_ps(e, _mm256_cmp_ps(x, _mm256_set1_ps(lo), _CMP_GE_OQ)); }
#else
#define NUWA_SIMD "scalar"
constexpr int64_t VW = 1;
using vf = float;
inline vf vzero() { return 0.f; }
inline vf vset1(float a) { return a; }
inline vf vload(const float* p) { return *p; }
inline vf vload_n(const float* p, int64_t n) { return n > 0 ? *p : 0.f; }
inline void vstore(float* p, vf v) { *p = v; }
inline void vstore_n(float* p, int64_t n, vf v) { if (n > 0) *p = v; }
inline vf vfma(vf a, vf b, vf c) { return std::fma(a, b, c); }
inline vf vfnma(vf a, vf b, vf c) { return std::fma(-a, b, c); }
inline vf vadd(vf a, vf b) { return a + b; }
inline vf vsub(vf a, vf b) { return a - b; }
inline vf vmul(vf a, vf b) { return a * b; }
inline vf vdiv(vf a, vf b) { return a / b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline float vsum(vf v) { return v; }
inline void vsum4(vf a, vf b, vf c, vf d, float* out) { out[0] = a, out[1] = b, out[2] = c, out[3] = d; }
inline vf vround(vf v) { return std::nearbyint(v); }
inline vf vexp2i(vf x, vf n) { return std::ldexp(x, static_cast<int>(n)); }
inline vf vzero_below(vf e, vf x, float lo) { return x >= lo ? e : 0.f; }
#endif

#if !defined(__AVX512F__)
constexpr int kSumKeys = 4;  // AVX2 and scalar builds: scores of 4 keys per vsum4
inline void vsum_keys(const vf* a, float* out) { vsum4(a[0], a[1], a[2], a[3], out); }
#endif

// e^x, ~2 ulp (Cephes' polynomial); x < -87 (-inf included) gives 0, x is clamped at 88
inline vf vexp(vf x) {
  const vf xc = vmin(vmax(x, vset1(-87.0f)), vset1(88.0f));
  const vf n = vround(vmul(xc, vset1(1.44269504088896341f)));
  vf r = vfnma(n, vset1(0.693359375f), xc);
  r = vfnma(n, vset1(-2.12194440e-4f), r);
  vf p = vset1(1.9875691500e-4f);
  p = vfma(p, r, vset1(1.3981999507e-3f));
  p = vfma(p, r, vset1(8.3334519073e-3f));
  p = vfma(p, r, vset1(4.1665795894e-2f));
  p = vfma(p, r, vset1(1.6666665459e-1f));
  p = vfma(p, r, vset1(5.0000001201e-1f));
  p = vfma(p, vmul(r, r), vadd(r, vset1(1.0f)));
  return vzero_below(vexp2i(p, n), x, -87.0f);
}

// ---- y[r, n] = sum_k x[r, k] w[n, k] (+ b[n]) (+ y[r, n] when accumulate) --------------------------
// x [M, K] (row stride ldx), y [M, N] (row stride ldy); w is the nn.Linear weight [N, K] packed in panels
// of kPanel outputs (nuwa_fast.gathered.pack_panels): [ceil(N / kPanel), K, kPanel], zeros past N, so a
// step over k reads kPanel consecutive weights of one input. Every output is one FMA chain over k in
// order (acc = x[r, k] * w[n, k] + acc, k = 0 .. K-1), then + b[n], then + y[r, n]: which tile, panel
// group or thread an output falls in changes nothing in its arithmetic, so the tiles below are chosen for
// speed alone, and a lane's logits are the same bits whatever the number of lanes beside it.
//
// Register tiles of MR rows x NP panels (2 vectors per panel): MR * 2 * NP accumulators, the panels'
// weight vectors and one broadcast input fit the register file (16 vector registers with AVX2, 32 with
// AVX-512), with >= 6 independent chains to cover the FMA latency. The x value is broadcast, so no
// horizontal sum is needed: the rows of a call (up to kRowBlock of them) go through one tile, a weight
// panel is read once per call whatever the number of lanes, and a tile of 4-6 rows runs the FMA ports
// near their peak (the dot-product layout this replaced spent a third of its time in horizontal sums
// and loads of x, and ran 5 rows 2.3x slower, measured on this code's own shapes).
constexpr int kPanel = 2 * VW;
#if defined(__AVX512F__)
constexpr int kRowBlock = 8;
constexpr int kPanels[kRowBlock + 1] = {0, 4, 3, 2, 2, 1, 1, 1, 1};
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kRowBlock = 6;
constexpr int kPanels[kRowBlock + 1] = {0, 4, 2, 1, 1, 1, 1};
#else
constexpr int kRowBlock = 4;
constexpr int kPanels[kRowBlock + 1] = {0, 2, 2, 1, 1};
#endif

// rows [0, MR) x panels [p, p + NP): out[i * NP * kPanel + j] = the chain of output p * kPanel + j of row i
template <int MR, int NP>
inline void tile(const float* x, int64_t ldx, const float* wp, int64_t K, float* out) {
  constexpr int NV = 2 * NP;
  const int64_t ps = K * kPanel;  // elements per panel
  vf acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = vzero();
  for (int64_t k = 0; k < K; ++k) {
    const float* wk = wp + k * kPanel;
    if (MR == 1) {  // no reuse of a weight vector: let the FMA read it from memory
      const vf xv = vset1(x[k]);
      for (int j = 0; j < NV; ++j) acc[0][j] = vfma(xv, vload(wk + (j / 2) * ps + (j % 2) * VW), acc[0][j]);
    } else {
      vf wv[NV];
      for (int j = 0; j < NV; ++j) wv[j] = vload(wk + (j / 2) * ps + (j % 2) * VW);
      for (int i = 0; i < MR; ++i) {
        const vf xv = vset1(x[i * ldx + k]);
        for (int j = 0; j < NV; ++j) acc[i][j] = vfma(xv, wv[j], acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) vstore(out + i * NV * VW + j * VW, acc[i][j]);
}

// rows [0, MR) x panels [p0, p1): groups of kPanels[MR] panels, then single panels
template <int MR>
void rows_block(const float* x, int64_t ldx, const float* wp, const float* b, int64_t K, int64_t N, float* y,
                int64_t ldy, bool accumulate, int64_t p0, int64_t p1) {
  constexpr int NP = kPanels[MR];
  alignas(64) float out[MR * NP * kPanel];
  auto put = [&](int np, int64_t p) {
    const int64_t n0 = p * kPanel, n1 = std::min<int64_t>(N, n0 + np * kPanel);
    for (int i = 0; i < MR; ++i)
      for (int64_t n = n0; n < n1; ++n) {
        float v = out[i * np * kPanel + (n - n0)];
        if (b) v += b[n];
        float* dst = y + i * ldy + n;
        *dst = accumulate ? *dst + v : v;
      }
  };
  int64_t p = p0;
  for (; p + NP <= p1; p += NP) {
    tile<MR, NP>(x, ldx, wp + p * K * kPanel, K, out);
    put(NP, p);
  }
  for (; p < p1; ++p) {
    tile<MR, 1>(x, ldx, wp + p * K * kPanel, K, out);
    put(1, p);
  }
}

using RowsFn = void (*)(const float*, int64_t, const float*, const float*, int64_t, int64_t, float*, int64_t, bool,
                        int64_t, int64_t);
template <int... I>
constexpr std::array<RowsFn, sizeof...(I) + 1> rows_table(std::integer_sequence<int, I...>) {
  return {nullptr, rows_block<I + 1>...};
}
constexpr auto kRows = rows_table(std::make_integer_sequence<int, kRowBlock>{});

// panels [p0, p1) of every row; the panels are walked in chunks that stay in L2 while each block of
// kRowBlock rows passes over them (batch x lanes can exceed one block)
void linear_panels(const float* x, int64_t ldx, int64_t M, const float* wp, const float* b, int64_t K, int64_t N,
                   float* y, int64_t ldy, bool accumulate, int64_t p0, int64_t p1) {
  const int64_t chunk = std::max<int64_t>(4, (int64_t{256} << 10) / (K * kPanel * 4) / 4 * 4);  // ~256 KB
  for (int64_t c0 = p0; c0 < p1; c0 += chunk) {
    const int64_t c1 = std::min(p1, c0 + chunk);
    for (int64_t r0 = 0; r0 < M; r0 += kRowBlock) {
      const int64_t mr = std::min<int64_t>(kRowBlock, M - r0);
      kRows[mr](x + r0 * ldx, ldx, wp, b, K, N, y + r0 * ldy, ldy, accumulate, c0, c1);
    }
  }
}

// wp: packed panels (see above); the panels are split over the pool
void linear(const float* x, int64_t M, const float* wp, const float* b, int64_t K, int64_t N, float* y,
            bool accumulate = false) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
  pool().run(panels, [&](int64_t p0, int64_t p1) { linear_panels(x, K, M, wp, b, K, N, y, N, accumulate, p0, p1); });
}

void layer_norm(const float* x, int64_t M, int64_t W, const float* g, const float* b, float* y) {
  for (int64_t r = 0; r < M; ++r) {
    const float* xr = x + r * W;
    float* yr = y + r * W;
    double s = 0.0;
    for (int64_t i = 0; i < W; ++i) s += xr[i];
    const float mean = static_cast<float>(s / W);
    double v = 0.0;
    for (int64_t i = 0; i < W; ++i) {
      double d = xr[i] - mean;
      v += d * d;
    }
    const float inv = static_cast<float>(1.0 / std::sqrt(v / W + 1e-5));
    for (int64_t i = 0; i < W; ++i) yr[i] = (xr[i] - mean) * inv * g[i] + b[i];
  }
}

inline float dot(const float* a, const float* b, int64_t D) {
  const int64_t Dv = D / VW * VW;
  vf acc = vzero();
  for (int64_t d = 0; d < Dv; d += VW) acc = vfma(vload(a + d), vload(b + d), acc);
  if (D > Dv) acc = vfma(vload_n(a + Dv, D - Dv), vload_n(b + Dv, D - Dv), acc);
  return vsum(acc);
}

inline void axpy(float a, const float* x, float* y, int64_t D) {
  const int64_t Dv = D / VW * VW;
  const vf av = vset1(a);
  for (int64_t d = 0; d < Dv; d += VW) vstore(y + d, vfma(av, vload(x + d), vload(y + d)));
  if (D > Dv) vstore_n(y + Dv, D - Dv, vfma(av, vload_n(x + Dv, D - Dv), vload_n(y + Dv, D - Dv)));
}

// softmax(s[0..n)) in place, -inf entries give 0; returns false when every entry is -inf
bool softmax_inplace(float* s, int64_t n) {
  float m = kNegInf;
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  if (m == kNegInf) return false;
  const vf mv = vset1(m);
  vf acc = vzero();
  int64_t j = 0;
  for (; j + VW <= n; j += VW) {
    vf e = vexp(vsub(vload(s + j), mv));
    vstore(s + j, e);
    acc = vadd(acc, e);
  }
  if (j < n) {
    vf e = vexp(vsub(vload_n(s + j, n - j), mv));
    vstore_n(s + j, n - j, e);
    float t[VW];
    vstore(t, e);
    for (int64_t i = n - j; i < VW; ++i) t[i] = 0.f;  // lanes past n hold e^(0 - m): drop them
    acc = vadd(acc, vload(t));
  }
  const float inv = 1.f / vsum(acc);
  for (int64_t i = 0; i < n; ++i) s[i] *= inv;
  return true;
}

void gelu_tanh(float* x, int64_t n) {
  // 0.5 x (1 + tanh(c (x + a x^3))), tanh(u) = 1 - 2 / (e^2u + 1) with u clamped to [-9, 9]
  const float c = 0.7978845608028654f, a = 0.044715f;
  int64_t i = 0;
  for (; i + VW <= n; i += VW) {
    vf v = vload(x + i);
    vf u = vmul(vset1(c), vfma(vmul(vset1(a), v), vmul(v, v), v));
    u = vmin(vmax(u, vset1(-9.f)), vset1(9.f));
    vf t = vsub(vset1(1.f), vdiv(vset1(2.f), vadd(vexp(vadd(u, u)), vset1(1.f))));
    vstore(x + i, vmul(vmul(vset1(0.5f), v), vadd(vset1(1.f), t)));
  }
  for (; i < n; ++i) x[i] = 0.5f * x[i] * (1.f + std::tanh(c * (x[i] + a * x[i] * x[i] * x[i])));
}

// ---- the row ------------------------------------------------------------------------------------
// dims: see DIMS below; ptrs: GLOBAL_PTRS globals, then LAYER_PTRS per layer
enum Dim { L_, W_, H_, D_, P_, V_, LT_, F_, NTOT_, NSLOT_, OWN_OFF_, NULL_OFF_, POOL_BF16_, R_, NDIMS };
enum GPtr { TOK, POS, START, LNF_W, LNF_B, HEAD, BUF, ADD, COS_Q, SIN_Q, COS_K, SIN_K, LOGITS, OWN_B, POOL, PAGE_IDS,
            SLOT_BIAS, NGLOBAL };
enum LPtr {
  LN1_W, LN1_B, QKV, PROJ, LN2_W, LN2_B, CQ, CPROJ, LN3_W, LN3_B, FC1_W, FC1_B, FC2_W, FC2_B,
  KBUF, VBUF, KBIAS, TK, TV, TMASK, NLAYER
};

struct Scratch {
  std::vector<float> x, h, qkv, o, f;
  void fit(int64_t nr, int64_t W, int64_t F) {
    auto need = [](std::vector<float>& v, size_t n) { if (v.size() < n) v.resize(n); };
    need(x, nr * W);
    need(h, nr * W);
    need(qkv, nr * 3 * W);
    need(o, nr * W);
    need(f, nr * F);
  }
};

template <typename T>
inline T* ptr_(const int64_t* ptrs, int i) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(ptrs[i]));
}

void rope(float* t, const float* cs, const float* sn, int64_t H, int64_t D) {
  // rotate consecutive pairs of every head by the row's angles (the same for every head)
  for (int64_t h = 0; h < H; ++h) {
    float* th = t + h * D;
    for (int64_t i = 0; i < D / 2; ++i) {
      const float a = th[2 * i], b = th[2 * i + 1];
      th[2 * i] = a * cs[i] - b * sn[i];
      th[2 * i + 1] = a * sn[i] + b * cs[i];
    }
  }
}

// ---- one (row, head) of the self-attention over [context pages | own keys < s | null] ----------------
// Scores of kSumKeys keys at a time (independent FMA chains, one reduction tree), the output accumulated
// in NV registers.
// The context keys/values are the pool's: float32, or bfloat16 widened exactly (as the torch step
// widens them).
using bf16 = uint16_t;
inline vf vload(const bf16* p) {
#if defined(__AVX512F__)
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
#elif defined(__AVX2__) && defined(__FMA__)
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
#else
  uint32_t u = static_cast<uint32_t>(*p) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// scores of kSumKeys consecutive keys: one FMA chain per key over d, then one transpose-and-add tree
template <typename T>
inline void dot_keys(const float* q, const T* k, int64_t D, float* out) {
  vf a[kSumKeys];
  for (int j = 0; j < kSumKeys; ++j) a[j] = vzero();
  for (int64_t d = 0; d < D; d += VW) {
    const vf qv = vload(q + d);
    for (int j = 0; j < kSumKeys; ++j) a[j] = vfma(qv, vload(k + j * D + d), a[j]);
  }
  vsum_keys(a, out);
}

template <typename T>
inline void dot1(const float* q, const T* k, int64_t D, float* out) {
  vf a = vzero();
  for (int64_t d = 0; d < D; d += VW) a = vfma(vload(q + d), vload(k + d), a);
  *out = vsum(a);
}

// Context pages are read once per row and lane, and a wave's pages together outgrow the last-level
// cache, evicting the weights that every row reads again. Their loads are prefetched ahead with the
// non-temporal hint: the lines come into L1 and leave without displacing the weights from L2/L3
// (a gain measured on an AVX2 EPYC; on an AVX-512 Xeon the hint, T0 or none measured the same).
constexpr int64_t kPrefetchKeys = 16;  // keys ahead
template <typename T>
inline void prefetch_nta(const T* p, int64_t n) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t o = 0; o < n * static_cast<int64_t>(sizeof(T)); o += 64) _mm_prefetch(c + o, _MM_HINT_NTA);
#else
  (void)p, (void)n;
#endif
}

// scores of keys K[k0 .. k0+n) into sc (bias[j] per key, or the constant cb when bias is null); -inf bias:
// the key is not read. NTA: prefetch the keys ahead non-temporally (a context page)
template <bool NTA = false, typename T>
inline void score_keys(const float* q, const T* K, int64_t k0, int64_t n, int64_t D, float scale,
                       const float* bias, float cb, float* sc) {
  int64_t j = 0;
  if (NTA) prefetch_nta(K + k0 * D, (n < kPrefetchKeys ? n : kPrefetchKeys) * D);
  constexpr int KB = kSumKeys;
  for (; j + KB <= n; j += KB) {
    if (NTA && j + kPrefetchKeys < n) prefetch_nta(K + (k0 + j + kPrefetchKeys) * D, std::min<int64_t>(KB, n - j - kPrefetchKeys) * D);
    const float* b = bias ? bias + j : nullptr;
    if (b && std::all_of(b, b + KB, [](float v) { return v == kNegInf; })) {
      std::fill(sc + j, sc + j + KB, kNegInf);
      continue;
    }
    dot_keys(q, K + (k0 + j) * D, D, sc + j);
    for (int i = 0; i < KB; ++i) {
      const float bi = b ? b[i] : cb;
      sc[j + i] = bi == kNegInf ? kNegInf : sc[j + i] * scale + bi;
    }
  }
  for (; j < n; ++j) {
    const float bi = bias ? bias[j] : cb;
    if (bi == kNegInf) {
      sc[j] = kNegInf;
      continue;
    }
    dot1(q, K + (k0 + j) * D, D, sc + j);
    sc[j] = sc[j] * scale + bi;
  }
}

// pool: the page pool (T), pid[n_slots]: the lane's page per context slot (-1: empty), pstride: elements
// per page, koff/voff: this layer's and head's keys/values inside a page ([P, D] each), sbias[n_slots]:
// the ADC bias per slot; Kh/Vh: the static buffer [Ntot, D] fp32 (own keys, null), bh its bias row.
// Scores sit at [slot * P + t | own_off + j | null]: the torch step's buffer layout, so the softmax and
// the weighted sum see the keys in the same order as there.
template <int NV, typename T>
void head_attention(const float* q, const T* pool, const int64_t* pid, int64_t n_slots, int64_t pstride,
                    int64_t koff, int64_t voff, int64_t P, const float* sbias, const float* Kh, const float* Vh,
                    const float* bh, int64_t own_off, int64_t s, int64_t null_off, float ob, float scale, float* sc,
                    float* out) {
  constexpr int64_t D = NV * VW;
  const int64_t nc = n_slots * P;
  for (int64_t c = 0; c < n_slots; ++c) {
    if (pid[c] < 0 || sbias[c] == kNegInf) {
      std::fill(sc + c * P, sc + (c + 1) * P, kNegInf);
      continue;
    }
    score_keys<true>(q, pool + pid[c] * pstride + koff, 0, P, D, scale, static_cast<const float*>(nullptr),
                     sbias[c], sc + c * P);
  }
  score_keys(q, Kh, own_off, s, D, scale, static_cast<const float*>(nullptr), ob, sc + nc);
  score_keys(q, Kh, null_off, 1, D, scale, bh + null_off, 0.f, sc + nc + s);
  const int64_t n = nc + s + 1;
  vf acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = vzero();
  if (softmax_inplace(sc, n)) {
    for (int64_t c = 0; c < n_slots; ++c) {
      if (pid[c] < 0) continue;                     // its scores are 0 after the softmax
      const T* Vc = pool + pid[c] * pstride + voff;
      const float* pc = sc + c * P;
      prefetch_nta(Vc, (P < kPrefetchKeys ? P : kPrefetchKeys) * D);
      for (int64_t t = 0; t < P; ++t) {
        if (t + kPrefetchKeys < P) prefetch_nta(Vc + (t + kPrefetchKeys) * D, D);
        if (pc[t] != 0.f) {
          const vf pv = vset1(pc[t]);
          for (int v = 0; v < NV; ++v) acc[v] = vfma(pv, vload(Vc + t * D + v * VW), acc[v]);
        }
      }
    }
    auto add = [&](const float* Vrow, float pj) {
      const vf pv = vset1(pj);
      for (int v = 0; v < NV; ++v) acc[v] = vfma(pv, vload(Vrow + v * VW), acc[v]);
    };
    for (int64_t j = 0; j < s; ++j) add(Vh + (own_off + j) * D, sc[nc + j]);
    add(Vh + null_off * D, sc[nc + s]);
  }
  for (int v = 0; v < NV; ++v) vstore(out + v * VW, acc[v]);
}

template <typename T>
using HeadFn = void (*)(const float*, const T*, const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                        const float*, const float*, const float*, const float*, int64_t, int64_t, int64_t, float,
                        float, float*, float*);

template <typename T>
HeadFn<T> head_fn(int64_t D) {  // keep HEAD_VECTORS (the module attribute) in step
  if (D % VW) return nullptr;
  switch (D / VW) {
    case 1: return head_attention<1, T>;
    case 2: return head_attention<2, T>;
    case 4: return head_attention<4, T>;
    case 8: return head_attention<8, T>;
    case 16: return head_attention<16, T>;
    default: return nullptr;
  }
}

// ---- the sampler: nuwa_fast.sampling's keyed Gumbel-max draw, bit for bit in its integer part -----
// u(seed, sample, step, row, token) = ((h >> 8) + 0.5) / 2^24 with h the murmur3-finaliser chain of
// sampling.uniform; token = argmax(logits / T + (-log(-log u))) in double (T = 0: argmax of the logits).
inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  return h ^ (h >> 16);
}

enum SPtr { S_B, S_BT, S_SEED_LO, S_SEED_HI, S_SAMPLE_IDS, S_SAMPLE_STEPS, S_KNOWN, S_KMASK, NSAMPLER };

void sample_rows(const int64_t* sp, double temperature, double guidance, const float* logits, int64_t nb,
                 int64_t V, int64_t s, int64_t P, int64_t* buf) {
  const int64_t B = sp[S_B], Bt = sp[S_BT];
  const uint32_t seed_lo = static_cast<uint32_t>(sp[S_SEED_LO]), seed_hi = static_cast<uint32_t>(sp[S_SEED_HI]);
  const int64_t* sample_ids = reinterpret_cast<const int64_t*>(static_cast<uintptr_t>(sp[S_SAMPLE_IDS]));
  const int64_t* sample_steps = reinterpret_cast<const int64_t*>(static_cast<uintptr_t>(sp[S_SAMPLE_STEPS]));
  const int64_t* known = reinterpret_cast<const int64_t*>(static_cast<uintptr_t>(sp[S_KNOWN]));
  const bool* kmask = reinterpret_cast<const bool*>(static_cast<uintptr_t>(sp[S_KMASK]));
  const bool guided = Bt != B;
  const float g = static_cast<float>(guidance), T = static_cast<float>(temperature);
  // every (lane, sample) row is cut into C chunks of the vocabulary, drawn in parallel; the chunks' winners
  // are merged in order with a strict >, so the first maximum wins as in torch.argmax
  const int64_t rows = nb * B, C = pool().size() > 1 ? 2 * pool().size() : 1, chunk = (V + C - 1) / C;
  thread_local std::vector<double> best_v;
  thread_local std::vector<int64_t> best_i;
  best_v.assign(rows * C, -std::numeric_limits<double>::infinity());
  best_i.assign(rows * C, 0);
  double* bv = best_v.data();
  int64_t* bi = best_i.data();
  static std::vector<uint32_t> vocab_hash;  // the per-token-id half of the hash (sampling._vocab_hash)
  if (static_cast<int64_t>(vocab_hash.size()) != V) {
    vocab_hash.resize(V);
    for (int64_t v = 0; v < V; ++v) vocab_hash[v] = fmix32(static_cast<uint32_t>(v * 0x27D4EB2Fll + 0x165667B1ll));
  }
  const uint32_t* vhash = vocab_hash.data();
  pool().run(rows * C, [&](int64_t i0, int64_t i1) {
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t i = it / C, c = it % C, lane = i / B, b = i % B;
      const int64_t v0 = c * chunk, v1 = v0 + chunk < V ? v0 + chunk : V;
      const float* cond = logits + (lane * Bt + b) * V;
      const float* unc = guided ? logits + (lane * Bt + B + b) * V : nullptr;
      uint32_t key = 0, hi = 0;
      if (temperature != 0.0) {
        key = fmix32(seed_lo ^ 0x9E3779B9u);
        key = fmix32(key ^ fmix32(static_cast<uint32_t>(sample_ids[i] + 0x632BE5ABll)));
        key = fmix32(key ^ fmix32(static_cast<uint32_t>(sample_steps[i] + 0x85157AF5ll)));
        key = fmix32(key ^ fmix32(static_cast<uint32_t>(s + 0x4CF5AD43ll)));
        hi = seed_hi ? fmix32(seed_hi ^ 0x7F4A7C15u) : 0u;
      }
      double best = -std::numeric_limits<double>::infinity();
      int64_t arg = v0;
      for (int64_t v = v0; v < v1; ++v) {
        const float lg = guided ? unc[v] + g * (cond[v] - unc[v]) : cond[v];
        double val;
        if (temperature == 0.0) {
          val = lg;
        } else {
          const uint32_t vh = vhash[v];
          uint32_t h = fmix32(key ^ vh);
          if (seed_hi) h = fmix32(h ^ fmix32(hi + vh));
          const double u = (static_cast<double>(h >> 8) + 0.5) / 16777216.0;
          val = static_cast<double>(lg / T) - std::log(-std::log(u));
        }
        if (val > best) {
          best = val;
          arg = v;
        }
      }
      bv[it] = best;
      bi[it] = arg;
    }
  });
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t lane = i / B, b = i % B;
    int64_t arg = bi[i * C];
    double best = bv[i * C];
    for (int64_t c = 1; c < C; ++c)
      if (bv[i * C + c] > best) best = bv[i * C + c], arg = bi[i * C + c];
    if (kmask && kmask[lane * (P + 1) + s]) arg = known[lane * (P + 1) + s];
    for (int64_t j = b; j < Bt; j += B) buf[(lane * Bt + j) * (P + 1) + s] = arg;
  }
}

// row s of nr rows; sampler_addr != 0: draw the row's tokens into the token buffer (nb = nr / Bt lanes)
void row_step(uintptr_t dims_addr, uintptr_t ptrs_addr, int64_t s, int64_t nr, bool want_logits,
              uintptr_t sampler_addr, double temperature, double guidance) {
  const int64_t* dm = reinterpret_cast<const int64_t*>(dims_addr);
  const int64_t* pt = reinterpret_cast<const int64_t*>(ptrs_addr);
  const int64_t L = dm[L_], W = dm[W_], H = dm[H_], D = dm[D_], P = dm[P_], V = dm[V_], Lt = dm[LT_],
                F = dm[F_], Ntot = dm[NTOT_], n_slots = dm[NSLOT_], own_off = dm[OWN_OFF_],
                null_off = dm[NULL_OFF_], R = dm[R_];
  if (s < 0 || s > P) throw std::invalid_argument("row out of range");
  static std::mutex call_mu;  // one row at a time: the scratch and the pool are shared
  std::lock_guard<std::mutex> guard(call_mu);
  static Scratch sc;
  sc.fit(nr, W, F);
  float *x = sc.x.data(), *h = sc.h.data(), *qkv = sc.qkv.data(), *o = sc.o.data(), *f = sc.f.data();
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  // embed: row 0 is the start vector; row s >= 1 embeds token s-1 at its within-patch position
  const float* tok_w = ptr_<const float>(pt, TOK);
  const float* pos = ptr_<const float>(pt, POS);
  const int64_t* buf = ptr_<const int64_t>(pt, BUF);
  const float* add = ptr_<const float>(pt, ADD);
  for (int64_t r = 0; r < nr; ++r) {
    float* xr = x + r * W;
    if (s == 0) {
      std::memcpy(xr, ptr_<const float>(pt, START), W * sizeof(float));
    } else {
      const float* e = tok_w + buf[r * (P + 1) + s - 1] * W;
      const float* p = pos + (s - 1) * W;
      for (int64_t i = 0; i < W; ++i) xr[i] = e[i] + p[i];
    }
    if (add)
      for (int64_t i = 0; i < W; ++i) xr[i] += add[r * W + i];
  }
  const float *cq_t = ptr_<const float>(pt, COS_Q), *sq_t = ptr_<const float>(pt, SIN_Q);
  const float *ck_t = ptr_<const float>(pt, COS_K), *sk_t = ptr_<const float>(pt, SIN_K);
  const float* own_b = ptr_<const float>(pt, OWN_B);
  const int64_t half = D / 2;
  const bool pool_bf16 = dm[POOL_BF16_] != 0;
  const HeadFn<float> hfn = head_fn<float>(D);
  const HeadFn<bf16> hfn16 = head_fn<bf16>(D);
  if (!hfn) throw std::invalid_argument("the head size must be 1, 2, 4, 8 or 16 vectors of the build's width (VW floats)");
  if (nr > R) throw std::invalid_argument("more rows than the buffers hold");
  // the pool: pages [n_pages, L, 2, H, P, D]; a lane's page table [R, n_slots]; the slot bias [L, R, H, n_slots]
  const uintptr_t pool_addr = static_cast<uintptr_t>(pt[POOL]);
  const int64_t* page_ids = ptr_<const int64_t>(pt, PAGE_IDS);
  const float* slot_bias = ptr_<const float>(pt, SLOT_BIAS);
  const int64_t pstride = L * 2 * H * P * D;

  for (int64_t l = 0; l < L; ++l) {
    const int64_t* lp = pt + NGLOBAL + l * NLAYER;
    auto F32 = [&](int i) { return reinterpret_cast<const float*>(static_cast<uintptr_t>(lp[i])); };
    float* Kb = reinterpret_cast<float*>(static_cast<uintptr_t>(lp[KBUF]));
    float* Vb = reinterpret_cast<float*>(static_cast<uintptr_t>(lp[VBUF]));
    const float* kbias = F32(KBIAS);

    // ---- self-attention over [context | own | null] ----
    layer_norm(x, nr, W, F32(LN1_W), F32(LN1_B), h);
    linear(h, nr, F32(QKV), nullptr, W, 3 * W, qkv);
    for (int64_t r = 0; r < nr; ++r) {
      float* q = qkv + r * 3 * W;
      float* k = q + W;
      float* v = q + 2 * W;
      if (cq_t) {
        const int64_t at = (r * (P + 1) + s) * half;
        rope(q, cq_t + at, sq_t + at, H, D);
        rope(k, ck_t + at, sk_t + at, H, D);
      }
      if (s >= 1) {  // row s holds the key/value of token s-1: own position s-1
        for (int64_t hh = 0; hh < H; ++hh) {
          const int64_t at = ((r * H + hh) * Ntot + own_off + s - 1) * D;
          std::memcpy(Kb + at, k + hh * D, D * sizeof(float));
          std::memcpy(Vb + at, v + hh * D, D * sizeof(float));
        }
      }
    }
    // (head, row) pairs, rows innermost: the lanes of a wave that select the same page read it one after
    // another on the same thread, the second time from cache
    pool().run(nr * H, [&](int64_t i0, int64_t i1) {
      thread_local std::vector<float> sbuf;
      if (static_cast<int64_t>(sbuf.size()) < Ntot) sbuf.resize(Ntot);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t hh = i / nr, r = i % nr;
        const float* q = qkv + r * 3 * W + hh * D;
        const float* Kh = Kb + (r * H + hh) * Ntot * D;
        const float* Vh = Vb + (r * H + hh) * Ntot * D;
        const float* bh = kbias + (r * H + hh) * Ntot;
        const int64_t* pid = page_ids + r * n_slots;
        const float* sb = slot_bias + ((l * R + r) * H + hh) * n_slots;
        const int64_t koff = ((l * 2 + 0) * H + hh) * P * D, voff = ((l * 2 + 1) * H + hh) * P * D;
        const float ob = own_b[l * H + hh];
        float* out = o + r * W + hh * D;
        if (pool_bf16)
          hfn16(q, reinterpret_cast<const bf16*>(pool_addr), pid, n_slots, pstride, koff, voff, P, sb, Kh, Vh, bh,
                own_off, s, null_off, ob, scale, sbuf.data(), out);
        else
          hfn(q, reinterpret_cast<const float*>(pool_addr), pid, n_slots, pstride, koff, voff, P, sb, Kh, Vh, bh,
              own_off, s, null_off, ob, scale, sbuf.data(), out);
      }
    });
    linear(o, nr, F32(PROJ), nullptr, W, W, x, true);

    // ---- cross-attention to the text ----
    layer_norm(x, nr, W, F32(LN2_W), F32(LN2_B), h);
    linear(h, nr, F32(CQ), nullptr, W, W, qkv);  // the text queries, [nr, W] densely in qkv
    {
      const float* tk = F32(TK);
      const float* tv = F32(TV);
      const uint8_t* tm = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(lp[TMASK]));
      pool().run(nr * H, [&](int64_t i0, int64_t i1) {
        thread_local std::vector<float> sbuf;
        if (static_cast<int64_t>(sbuf.size()) < Lt + 1) sbuf.resize(Lt + 1);
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t r = i / H, hh = i % H;
          const float* q = qkv + r * W + hh * D;
          const float* Kh = tk + (r * H + hh) * Lt * D;
          const float* Vh = tv + (r * H + hh) * Lt * D;
          float* sc_ = sbuf.data();
          for (int64_t j = 0; j < Lt; ++j) sc_[j] = tm[r * Lt + j] ? dot(q, Kh + j * D, D) * scale : kNegInf;
          float* out = o + r * W + hh * D;
          std::memset(out, 0, D * sizeof(float));
          if (!softmax_inplace(sc_, Lt)) continue;
          for (int64_t j = 0; j < Lt; ++j)
            if (sc_[j] != 0.f) axpy(sc_[j], Vh + j * D, out, D);
        }
      });
    }
    linear(o, nr, F32(CPROJ), nullptr, W, W, x, true);

    // ---- MLP ----
    layer_norm(x, nr, W, F32(LN3_W), F32(LN3_B), h);
    linear(h, nr, F32(FC1_W), F32(FC1_B), W, F, f);
    gelu_tanh(f, nr * F);
    linear(f, nr, F32(FC2_W), F32(FC2_B), F, W, x, true);
  }
  if (!want_logits) return;
  layer_norm(x, nr, W, ptr_<const float>(pt, LNF_W), ptr_<const float>(pt, LNF_B), h);
  linear(h, nr, ptr_<const float>(pt, HEAD), nullptr, W, V, ptr_<float>(pt, LOGITS));
  if (sampler_addr) {
    const int64_t* sp = reinterpret_cast<const int64_t*>(sampler_addr);
    sample_rows(sp, temperature, guidance, ptr_<const float>(pt, LOGITS), nr / sp[S_BT], V, s, P,
                ptr_<int64_t>(pt, BUF));
  }
}

}  // namespace

PYBIND11_MODULE(_nuwa_cpu, m) {
  m.doc() = "nuwa-fast: the vision decoder's decode row in one call on a CPU (see csrc/cpu/row_step.cpp)";
  m.attr("NDIMS") = static_cast<int>(NDIMS);
  m.attr("NGLOBAL") = static_cast<int>(NGLOBAL);
  m.attr("NLAYER") = static_cast<int>(NLAYER);
  m.attr("NSAMPLER") = static_cast<int>(NSAMPLER);
  m.attr("SIMD") = NUWA_SIMD;
  m.attr("VW") = static_cast<int>(VW);
  m.attr("PANEL") = static_cast<int>(kPanel);  // outputs per weight panel: pack_panels' width
  m.attr("HEAD_VECTORS") = pybind11::make_tuple(1, 2, 4, 8, 16);  // head_fn's cases: head_dim / VW
  m.def("row_step", &row_step, "row s of nr rows (dims and ptrs: int64 arrays by address)",
        pybind11::arg("dims"), pybind11::arg("ptrs"), pybind11::arg("row"), pybind11::arg("rows"),
        pybind11::arg("logits"), pybind11::arg("sampler") = 0, pybind11::arg("temperature") = 1.0,
        pybind11::arg("guidance") = 1.0, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("set_threads", [](int n) { pool().resize(n); }, "threads of the module's pool (1: the caller only)");
  m.def("threads", [] { return pool().size(); });
}
