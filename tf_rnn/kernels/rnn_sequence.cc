// A whole LSTM or GRU layer as one op each way: the forward pass over all time steps, and its backward pass with
// every weight gradient.
//
// Why: TensorFlow trains an LSTM on a CPU at the speed of its op dispatch, not of its arithmetic: every time
// step is a MatMul plus ~20 small elementwise ops, each scheduled, allocated and synchronised on its own. Here
// the time loop runs inside one kernel, so a training step issues a handful of ops instead of ~1,000.
//
// Rows of the batch never interact in an LSTM, so each thread takes a block of rows through all time steps on
// its own: no synchronisation inside the loop, and the weights stay hot in each core's cache. The weight
// gradients are summed per block of kGradRows rows — a fixed size, not one block per thread — and the blocks'
// sums are added in block order at the end, so the gradients' bits do not depend on the machine's core count.
//
// Layout (Keras' LSTM): z = x·W + b + h_prev·U, gates i, f, c, o in blocks of `units` columns;
// i = σ(z_i), f = σ(z_f), g = tanh(z_c), o = σ(z_o); c = f·c_prev + i·g; h = o·tanh(c); h_{-1} = c_{-1} = 0.
// x is batch-major, [batch, time, ...], as Keras passes it (and so is d_h). Everything the ops write — h, c, tanh c,
// the gates, dz — is time-major, [time, batch, ...]: a thread's rows of one step are then one contiguous stretch
// of memory, which the hardware prefetcher streams, instead of rows time·4·units floats apart. For h that also
// means the next step's product reads h_prev's rows 512 bytes apart instead of 14 KiB (same L1 sets), and the
// backward op's transposes of h read whole cache lines in order: ~6% off the LSTM's op pair (kernel_ab).

#define EIGEN_USE_THREADS
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "Eigen/Core"
#if defined(__AVX2__) && defined(__FMA__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_rnn {
using namespace tensorflow;
using Arr = Eigen::Map<Eigen::ArrayXf>;
using CArr = Eigen::Map<const Eigen::ArrayXf>;

// ---- The matrix products: c[m×n] (+)= a[m×k] · b[k×n], for the small shapes of one time step. ----------------
//
// b is read in panels of kPanel columns and a block of kRows×kPanel results stays in registers. 6×16 is the
// AVX2 shape (12 accumulators, 2 vectors of b and 1 broadcast of a fill the 16 registers): measured here at
// 65-75 GFLOP/s on one core, against ~40 for 4×16 and ~20 for plain loops left to the compiler. The blocked
// path must stay a separate function from the portable one: inlined together, GCC spills the accumulators.
constexpr int kPanel = 16, kRows = 6;

// Both operands have unit stride along k, and the strides the inner loop steps by are compile-time constants:
// with runtime strides it spent as many instructions on addresses as on FMAs.
struct A {  // a(r, q) = p[r * rs + q]: rows of a matrix anywhere in a sequence.
  const float* p;
  int64_t rs;
};
struct B {  // Columns [s·kPanel, s·kPanel + kPanel) of b(q, ·) start at p + s * ps + q * kPanel.
  const float* p;
  int64_t ps, k, n;
};

// Every buffer comes from TensorFlow's allocator (allocate_temp): running out of memory is then an error the
// op returns, not a std::bad_alloc that aborts the process.
static Status Scratch(OpKernelContext* ctx, int64_t n, Tensor* t, float** p) {
  TF_RETURN_IF_ERROR(ctx->allocate_temp(DT_FLOAT, TensorShape({std::max<int64_t>(n, 1)}), t));
  *p = t->flat<float>().data();
  return absl::OkStatus();
}

// b[k×n] (element (q, j) at w[q * qs + j * js]) packed as [panel][k][kPanel] into buf (PackedSize floats), zero
// beyond column n: the weights, read at every step, then stream through the inner loop contiguously.
static int64_t PackedSize(int64_t k, int64_t n) { return (n + kPanel - 1) / kPanel * k * kPanel; }
static B Pack(const float* w, int64_t k, int64_t n, int64_t qs, int64_t js, float* buf) {
  std::fill(buf, buf + PackedSize(k, n), 0.f);
  for (int64_t q = 0; q < k; ++q)
    for (int64_t j = 0; j < n; ++j) buf[(j / kPanel * k + q) * kPanel + j % kPanel] = w[q * qs + j * js];
  return B{buf, k * kPanel, k, n};
}

// A product term a[m×k] · b[k×n]; a product is the sum of one or two terms (x·W + h·U in one pass over c).
struct Term {
  A a;
  B b;
};

// The forward ops' products write z, a new [time, batch, gates·units] array (megabytes) whose lines are in no cache:
// in a profile of the AVX-512 block, 13 % of its samples sat on its stores of z. Fetched for writing when the block
// starts, the lines arrive while its products run. Only where the sums start from a bias (the forward ops): the
// backward's products write small, hot scratch (prefetching it too measured no better).
template <int R, int NP>
static inline __attribute__((always_inline)) void PrefetchRows(const float* c, int64_t ldc) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int h = 0; h < NP; ++h) __builtin_prefetch(c + r * ldc + kPanel * h, /*rw=*/1, /*locality=*/3);
}

// Where a block's sums start: row_init[j] in every row when given (a bias, at the panel's first column: the forward
// ops' products start from it rather than from a copy of it in c), else c's own values if acc_in, else 0.
template <int R>
static void BlockPortable(const Term* terms, int nterms, int64_t s, int64_t r0, float* c, int64_t ldc, int cols,
                          bool acc_in, const float* row_init) {
  float acc[R][kPanel] = {};
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < cols; ++j) acc[r][j] = row_init ? row_init[j] : acc_in ? c[r * ldc + j] : 0.f;
  for (int n = 0; n < nterms; ++n) {
    const A& a = terms[n].a;
    const float* b = terms[n].b.p + s * terms[n].b.ps;
    for (int64_t q = 0; q < terms[n].b.k; ++q)
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < cols; ++j) acc[r][j] += a.p[(r0 + r) * a.rs + q] * b[q * kPanel + j];
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < cols; ++j) c[r * ldc + j] = acc[r][j];
}

template <int R>
static void Block(const Term* terms, int nterms, int64_t s, int64_t r0, float* c, int64_t ldc, bool acc_in,
                  const float* row_init) {
#if defined(__AVX2__) && defined(__FMA__)
  if (row_init) PrefetchRows<R, 1>(c, ldc);
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h)
      acc[r][h] = row_init ? _mm256_loadu_ps(row_init + 8 * h)
                  : acc_in ? _mm256_loadu_ps(c + r * ldc + 8 * h)
                           : _mm256_setzero_ps();
  for (int n = 0; n < nterms; ++n) {
    const float* a[R];  // One pointer per row: a row's q-th element is then one base + index address.
    for (int r = 0; r < R; ++r) a[r] = terms[n].a.p + (r0 + r) * terms[n].a.rs;
    const int64_t k = terms[n].b.k;
    const float* b = terms[n].b.p + s * terms[n].b.ps;
#pragma GCC unroll 4
    for (int64_t q = 0; q < k; ++q, b += kPanel) {
      const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 x = _mm256_broadcast_ss(a[r] + q);
        acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(c + r * ldc + 8 * h, acc[r][h]);
#else
  BlockPortable<R>(terms, nterms, s, r0, c, ldc, kPanel, acc_in, row_init);
#endif
}

template <bool Full>
static void Panel(const Term* terms, int nterms, int64_t m, int64_t s, float* c, int64_t ldc, int cols, bool acc_in,
                  const float* row_init) {
  auto block = [&](auto rows, int64_t r) {
    constexpr int R = decltype(rows)::value;
    if constexpr (Full)
      Block<R>(terms, nterms, s, r, c + r * ldc, ldc, acc_in, row_init);
    else
      BlockPortable<R>(terms, nterms, s, r, c + r * ldc, ldc, cols, acc_in, row_init);
  };
  int64_t r = 0;
  for (; r + kRows <= m; r += kRows) block(std::integral_constant<int, kRows>(), r);
  for (; r + 2 <= m; r += 2) block(std::integral_constant<int, 2>(), r);
  if (r < m) block(std::integral_constant<int, 1>(), r);
}

// The AVX2 products: c[m×n] (+)= Σ terms a·b, every b [·×n]; rows of c are ldc apart; the sums start as Block's.
static void GemmAvx2(std::initializer_list<Term> terms, int64_t m, float* c, int64_t ldc, bool acc_in,
                     const float* row_init) {
  const Term* t = terms.begin();
  const int nterms = static_cast<int>(terms.size());
  const int64_t n = t->b.n;
  for (int64_t s = 0; s * kPanel < n; ++s) {  // Panel-outer: one panel of b serves every block of rows.
    const int cols = static_cast<int>(std::min<int64_t>(kPanel, n - s * kPanel));
    const float* init = row_init ? row_init + s * kPanel : nullptr;
    if (cols == kPanel)  // Only a last panel narrower than 16 columns (n % 16 != 0) takes the portable path.
      Panel<true>(t, nterms, m, s, c + s * kPanel, ldc, cols, acc_in, init);
    else
      Panel<false>(t, nterms, m, s, c + s * kPanel, ldc, cols, acc_in, init);
  }
}

// ---- The AVX-512 products, chosen at run time where the CPU has avx512f. ----------------------------------------
//
// The same packed panels of 16 columns, read two at a time: a block of kRows512 rows × 32 columns keeps 24 of the
// 32 zmm registers as accumulators (2 more for b, 1 for the broadcast of a). On
// AVX-512 the AVX2 block above fills half of each register and half of the register file. Every result is the same
// sequence of fused multiply-adds as on the AVX2 path (k in order, terms in order), so the two paths agree bit for
// bit wherever the AVX2 path has no narrower-than-16 last panel (tests/test_fused.py compares them).
//
// One library serves both CPUs: only these functions are compiled for avx512f (a target attribute, not a global
// -mavx512f, so the rest of the library — Eigen's elementwise code included — stays AVX2 code that runs anywhere
// the fused path is allowed), and they are called only after the CPU said it has avx512f.
constexpr int kRows512 = 12;

#if defined(TF_RNN_EMULATE_AVX512)
// Tests only (tests/test_fused.py builds it so): the AVX-512 path's code on a CPU without AVX-512. A 16-float vector
// is a pair of AVX2 vectors and every operation the same fused multiply-add per lane, so results are bit for bit the
// real instructions'; only the speed is not.
#define TF_RNN_AVX512
struct V16 {
  __m256 lo, hi;
};
static inline V16 Zero16() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
static inline V16 Load16(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline V16 Broadcast16(const float* p) { return {_mm256_broadcast_ss(p), _mm256_broadcast_ss(p)}; }
static inline V16 Fma16(V16 a, V16 b, V16 c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
static inline V16 LoadFirst(const float* p, int n) {  // Lanes [0, n) from p, zero beyond; nothing read beyond.
  alignas(64) float v[16] = {};
  std::memcpy(v, p, n * sizeof(float));
  return Load16(v);
}
static inline void StoreFirst(float* p, V16 x, int n) {  // Lanes [0, n) to p; nothing written beyond.
  alignas(64) float v[16];
  _mm256_store_ps(v, x.lo);
  _mm256_store_ps(v + 8, x.hi);
  std::memcpy(p, v, n * sizeof(float));
}
static bool CpuHasAvx512() { return true; }
// How many AVX-512 blocks ran: the tests' proof that a call took this path, whose results may equal the other's.
static std::atomic<int64_t> emulated_blocks{0};
#define TF_RNN_COUNT_BLOCK() emulated_blocks.fetch_add(1, std::memory_order_relaxed)
REGISTER_OP("TfRnnEmulatedBlocks").Output("blocks: int64").SetIsStateful().SetShapeFn(shape_inference::ScalarShape);
class EmulatedBlocks : public OpKernel {
 public:
  explicit EmulatedBlocks(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    Tensor* out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<int64_t>()() = emulated_blocks.load();
  }
};
REGISTER_KERNEL_BUILDER(Name("TfRnnEmulatedBlocks").Device(DEVICE_CPU), EmulatedBlocks);
#else
#define TF_RNN_COUNT_BLOCK()
#define TF_RNN_AVX512 __attribute__((target("avx512f")))
using V16 = __m512;
TF_RNN_AVX512 static inline V16 Zero16() { return _mm512_setzero_ps(); }
TF_RNN_AVX512 static inline V16 Load16(const float* p) { return _mm512_loadu_ps(p); }
TF_RNN_AVX512 static inline V16 Broadcast16(const float* p) { return _mm512_set1_ps(*p); }
TF_RNN_AVX512 static inline V16 Fma16(V16 a, V16 b, V16 c) { return _mm512_fmadd_ps(a, b, c); }
TF_RNN_AVX512 static inline V16 LoadFirst(const float* p, int n) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
}
TF_RNN_AVX512 static inline void StoreFirst(float* p, V16 x, int n) {
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), x);
}
static bool CpuHasAvx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}
#endif

// R rows × NP panels (16·NP columns) of c from panels s .. s+NP-1; `cols` < 16 only for a last single panel, whose
// columns beyond are neither read nor written (b is zero-padded there, so its loads need no mask). The sums start as
// Block's.
template <int R, int NP>
TF_RNN_AVX512 static void Block512(const Term* terms, int nterms, int64_t s, int64_t r0, float* c, int64_t ldc,
                                   int cols, bool acc_in, const float* row_init) {
  TF_RNN_COUNT_BLOCK();
  if (row_init) PrefetchRows<R, NP>(c, ldc);
  // Unrolled by pragmas: left to itself GCC kept acc[12][2] in memory on the stack for these two loops (the bias
  // stored there 12 times and loaded back at each block's start, 7 % of its samples on an AMD EPYC with AVX-512; the
  // sums stored and reloaded at its end); unrolled, every sum stays in its zmm register from first load to last store.
  V16 acc[R][NP];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int h = 0; h < NP; ++h) {
      const float* from = row_init ? row_init + kPanel * h : c + r * ldc + kPanel * h;
      acc[r][h] = !row_init && !acc_in ? Zero16() : cols == kPanel ? Load16(from) : LoadFirst(from, cols);
    }
  for (int n = 0; n < nterms; ++n) {
    const float* a[R];
    for (int r = 0; r < R; ++r) a[r] = terms[n].a.p + (r0 + r) * terms[n].a.rs;
    const int64_t k = terms[n].b.k, ps = terms[n].b.ps;
    const float* b = terms[n].b.p + s * ps;
#pragma GCC unroll 4
    for (int64_t q = 0; q < k; ++q, b += kPanel) {
      V16 bv[NP];
      for (int h = 0; h < NP; ++h) bv[h] = Load16(b + h * ps);
      for (int r = 0; r < R; ++r) {
        const V16 x = Broadcast16(a[r] + q);
        for (int h = 0; h < NP; ++h) acc[r][h] = Fma16(x, bv[h], acc[r][h]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int h = 0; h < NP; ++h)
      if (cols == kPanel)
        StoreFirst(c + r * ldc + kPanel * h, acc[r][h], kPanel);
      else
        StoreFirst(c + r * ldc, acc[r][h], cols);
}

template <int NP>
static void Panel512(const Term* terms, int nterms, int64_t m, int64_t s, float* c, int64_t ldc, int cols,
                     bool acc_in, const float* row_init) {
  auto block = [&](auto rows, int64_t r) {
    Block512<decltype(rows)::value, NP>(terms, nterms, s, r, c + r * ldc, ldc, cols, acc_in, row_init);
  };
  int64_t r = 0;
  for (; r + kRows512 <= m; r += kRows512) block(std::integral_constant<int, kRows512>(), r);
  if (r + 8 <= m) block(std::integral_constant<int, 8>(), r), r += 8;
  if (r + 4 <= m) block(std::integral_constant<int, 4>(), r), r += 4;
  if (r + 2 <= m) block(std::integral_constant<int, 2>(), r), r += 2;
  if (r < m) block(std::integral_constant<int, 1>(), r);
}

static void GemmAvx512(std::initializer_list<Term> terms, int64_t m, float* c, int64_t ldc, bool acc_in,
                       const float* row_init) {
  const Term* t = terms.begin();
  const int nterms = static_cast<int>(terms.size());
  const int64_t n = t->b.n;
  for (int64_t s = 0; s * kPanel < n;) {
    const int64_t left = n - s * kPanel;
    const float* init = row_init ? row_init + s * kPanel : nullptr;
    if (left >= 2 * kPanel) {
      Panel512<2>(t, nterms, m, s, c + s * kPanel, ldc, kPanel, acc_in, init);
      s += 2;
    } else {
      Panel512<1>(t, nterms, m, s, c + s * kPanel, ldc, static_cast<int>(std::min<int64_t>(kPanel, left)), acc_in,
                  init);
      s += 1;
    }
  }
}

// ---- The bfloat16 products on AMX tiles (the ops' precision="bfloat16"), where the CPU has amx_bf16. -------------
//
// c[m×n] (+)= Σ a·b with a and b rounded to bfloat16 (round to nearest even) and every sum in float32: TDPBF16PS adds
// each exact product of two bfloat16 values into a float32 accumulator. The state, the per-row arithmetic and the
// weight-gradient sums stay float32; only the operands of the products lose bits (8 of the mantissa's 24). One tile
// product is 16 × 16 results over k = 32: 16 cycles, against the ~128 the AVX-512 block takes for the same float32
// work, so on AMX the products stop being most of the step (benchmarks/README.md, item 17).
//
// Operands are bfloat16 copies the ops make: a row-major with k contiguous, every row readable to k rounded up to 32
// (zero there) and 16 rows from any block's first (the buffers are padded); b packed in panels of 16 columns as pairs
// of k interleaved ([k/2][16][2], the tiles' "VNNI" layout), zero beyond k and n. Every tile is 16 rows × 64 bytes;
// c in blocks of 32 × 32 (four tiles), 16 rows or columns at the edges; a block that c cannot hold whole (fewer
// rows or columns than its tiles) goes through a small buffer.
#if !defined(TF_RNN_EMULATE_AVX512)
#define TF_RNN_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))
using bf16 = uint16_t;
constexpr int64_t kTileK = 32;  // bfloat16 values of k per tile row.
static int64_t RoundUp(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// AMX is usable only after Linux grants the process its tile state (arch_prctl), and only where the CPU has it.
static bool AmxReady() {
  static const bool ready = [] {
    unsigned a, b, c, d;  // CPUID leaf 7: amx_bf16 and amx_tile (EDX bits 22, 24), then avx512_bf16 (EAX bit 5).
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24))) return false;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return false;
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
    return CpuHasAvx512() && syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  }();
  return ready;
}

// n floats → bfloat16, round to nearest even (VCVTNEPS2BF16: denormals read as zero).
TF_RNN_AMX static void ToBf16(const float* x, int64_t n, bf16* out) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) _mm256_storeu_si256((__m256i*)(out + j), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + j)));
  if (j < n) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - j)) - 1);
    const __m256i v = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + j));
    _mm256_mask_storeu_epi16(out + j, mask, v);
  }
}

// b[k×n] (element (q, j) at w[q * qs + j * js]) as bfloat16 panels [n/16][kp/2][16][2], kp = k rounded up to kTileK;
// zero beyond k and n. Returns the panel stride in bf16 values.
static int64_t PackedSizeBf16(int64_t k, int64_t n) { return (n + kPanel - 1) / kPanel * RoundUp(k, kTileK) * kPanel; }
struct BBf16 {
  const bf16* p;
  int64_t ps, k, n;  // k: rounded up to kTileK.
};
TF_RNN_AMX static BBf16 PackBf16(const float* w, int64_t k, int64_t n, int64_t qs, int64_t js, bf16* buf) {
  const int64_t kp = RoundUp(k, kTileK), ps = kp * kPanel;
  std::fill(buf, buf + PackedSizeBf16(k, n), bf16{0});
  float row[kPanel];
  for (int64_t q = 0; q < k; ++q)
    for (int64_t s = 0; s * kPanel < n; ++s) {
      const int cols = static_cast<int>(std::min<int64_t>(kPanel, n - s * kPanel));
      for (int j = 0; j < cols; ++j) row[j] = w[q * qs + (s * kPanel + j) * js];
      bf16 out[kPanel];
      ToBf16(row, cols, out);
      for (int j = 0; j < cols; ++j) buf[s * ps + (q / 2 * kPanel + j) * 2 + q % 2] = out[j];
    }
  return BBf16{buf, ps, kp, n};
}

// Rows [k0, k0 + m) of a packed b from m rows of floats (row r at x + r * ldx, n columns): the backward ops' dz,
// gathered step after step along k. Two rows of a pair in one step interleave in registers; a pair split between
// two steps (m odd) is written one value at a time.
TF_RNN_AMX static void PackRowsBf16(const float* x, int64_t ldx, int64_t m, int64_t n, int64_t k0, bf16* pack,
                                     int64_t ps) {
  // Where, in each 64 values, the interleave puts value i of the first row (even i) and of the second (odd).
  const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int64_t r = 0; r < m;) {
    const int64_t k = k0 + r;
    for (int64_t s = 0; s * kPanel < n; ++s) {
      const int cols = static_cast<int>(std::min<int64_t>(kPanel, n - s * kPanel));
      const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1);
      bf16* to = pack + s * ps + k / 2 * 2 * kPanel;
      const __m512 a = _mm512_maskz_loadu_ps(mask, x + r * ldx + s * kPanel);
      if (k % 2 == 0 && r + 1 < m) {
        const __m512 b = _mm512_maskz_loadu_ps(mask, x + (r + 1) * ldx + s * kPanel);
        _mm512_storeu_si512(to, _mm512_permutexvar_epi16(pairs, (__m512i)_mm512_cvtne2ps_pbh(b, a)));
      } else {
        alignas(32) bf16 v[kPanel];
        _mm256_store_si256((__m256i*)v, (__m256i)_mm512_cvtneps_pbh(a));
        for (int j = 0; j < cols; ++j) to[2 * j + k % 2] = v[j];
      }
    }
    r += (k % 2 == 0 && r + 1 < m) ? 2 : 1;
  }
}

// Zeroes rows [k, kp) of a packed b (kp: k rounded up to kTileK): the gathered products read whole tiles of k.
static void ZeroRowsFrom(bf16* pack, int64_t ps, int64_t n, int64_t k) {
  const int64_t kp = RoundUp(k, kTileK);
  for (int64_t s = 0; s * kPanel < n; ++s) {
    bf16* panel = pack + s * ps;
    if (k % 2)
      for (int j = 0; j < kPanel; ++j) panel[(k / 2 * kPanel + j) * 2 + 1] = 0;
    std::fill(panel + RoundUp(k, 2) * kPanel, panel + kp * kPanel, bf16{0});
  }
}

struct ABf16 {  // a(r, q) = p[r * rs + q], bfloat16.
  const bf16* p;
  int64_t rs;
};
struct TermBf16 {
  ABf16 a;
  BBf16 b;
};

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: c's 2 × 2 blocks of 16 × 16 floats; 4-5: a's two 16-row halves; 6-7: b's two panels. RT × CT tiles of
// c (RT, CT in {1, 2}) at rows r0.. and panels s.., ldc bytes apart; the sums start from `init` (ldi bytes apart; the
// same rows for both row tiles when ldi_half is 0), or zero when init is null.
template <int RT, int CT>
TF_RNN_AMX static void TileBlock(const TermBf16* terms, int nterms, int64_t s, int64_t r0, float* c, int64_t ldc,
                                 const float* init, int64_t ldi, int64_t init_half) {
  // The tiles' numbers are part of the instructions: spelled out, not computed.
  const float* init2 = init ? init + init_half : nullptr;
  float* c2 = c + 16 * (ldc / 4);
  if (init) _tile_loadd(0, init, ldi); else _tile_zero(0);
  if constexpr (CT == 2) { if (init) _tile_loadd(1, init + kPanel, ldi); else _tile_zero(1); }
  if constexpr (RT == 2) { if (init) _tile_loadd(2, init2, ldi); else _tile_zero(2); }
  if constexpr (RT == 2 && CT == 2) { if (init) _tile_loadd(3, init2 + kPanel, ldi); else _tile_zero(3); }
  for (int n = 0; n < nterms; ++n) {
    const TermBf16& t = terms[n];
    const bf16* a = t.a.p + r0 * t.a.rs;
    const bf16* b = t.b.p + s * t.b.ps;
    const int64_t lda = t.a.rs * 2;
    for (int64_t q = 0; q < t.b.k; q += kTileK, b += kTileK * kPanel) {
      _tile_loadd(4, a + q, lda);
      if constexpr (RT == 2) _tile_loadd(5, a + 16 * t.a.rs + q, lda);
      _tile_loadd(6, b, 64);
      if constexpr (CT == 2) _tile_loadd(7, b + t.b.ps, 64);
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (CT == 2) _tile_dpbf16ps(1, 4, 7);
      if constexpr (RT == 2) _tile_dpbf16ps(2, 5, 6);
      if constexpr (RT == 2 && CT == 2) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, ldc);
  if constexpr (CT == 2) _tile_stored(1, c + kPanel, ldc);
  if constexpr (RT == 2) _tile_stored(2, c2, ldc);
  if constexpr (RT == 2 && CT == 2) _tile_stored(3, c2 + kPanel, ldc);
}

// The tiles of one block of rows, configured when it starts and released when it ends: between the two the thread
// runs only this block's code, while before and after other code on it (oneDNN's) may configure the tiles its own
// way. Once per block, not per product: configuring and releasing around each product took a fifth of its time.
struct AmxTiles {
  TF_RNN_AMX AmxTiles() {
    TileConfig config;
    for (int i = 0; i < 8; ++i) config.rows[i] = 16, config.colsb[i] = 64;
    // GCC 12's _tile_loadconfig tells the compiler it reads 8 bytes of the config, which then drops the stores to
    // the rest as dead (and the tiles fault): a barrier keeps them.
    asm volatile("" : : "r"(&config) : "memory");
    _tile_loadconfig(&config);
  }
  TF_RNN_AMX ~AmxTiles() { _tile_release(); }  // The tiles' 8 KiB of state no longer saved at each context switch.
};

// c[m×n] (+)= Σ terms a·b (bfloat16 operands, float32 sums); rows of c ldc floats apart. The sums start from c
// (acc_in), from `bias16` (16 copies of a bias row, n floats apart: a tile loads 16 rows), or zero. Only while an
// AmxTiles lives on the thread.
TF_RNN_AMX static void GemmAmx(std::initializer_list<TermBf16> terms, int64_t m, float* c, int64_t ldc, bool acc_in,
                               const float* bias16 = nullptr) {
  const TermBf16* t = terms.begin();
  const int nterms = static_cast<int>(terms.size());
  const int64_t n = t->b.n;
  alignas(64) float edge[32 * 32];
  for (int64_t s = 0; s * kPanel < n;) {
    const int64_t cols = std::min<int64_t>(2 * kPanel, n - s * kPanel);
    const int CT = cols > kPanel ? 2 : 1;
    for (int64_t r = 0; r < m; r += 32) {
      const int64_t rows = std::min<int64_t>(32, m - r);
      const int RT = rows > 16 ? 2 : 1;
      const bool whole = rows == 16 * RT && cols == kPanel * CT;
      float* out = c + r * ldc + s * kPanel;
      float* dst = whole ? out : edge;
      const int64_t ld = whole ? ldc : 32;
      const float* init = nullptr;
      int64_t ldi = ld * 4, half = 16 * ld;
      if (!whole) {
        std::fill(edge, edge + 32 * 32, 0.f);
        if (acc_in || bias16)
          for (int64_t i = 0; i < rows; ++i)
            std::copy_n(acc_in ? out + i * ldc : bias16 + s * kPanel, cols, edge + i * 32);
        if (acc_in || bias16) init = edge;
      } else if (acc_in) {
        init = out;
      } else if (bias16) {
        init = bias16 + s * kPanel, ldi = n * 4, half = 0;
      }
      if (RT == 2 && CT == 2) TileBlock<2, 2>(t, nterms, s, r, dst, ld * 4, init, ldi, half);
      else if (RT == 2) TileBlock<2, 1>(t, nterms, s, r, dst, ld * 4, init, ldi, half);
      else if (CT == 2) TileBlock<1, 2>(t, nterms, s, r, dst, ld * 4, init, ldi, half);
      else TileBlock<1, 1>(t, nterms, s, r, dst, ld * 4, init, ldi, half);
      if (!whole)
        for (int64_t i = 0; i < rows; ++i) std::copy_n(edge + i * 32, cols, out + i * ldc);
    }
    s += CT;
  }
}
#endif

// ---- The forward ops' per-row arithmetic, in either vector width. -------------------------------------------------
//
// The per-row arithmetic (σ and tanh of every gate and of c, the cell's update) is a fifth of the LSTM's forward op
// (a timing-only build without it: 0.80 of its time), and Eigen's code for it is AVX2 code here (the library is
// compiled for AVX2; Eigen picks its vector width at compile time). So the arithmetic is written once, over a vector
// type: 8 floats (AVX2) or 16 (AVX-512, or two AVX2 vectors in the tests' emulated build). σ and tanh are Eigen's
// own float algorithms (scalar_logistic_op's packet path, ptanh_float with FMA), operation for operation, and a
// row's last lanes go through the same vector code (masked loads and stores) rather than scalar code: every value
// is the same sequence of operations on both paths, so the paths still agree bit for bit (tests/test_fused.py).
struct Lanes8 {
  using V = __m256;
  static constexpr int kWidth = 8;
  static inline __m256i Mask(int n) {  // Lanes [0, n) set.
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline V Load(const float* p, int n) {
    return n == kWidth ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, Mask(n));
  }
  static inline void Store(float* p, V x, int n) {
    if (n == kWidth)
      _mm256_storeu_ps(p, x);
    else
      _mm256_maskstore_ps(p, Mask(n), x);
  }
  static inline V Set(float x) { return _mm256_set1_ps(x); }
  static inline V Add(V a, V b) { return _mm256_add_ps(a, b); }
  static inline V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static inline V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static inline V Div(V a, V b) { return _mm256_div_ps(a, b); }
  static inline V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline V Min(V a, V b) { return _mm256_min_ps(a, b); }
  static inline V Max(V a, V b) { return _mm256_max_ps(a, b); }
  static inline V Floor(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static inline V ZeroWhereBelow(V x, V a, V lo) { return _mm256_andnot_ps(_mm256_cmp_ps(a, lo, _CMP_LT_OQ), x); }
  static inline V Pow2(V e) {  // 2^e for integral e in [0, 255] - 127, as float bits.
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvttps_epi32(e), 23));
  }
};

#if defined(TF_RNN_EMULATE_AVX512)
struct Lanes16 {  // Two Lanes8 per vector: the same operation on every lane.
  using L = Lanes8;
  using V = V16;
  static constexpr int kWidth = 16;
  static inline V Load(const float* p, int n) { return LoadFirst(p, n); }
  static inline void Store(float* p, V x, int n) { StoreFirst(p, x, n); }
  static inline V Set(float x) { return {L::Set(x), L::Set(x)}; }
  static inline V Add(V a, V b) { return {L::Add(a.lo, b.lo), L::Add(a.hi, b.hi)}; }
  static inline V Sub(V a, V b) { return {L::Sub(a.lo, b.lo), L::Sub(a.hi, b.hi)}; }
  static inline V Mul(V a, V b) { return {L::Mul(a.lo, b.lo), L::Mul(a.hi, b.hi)}; }
  static inline V Div(V a, V b) { return {L::Div(a.lo, b.lo), L::Div(a.hi, b.hi)}; }
  static inline V Fma(V a, V b, V c) { return {L::Fma(a.lo, b.lo, c.lo), L::Fma(a.hi, b.hi, c.hi)}; }
  static inline V Min(V a, V b) { return {L::Min(a.lo, b.lo), L::Min(a.hi, b.hi)}; }
  static inline V Max(V a, V b) { return {L::Max(a.lo, b.lo), L::Max(a.hi, b.hi)}; }
  static inline V Floor(V a) { return {L::Floor(a.lo), L::Floor(a.hi)}; }
  static inline V ZeroWhereBelow(V x, V a, V lo) {
    return {L::ZeroWhereBelow(x.lo, a.lo, lo.lo), L::ZeroWhereBelow(x.hi, a.hi, lo.hi)};
  }
  static inline V Pow2(V e) { return {L::Pow2(e.lo), L::Pow2(e.hi)}; }
};
#else
struct Lanes16 {
  using V = __m512;
  static constexpr int kWidth = 16;
  TF_RNN_AVX512 static inline V Load(const float* p, int n) { return LoadFirst(p, n); }
  TF_RNN_AVX512 static inline void Store(float* p, V x, int n) { StoreFirst(p, x, n); }
  TF_RNN_AVX512 static inline V Set(float x) { return _mm512_set1_ps(x); }
  TF_RNN_AVX512 static inline V Add(V a, V b) { return _mm512_add_ps(a, b); }
  TF_RNN_AVX512 static inline V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
  TF_RNN_AVX512 static inline V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  TF_RNN_AVX512 static inline V Div(V a, V b) { return _mm512_div_ps(a, b); }
  TF_RNN_AVX512 static inline V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  TF_RNN_AVX512 static inline V Min(V a, V b) { return _mm512_min_ps(a, b); }
  TF_RNN_AVX512 static inline V Max(V a, V b) { return _mm512_max_ps(a, b); }
  TF_RNN_AVX512 static inline V Floor(V a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  }
  TF_RNN_AVX512 static inline V ZeroWhereBelow(V x, V a, V lo) {
    return _mm512_maskz_mov_ps(static_cast<__mmask16>(~_mm512_cmp_ps_mask(a, lo, _CMP_LT_OQ)), x);
  }
  TF_RNN_AVX512 static inline V Pow2(V e) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvttps_epi32(e), 23)); }
};
#endif

// σ(x) as Eigen's scalar_logistic_op<float>::packetOp: exp(x/2)² / (1 + exp(x/2)²), exp by Cephes' reduction and a
// degree-5 polynomial; 0 below -104.
template <class L>
static inline __attribute__((always_inline)) typename L::V Logistic(typename L::V x0) {
  using V = typename L::V;
  V x = L::Mul(L::Min(x0, L::Set(16.6355324f)), L::Set(0.5f));
  const V m = L::Floor(L::Fma(x, L::Set(1.44269504088896341f), L::Set(0.5f)));
  V r = L::Fma(m, L::Set(-0.693359375f), x);
  r = L::Fma(m, L::Set(2.12194440e-4f), r);
  const V r2 = L::Mul(r, r);
  const V even = L::Fma(r2, L::Set(4.1898667812347412109375e-2f), L::Set(0.49999141693115234375f));
  const V odd = L::Fma(r2, L::Set(8.33471305668354034423828125e-3f), L::Set(0.16666877269744873046875f));
  V p = L::Fma(r, odd, even);
  p = L::Fma(r2, p, L::Add(r, L::Set(1.f)));
  const V biased = L::Min(L::Max(L::Add(m, L::Set(127.f)), L::Set(0.f)), L::Set(255.f));
  V e = L::Mul(p, L::Pow2(biased));
  e = L::Mul(e, e);
  return L::ZeroWhereBelow(L::Div(e, L::Add(L::Set(1.f), e)), x0, L::Set(-104.f));
}

// tanh(x) as Eigen's ptanh_float (its FMA constants): a [9/8] rational function of x clamped to ±8.0177.
template <class L>
static inline __attribute__((always_inline)) typename L::V Tanh(typename L::V x0) {
  using V = typename L::V;
  const V x = L::Max(L::Min(x0, L::Set(8.01773357391357422f)), L::Set(-8.01773357391357422f));
  const V x2 = L::Mul(x, x), x3 = L::Mul(x2, x);
  V p = L::Fma(L::Set(1.394553628e-8f), x2, L::Set(2.102733560e-5f));
  p = L::Fma(p, x2, L::Set(3.520756727e-3f));
  p = L::Fma(p, x2, L::Set(1.340216100e-1f));
  V q = L::Fma(L::Set(8.015776984e-7f), x2, L::Set(3.326951409e-4f));
  q = L::Fma(q, x2, L::Set(2.597254514e-2f));
  q = L::Fma(q, x2, L::Set(4.673548340e-1f));
  q = L::Fma(q, x2, L::Set(1.f));
  return L::Div(L::Fma(x3, p, x), q);
}

// One row of one LSTM step: z [4·units] pre-activations in, activated gates out; c = i·g + f·c_prev (c_prev null at
// the first step), tanh(c), h = o·tanh(c).
template <class L>
static inline __attribute__((always_inline)) void LstmRowForward(int64_t U, float* z, const float* c_prev, float* c,
                                                                 float* tc, float* h) {
  for (int64_t j = 0; j < U; j += L::kWidth) {
    const int n = static_cast<int>(std::min<int64_t>(L::kWidth, U - j));
    const auto i = Logistic<L>(L::Load(z + j, n)), f = Logistic<L>(L::Load(z + U + j, n)),
               g = Tanh<L>(L::Load(z + 2 * U + j, n)), o = Logistic<L>(L::Load(z + 3 * U + j, n));
    L::Store(z + j, i, n);
    L::Store(z + U + j, f, n);
    L::Store(z + 2 * U + j, g, n);
    L::Store(z + 3 * U + j, o, n);
    auto cj = L::Mul(i, g);
    if (c_prev) cj = L::Fma(f, L::Load(c_prev + j, n), cj);
    const auto t = Tanh<L>(cj);
    L::Store(c + j, cj, n);
    L::Store(tc + j, t, n);
    L::Store(h + j, L::Mul(o, t), n);
  }
}

// A block's rows of one LSTM step: the pointers at step t's first row of the block; c_prev null at the first step.
struct LstmStep {
  float *z, *c, *tc, *h;
  const float* c_prev;  // Null at the first step.
  int64_t rows, U;
};
template <class L>
static inline __attribute__((always_inline)) void LstmRows(const LstmStep& s) {
  for (int64_t r = 0; r < s.rows; ++r)
    LstmRowForward<L>(s.U, s.z + r * 4 * s.U, s.c_prev ? s.c_prev + r * s.U : nullptr, s.c + r * s.U,
                      s.tc + r * s.U, s.h + r * s.U);
}
// Compiled for each target (the template is inlined into each, with the caller's instructions).
static void LstmRowsAvx2(const LstmStep& s) { LstmRows<Lanes8>(s); }
TF_RNN_AVX512 static void LstmRows512(const LstmStep& s) { LstmRows<Lanes16>(s); }

// One row of one GRU step (reset_after): a [3·units] = x·W + b_in in, activated gates z, r, n out; q [3·units] =
// h_prev·U + b_rec; q_h (kept for the backward op) = q's last third; h = z·h_prev + (1 - z)·n (h_prev null at the
// first step).
template <class L>
static inline __attribute__((always_inline)) void GruRowForward(int64_t U, float* a, const float* q,
                                                                const float* h_prev, float* q_h, float* h) {
  for (int64_t j = 0; j < U; j += L::kWidth) {
    const int n = static_cast<int>(std::min<int64_t>(L::kWidth, U - j));
    const auto z = Logistic<L>(L::Add(L::Load(a + j, n), L::Load(q + j, n)));
    const auto r = Logistic<L>(L::Add(L::Load(a + U + j, n), L::Load(q + U + j, n)));
    const auto qh = L::Load(q + 2 * U + j, n);
    const auto g = Tanh<L>(L::Fma(r, qh, L::Load(a + 2 * U + j, n)));
    L::Store(a + j, z, n);
    L::Store(a + U + j, r, n);
    L::Store(a + 2 * U + j, g, n);
    L::Store(q_h + j, qh, n);
    auto hj = L::Mul(L::Sub(L::Set(1.f), z), g);
    if (h_prev) hj = L::Fma(z, L::Load(h_prev + j, n), hj);
    L::Store(h + j, hj, n);
  }
}

// Rows of one GRU step, as LstmStep: a and h at step t's row lo, q at the block's first row, h_prev null at t = 0.
struct GruStep {
  float *a, *q_h, *h;
  const float *q, *h_prev;
  int64_t rows, U;
};
template <class L>
static inline __attribute__((always_inline)) void GruRows(const GruStep& s) {
  for (int64_t r = 0; r < s.rows; ++r)
    GruRowForward<L>(s.U, s.a + r * 3 * s.U, s.q + r * 3 * s.U, s.h_prev ? s.h_prev + r * s.U : nullptr,
                     s.q_h + r * s.U, s.h + r * s.U);
}
static void GruRowsAvx2(const GruStep& s) { GruRows<Lanes8>(s); }
TF_RNN_AVX512 static void GruRows512(const GruStep& s) { GruRows<Lanes16>(s); }

// Which products run, decided once per op call: the widest the CPU has, unless TF_RNN_KERNEL_ISA asks for
// another ("avx2" on an AVX-512 CPU: the tests compare the two paths, benchmarks time them).
enum class Isa { kAvx2, kAvx512, kAmx };  // kAmx: the LSTM's bfloat16 products on AMX tiles, its rows as kAvx512.
static const char* const kIsaEnv = "TF_RNN_KERNEL_ISA";

// `why`, when asked for (the info op; not the compute ops, at every call), says what decided. precision=bfloat16
// (the LSTM ops' attribute) takes the AMX tiles or fails: it is asked for, and silently float32 would not be it.
static const char* const kNoAmx = "precision=bfloat16 needs AMX tiles for bfloat16 (CPU flags amx_bf16, amx_tile, "
                                  "avx512_bf16, granted by Linux); this machine lacks them: train in float32";
static Status ChooseIsa(Isa* isa, std::string* why = nullptr, bool bf16 = false) {
  if (bf16) {
#if defined(TF_RNN_EMULATE_AVX512)
    return errors::InvalidArgument(kNoAmx);
#else
    if (!AmxReady()) return errors::InvalidArgument(kNoAmx);
    *isa = Isa::kAmx;
    return absl::OkStatus();
#endif
  }
  const char* env = std::getenv(kIsaEnv);
  const std::string asked = env && *env ? env : "auto";
  const bool has512 = CpuHasAvx512();
  if (asked == "avx2") {
    *isa = Isa::kAvx2;
    if (why) *why = std::string(kIsaEnv) + "=avx2";
  } else if (asked == "avx512" || asked == "auto") {
    if (asked == "avx512" && !has512)
      return errors::InvalidArgument(kIsaEnv, "=avx512, but this CPU lacks avx512f; unset it or set avx2");
    *isa = has512 ? Isa::kAvx512 : Isa::kAvx2;
    if (why)
      *why = asked == "avx512" ? std::string(kIsaEnv) + "=avx512"
             : has512          ? "the CPU has avx512f"
                               : "the CPU lacks avx512f";
  } else {
    return errors::InvalidArgument(kIsaEnv, "=", asked, " is not one of auto, avx2, avx512");
  }
  return absl::OkStatus();
}

// c[m×n] (+)= Σ terms a·b, every b [·×n]; rows of c are ldc apart; acc_in adds to what c holds; row_init [n], when
// given, is where every row's sums start instead (a bias).
static void Gemm(Isa isa, std::initializer_list<Term> terms, int64_t m, float* c, int64_t ldc, bool acc_in,
                 const float* row_init = nullptr) {
  if (isa == Isa::kAvx512)
    GemmAvx512(terms, m, c, ldc, acc_in, row_init);
  else
    GemmAvx2(terms, m, c, ldc, acc_in, row_init);
}

// "avx512 (the CPU has avx512f)": which products the ops run here and why (`python -m tf_rnn.fused info`).
// Stateful: its answer depends on the environment at the call, so it must be neither folded nor cached.
REGISTER_OP("TfRnnKernelIsa").Output("isa: string").SetIsStateful().SetShapeFn(shape_inference::ScalarShape);

class KernelIsa : public OpKernel {
 public:
  explicit KernelIsa(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    Isa isa;
    std::string why;
    OP_REQUIRES_OK(ctx, ChooseIsa(&isa, &why));
    Tensor* out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
#if defined(TF_RNN_EMULATE_AVX512)
    const bool amx = false;
#else
    const bool amx = AmxReady();
#endif
    out->scalar<tstring>()() = std::string(isa == Isa::kAvx512 ? "avx512" : "avx2") + " (" + why + ")" +
                               (amx ? "; bfloat16: AMX tiles" : "; bfloat16: not here (no AMX tiles)");
  }
};
REGISTER_KERNEL_BUILDER(Name("TfRnnKernelIsa").Device(DEVICE_CPU), KernelIsa);

// Rows per block of the backward pass's weight-gradient sums: fixed, so that where the sums are split does not
// depend on the thread count (see the top of this file).
constexpr int64_t kGradRows = 32;

// Rows per block of the forward pass (nothing is summed across its rows, so any split gives the same bits): each
// thread's share of the batch in the same number of blocks, at least two, of at most kForwardRows rows (and at least
// kRows). The same number because the op lasts as long as its busiest thread: blocks of 24 rows split 128 rows
// 72 / 56 over two threads, and blocks of 32 (64 / 64) ran the op alone in 0.90-0.93 of the time (inside training no
// change beyond the noise). Several, because one block per thread was as fast when the op ran alone but inside a
// training step 1.1× slower: another op or the input pipeline's thread taking a core for a while holds up a block,
// and the other threads then take the held thread's remaining blocks (benchmarks/README.md, items 15 and 16).
constexpr int64_t kForwardRows = 32, kForwardBlocksPerThread = 2;
static int64_t ForwardRows(OpKernelContext* ctx, int64_t batch) {
  const int64_t threads = std::max(1, ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads());
  const int64_t share = (batch + threads - 1) / threads;
  const int64_t blocks = std::max(kForwardBlocksPerThread, (share + kForwardRows - 1) / kForwardRows);
  return std::max<int64_t>(kRows, (share + blocks - 1) / blocks);
}

// Runs fn(block index, first row, end row) on each block of `per` rows, across the worker threads; returns the
// block count. The pool is handed block indices and every call loops over the blocks it gets: a pool may run a
// whole range in one call (it does with a single thread), and each block must still be its own.
template <typename F>
static int64_t ForRowBlocks(OpKernelContext* ctx, int64_t batch, int64_t per, F fn) {
  const int64_t blocks = (batch + per - 1) / per;
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(blocks,
                    thread::ThreadPool::SchedulingParams(thread::ThreadPool::SchedulingStrategy::kFixedBlockSize,
                                                         std::nullopt, 1),
                    [&](int64_t first, int64_t last) {
                      for (int64_t k = first; k < last; ++k) fn(k, k * per, std::min(batch, (k + 1) * per));
                    });
  return blocks;
}

// m rows of `width` floats, `stride` apart from `first` on (one step of a block of rows), transposed into scratch
// as a [width × m] matrix whose rows are ld apart. Read in place, the transpose's columns would be `stride` floats
// apart (for x here: 28·28 floats), so the rows of one block of the product would compete for the same few L1 cache
// sets. Transposed 8 × 8 at a time in AVX2 registers: one element at a time, they were a twentieth of the backward
// ops' time (benchmarks/README.md, item 16).
static void Transpose(const float* first, int64_t stride, int64_t m, int64_t width, float* scratch, int64_t ld) {
  int64_t b = 0;
#if defined(__AVX2__)
  for (; b + 8 <= m; b += 8) {
    int64_t w = 0;
    for (; w + 8 <= width; w += 8) {
      const float* in = first + b * stride + w;
      __m256 r[8], t[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + i * stride);
      for (int i = 0; i < 8; i += 2) {  // Pairs of rows interleaved, then pairs of pairs, then halves.
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      float* out = scratch + w * ld + b;
      for (int i = 0; i < 4; ++i) {  // Column i of the block is r[i] (rows 0-3) beside r[i + 4] (rows 4-7).
        _mm256_storeu_ps(out + i * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(out + (i + 4) * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
      }
    }
    for (; w < width; ++w)
      for (int64_t i = b; i < b + 8; ++i) scratch[w * ld + i] = first[i * stride + w];
  }
#endif
  for (; b < m; ++b)
    for (int64_t w = 0; w < width; ++w) scratch[w * ld + b] = first[b * stride + w];
}

// Steps whose weight-gradient products the backward ops run as one: k = kGradSteps · kGradRows rows instead
// of kGradRows. Each product adds into the sums it loads (acc_in), so step after step or the steps in one pass
// is the same chain of fused multiply-adds in the same order: the same bits, with the sums loaded and stored once
// per kGradSteps steps instead of every step (at k = 32 that traffic held the AVX-512 block to ~80 % of its speed
// at k = 128; benchmarks/README.md, item 15).
constexpr int64_t kGradSteps = 4;

// A block's steps gathered for its weight gradients, in both backward ops. The steps lie one after another along k:
// step t's m rows at k = slot·m ... in the panels of dz (and of the gradient U's product reads: dz for the LSTM, dq
// for the GRU) and in the transposes of x and h_prev. One more than a multiple of m apart: m·64 bytes apart (a
// multiple of 4 KiB for m = 64) the panels would share L1 cache sets and evict each other; likewise the rows of the
// transposes.
struct GatheredSteps {
  float *xt, *ht;  // [F × ld], [U × ld]: the transposes of x_t and h_{t-1}, step after step.
  float *sw, *su;  // The block's sums of dW [F, G] and dU [U, G].
  int64_t m, F, U, G, ld = kGradSteps * m + 1, pack_stride = ld * kPanel, slot = 0;
  int64_t Offset() const { return slot * m * kPanel; }  // Where this step's rows go in each panel.
  // After step t's rows were packed at Offset(): gathers its x_t and h_{t-1} (rows `x_stride`, U apart; h_prev null at
  // t = 0); when kGradSteps steps are gathered, or at t = 0, dW += Σ x_sᵀ·dz_s and dU += Σ h_{s-1}ᵀ·du_s over them
  // (dU's without step 0, the last).
  void Add(Isa isa, int64_t t, const float* x_t, int64_t x_stride, const float* h_prev, const float* dz_pack,
           const float* du_pack) {
    Transpose(x_t, x_stride, m, F, xt + slot * m, ld);
    if (h_prev) Transpose(h_prev, U, m, U, ht + slot * m, ld);
    if (++slot < kGradSteps && t > 0) return;
    Gemm(isa, {Term{A{xt, ld}, B{dz_pack, pack_stride, slot * m, G}}}, F, sw, G, /*acc_in=*/true);
    if (const int64_t h_slots = t ? slot : slot - 1)
      Gemm(isa, {Term{A{ht, ld}, B{du_pack, pack_stride, h_slots * m, G}}}, U, su, G, /*acc_in=*/true);
    slot = 0;
  }
};

// ---- The ops. ---------------------------------------------------------------------------------------------

// x: <float32>[batch, time, features]; kernel W: [features, 4·units]; recurrent_kernel U: [units, 4·units];
// bias: [4·units] → h: [time, batch, units] of every step (tf_rnn.fused hands Keras h[-1] or the transpose);
// for the backward pass, c and tanh(c): [time, batch, units] and the activated gates: [time, batch, 4·units].
REGISTER_OP("TfRnnLstmForward")
    .Input("x: float")
    .Input("kernel: float")
    .Input("recurrent_kernel: float")
    .Input("bias: float")
    .Attr("precision: {'float32', 'bfloat16'} = 'float32'")
    .Output("h: float")
    .Output("c: float")
    .Output("tanh_c: float")
    .Output("gates: float")
    .SetShapeFn([](shape_inference::InferenceContext* ctx) {
      shape_inference::ShapeHandle x, u;
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(0), 3, &x));
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(2), 2, &u));
      auto batch = ctx->Dim(x, 0), time = ctx->Dim(x, 1);
      ctx->set_output(0, ctx->MakeShape({time, batch, ctx->Dim(u, 0)}));
      ctx->set_output(1, ctx->output(0));
      ctx->set_output(2, ctx->output(0));
      ctx->set_output(3, ctx->MakeShape({time, batch, ctx->Dim(u, 1)}));
      return absl::OkStatus();
    });

// d_h: <float32>[batch, time, units], the loss' gradient reaching each step's h from outside the layer — or
// [batch, units] when only the last step's h is the layer's output (Keras' return_sequences=False): then no
// [batch, time, units] of zeros is made by TensorFlow's slice gradient only to be read back here. x,
// recurrent_kernel, and the forward op's outputs → dz: [time, batch, 4·units], the gradient of every step's
// pre-activations (dx = dz·Wᵀ is left to TensorFlow, which skips it when x needs none); d_kernel,
// d_recurrent_kernel, d_bias: the weights' gradients.
REGISTER_OP("TfRnnLstmBackward")
    .Input("d_h: float")
    .Input("x: float")
    .Input("recurrent_kernel: float")
    .Input("h: float")
    .Input("c: float")
    .Input("tanh_c: float")
    .Input("gates: float")
    .Attr("precision: {'float32', 'bfloat16'} = 'float32'")
    .Output("dz: float")
    .Output("d_kernel: float")
    .Output("d_recurrent_kernel: float")
    .Output("d_bias: float")
    .SetShapeFn([](shape_inference::InferenceContext* ctx) {
      shape_inference::ShapeHandle x, u;
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(1), 3, &x));
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(2), 2, &u));
      ctx->set_output(0, ctx->input(6));
      ctx->set_output(1, ctx->Matrix(ctx->Dim(x, 2), ctx->Dim(u, 1)));
      ctx->set_output(2, u);
      ctx->set_output(3, ctx->Vector(ctx->Dim(u, 1)));
      return absl::OkStatus();
    });

// Shapes: x [B, T, F]; U [units, 4·units]; W [F, 4·units] when given; each of `seq` [B, T, width·units], or
// [T, B, width·units] when its flag says time-major.
struct Seq {
  const Tensor* t;
  int64_t width;
  bool time_major;
  bool last_ok = false;  // May be [B, width·units] instead: the last step's only (see dh below).
};
// `cell` names the op in the message; `gates` is 4 (LSTM) or 3 (GRU).
static Status CheckShapes(const char* cell, int gates, const Tensor& x, const Tensor& u, const Tensor* w,
                          std::initializer_list<Seq> seq) {
  const bool ok_u = u.dims() == 2 && u.dim_size(1) == gates * u.dim_size(0);
  if (x.dims() != 3 || !ok_u || (w && (w->dims() != 2 || w->dim_size(0) != x.dim_size(2) ||
                                       w->dim_size(1) != u.dim_size(1))))
    return errors::InvalidArgument("tf_rnn ", cell, " op: need x [batch, time, features], kernel [features, ", gates,
                                   "·units], recurrent_kernel [units, ", gates, "·units]; got ",
                                   x.shape().DebugString(), ", ", w ? w->shape().DebugString() : "-", ", ",
                                   u.shape().DebugString());
  for (auto [t, width, time_major, last_ok] : seq)
    if (last_ok && t->dims() == 2) {
      if (t->dim_size(0) != x.dim_size(0) || t->dim_size(1) != width * u.dim_size(0))
        return errors::InvalidArgument("tf_rnn ", cell, " op: need d_h [batch, time, units] or [batch, units]; got ",
                                       t->shape().DebugString());
    } else if (t->dims() != 3 || t->dim_size(time_major) != x.dim_size(0) ||
               t->dim_size(!time_major) != x.dim_size(1) || t->dim_size(2) != width * u.dim_size(0))
      return errors::InvalidArgument("tf_rnn ", cell, " op: need ", time_major ? "[time, batch, " : "[batch, time, ",
                                     width, "·units]; got ", t->shape().DebugString());
  return absl::OkStatus();
}

// The gradient reaching h from outside the layer, d_h: [batch, time, units], or [batch, units] when only the last
// step's h leaves the layer. (b, t) → row b's at step t, or nullptr where it has none.
struct FromOutside {
  const float* p;
  bool last_only;
  int64_t T, U;
  const float* operator()(int64_t b, int64_t t) const {
    if (!last_only) return p + (b * T + t) * U;
    return t == T - 1 ? p + b * U : nullptr;
  }
};

// The weight gradients: each output is the sum over blocks of its stretch at the start of every block's working
// memory (the outputs' stretches lie one after another there), added in block order.
static void AddBlockSums(const float* work, int64_t blocks, int64_t per_block, std::initializer_list<Tensor*> outs) {
  int64_t offset = 0;
  for (Tensor* out : outs) {
    Arr sum(out->flat<float>().data(), out->NumElements());
    sum.setZero();
    for (int64_t k = 0; k < blocks; ++k) sum += CArr(work + k * per_block + offset, sum.size());
    offset += sum.size();
  }
}

// The LSTM ops' precision attribute: "bfloat16" runs their products on AMX tiles (bfloat16 operands, float32 sums).
static Status ReadPrecision(OpKernelConstruction* c, bool* bf16) {
  std::string precision;
  TF_RETURN_IF_ERROR(c->GetAttr("precision", &precision));
  *bf16 = precision == "bfloat16";
  return absl::OkStatus();
}

// bfloat16 scratch, from TensorFlow's allocator as the float scratch is; zeroed (the tiles read padding).
static Status ScratchBf16(OpKernelContext* ctx, int64_t n, Tensor* t, uint16_t** p) {
  TF_RETURN_IF_ERROR(ctx->allocate_temp(DT_BFLOAT16, TensorShape({std::max<int64_t>(n, 1)}), t));
  *p = reinterpret_cast<uint16_t*>(t->flat<bfloat16>().data());
  std::fill(*p, *p + std::max<int64_t>(n, 1), uint16_t{0});
  return absl::OkStatus();
}

class Forward : public OpKernel {
 public:
  explicit Forward(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, ReadPrecision(c, &bf16_)); }
  void Compute(OpKernelContext* ctx) override {
    const Tensor &x = ctx->input(0), &w = ctx->input(1), &u = ctx->input(2), &bias = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckShapes("LSTM", 4, x, u, &w, {}));
    Isa isa;
    OP_REQUIRES_OK(ctx, ChooseIsa(&isa, nullptr, bf16_));
    const int64_t Bt = x.dim_size(0), T = x.dim_size(1), F = x.dim_size(2), U = u.dim_size(0), G = 4 * U;
    OP_REQUIRES(ctx, bias.dims() == 1 && bias.dim_size(0) == G,
                errors::InvalidArgument("tf_rnn LSTM op: bias must be [4·units]; got ", bias.shape().DebugString()));
    Tensor *h, *c, *tanh_c, *g;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({T, Bt, U}), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({T, Bt, U}), &c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({T, Bt, U}), &tanh_c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({T, Bt, G}), &g));
    if (Bt * T == 0) return;
#if !defined(TF_RNN_EMULATE_AVX512)
    if (isa == Isa::kAmx) return ComputeAmx(ctx, x, w, u, bias, h, c, tanh_c, g);
#endif
    Tensor w_buf, u_buf;
    float *w_packed, *u_packed;
    OP_REQUIRES_OK(ctx, Scratch(ctx, PackedSize(F, G), &w_buf, &w_packed));
    OP_REQUIRES_OK(ctx, Scratch(ctx, PackedSize(U, G), &u_buf, &u_packed));
    const B wp = Pack(w.flat<float>().data(), F, G, G, 1, w_packed), up = Pack(u.flat<float>().data(), U, G, G, 1, u_packed);
    const float *xp = x.flat<float>().data(), *bp = bias.flat<float>().data();
    float *hp = h->flat<float>().data(), *cp = c->flat<float>().data(), *tcp = tanh_c->flat<float>().data(),
          *gp = g->flat<float>().data();
    ForRowBlocks(ctx, Bt, ForwardRows(ctx, Bt), [&](int64_t, int64_t lo, int64_t hi) {
      for (int64_t t = 0; t < T; ++t) {
        // This block's rows of step t, G apart: bias + x_t·W + h_{t-1}·U, the sums started from the bias itself
        // (copying it into z first took a tenth of the op's time: benchmarks/README.md, item 16).
        float* z = gp + (t * Bt + lo) * G;
        const Term xw{A{xp + (lo * T + t) * F, T * F}, wp};
        if (t)
          Gemm(isa, {xw, Term{A{hp + ((t - 1) * Bt + lo) * U, U}, up}}, hi - lo, z, G, /*acc_in=*/false, bp);
        else
          Gemm(isa, {xw}, hi - lo, z, G, /*acc_in=*/false, bp);
        const int64_t row = t * Bt + lo;
        const LstmStep step{gp + row * G, cp + row * U, tcp + row * U, hp + row * U,
                            t ? cp + (row - Bt) * U : nullptr, hi - lo, U};
        if (isa != Isa::kAvx2)
          LstmRows512(step);
        else
          LstmRowsAvx2(step);
      }
    });
  }

 private:
  bool bf16_;

#if !defined(TF_RNN_EMULATE_AVX512)
  // The same steps with bfloat16 products: x once, and each step's h for the next, rounded into bfloat16 copies
  // whose rows are padded to whole tiles (features and units to kTileK; 16 rows past the batch, or the block).
  void ComputeAmx(OpKernelContext* ctx, const Tensor& x, const Tensor& w, const Tensor& u, const Tensor& bias,
                  Tensor* h, Tensor* c, Tensor* tanh_c, Tensor* g) {
    const int64_t Bt = x.dim_size(0), T = x.dim_size(1), F = x.dim_size(2), U = u.dim_size(0), G = 4 * U;
    const int64_t Fp = RoundUp(F, kTileK), Up = RoundUp(U, kTileK), per = ForwardRows(ctx, Bt);
    const int64_t nblocks = (Bt + per - 1) / per, h_size = RoundUp(per, 16) * Up;
    Tensor wb_buf, ub_buf, xb_buf, hb_buf, bias_buf;
    bf16 *wb, *ub, *xb, *hb;
    float* bias16;
    OP_REQUIRES_OK(ctx, ScratchBf16(ctx, PackedSizeBf16(F, G), &wb_buf, &wb));
    OP_REQUIRES_OK(ctx, ScratchBf16(ctx, PackedSizeBf16(U, G), &ub_buf, &ub));
    OP_REQUIRES_OK(ctx, ScratchBf16(ctx, (Bt + 16) * T * Fp, &xb_buf, &xb));
    OP_REQUIRES_OK(ctx, ScratchBf16(ctx, nblocks * h_size, &hb_buf, &hb));
    OP_REQUIRES_OK(ctx, Scratch(ctx, 16 * G, &bias_buf, &bias16));
    const BBf16 wp = PackBf16(w.flat<float>().data(), F, G, G, 1, wb), up = PackBf16(u.flat<float>().data(), U, G, G, 1, ub);
    const float *xp = x.flat<float>().data(), *bp = bias.flat<float>().data();
    for (int r = 0; r < 16; ++r) std::copy_n(bp, G, bias16 + r * G);
    float *hp = h->flat<float>().data(), *cp = c->flat<float>().data(), *tcp = tanh_c->flat<float>().data(),
          *gp = g->flat<float>().data();
    ForRowBlocks(ctx, Bt, per, [&](int64_t block, int64_t lo, int64_t hi) {
      const AmxTiles tiles;
      for (int64_t r = lo * T; r < hi * T; ++r) ToBf16(xp + r * F, F, xb + r * Fp);
      bf16* hb_block = hb + block * h_size;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row = t * Bt + lo;
        const TermBf16 xw{ABf16{xb + (lo * T + t) * Fp, T * Fp}, wp};
        if (t)
          GemmAmx({xw, TermBf16{ABf16{hb_block, Up}, up}}, hi - lo, gp + row * G, G, /*acc_in=*/false, bias16);
        else
          GemmAmx({xw}, hi - lo, gp + row * G, G, /*acc_in=*/false, bias16);
        LstmRows512(LstmStep{gp + row * G, cp + row * U, tcp + row * U, hp + row * U,
                             t ? cp + (row - Bt) * U : nullptr, hi - lo, U});
        for (int64_t r = 0; r < hi - lo; ++r) ToBf16(hp + (row + r) * U, U, hb_block + r * Up);
      }
    });
  }
#endif
};

// One row of one step of the LSTM's backward arithmetic, in one pass over its units: z its activated gates
// (i, f, g, o), tc = tanh(c), dh the gradient reaching h along time, d_out from outside (Outside), dc the one
// reaching c along time (updated in place for the step before) → dz [4·units]. As Eigen array expressions it
// was eight passes over the row, each loading its operands again.
template <bool Outside, bool First>
static inline __attribute__((always_inline)) void LstmRowBackward(
    int64_t U, const float* __restrict z, const float* __restrict tc, const float* __restrict c_prev,
    const float* __restrict d_out, const float* __restrict dh, float* __restrict dc, float* __restrict dz) {
  for (int64_t j = 0; j < U; ++j) {
    const float i = z[j], f = z[U + j], g = z[2 * U + j], o = z[3 * U + j], t = tc[j];
    const float dhj = Outside ? dh[j] + d_out[j] : dh[j];  // h_t's whole gradient: time and outside.
    const float dct = dc[j] + dhj * o * (1.f - t * t);     // No tanh here: the forward pass kept tanh(c).
    dz[j] = dct * g * i * (1.f - i);
    dz[U + j] = First ? 0.f : dct * c_prev[j] * f * (1.f - f);
    dz[2 * U + j] = dct * i * (1.f - g * g);
    dz[3 * U + j] = dhj * t * o * (1.f - o);
    dc[j] = dct * f;
  }
}

// A block's rows [lo, hi) of step t of the LSTM's backward arithmetic: each row's dz (LstmRowBackward), its sum into
// the bias gradient, and its copy into the panels of dz_t the block's products read, while the row is in cache.
// Plain loops the compiler vectorises: compiled twice, for AVX2 and (called only where the CPU has it) AVX-512, the
// same operations on every lane (tests/test_fused.py compares the two paths bit for bit).
struct LstmBackStep {
  int64_t t, lo, hi, Bt, U;
  FromOutside from_outside;
  const float *z, *tc, *c;           // The forward op's gates, tanh(c) and c: [time, batch, ·].
  float *dh_next, *dc, *dz, *sb, *dz_pack;  // The block's gradients along time, dz [time, batch, 4·units], bias sums.
  int64_t pack_stride;
};
static inline __attribute__((always_inline)) void LstmRowsBackward(const LstmBackStep& s) {
  const int64_t U = s.U, G = 4 * U;
  for (int64_t b = s.lo; b < s.hi; ++b) {
    const int64_t row = s.t * s.Bt + b;
    const float* out = s.from_outside(b, s.t);
    const float* c_prev = s.t ? s.c + (row - s.Bt) * U : nullptr;
    float *dh = s.dh_next + (b - s.lo) * U, *dc = s.dc + (b - s.lo) * U, *d = s.dz + row * G;
    if (out && s.t)
      LstmRowBackward<true, false>(U, s.z + row * G, s.tc + row * U, c_prev, out, dh, dc, d);
    else if (out)
      LstmRowBackward<true, true>(U, s.z + row * G, s.tc + row * U, c_prev, out, dh, dc, d);
    else if (s.t)
      LstmRowBackward<false, false>(U, s.z + row * G, s.tc + row * U, c_prev, out, dh, dc, d);
    else
      LstmRowBackward<false, true>(U, s.z + row * G, s.tc + row * U, c_prev, out, dh, dc, d);
    for (int64_t j = 0; j < G; ++j) s.sb[j] += d[j];
    if (!s.dz_pack) continue;  // The bfloat16 path packs dz itself.
    for (int64_t j = 0; j < G; j += kPanel)
      std::copy_n(d + j, std::min<int64_t>(kPanel, G - j),
                  &s.dz_pack[j / kPanel * s.pack_stride + (b - s.lo) * kPanel]);
  }
}
static void LstmRowsBackwardAvx2(const LstmBackStep& s) { LstmRowsBackward(s); }
TF_RNN_AVX512 static void LstmRowsBackward512(const LstmBackStep& s) { LstmRowsBackward(s); }

class Backward : public OpKernel {
 public:
  explicit Backward(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, ReadPrecision(c, &bf16_)); }
  void Compute(OpKernelContext* ctx) override {
    const Tensor &dh = ctx->input(0), &x = ctx->input(1), &u = ctx->input(2), &h = ctx->input(3),
                 &c = ctx->input(4), &tanh_c = ctx->input(5), &g = ctx->input(6);
    OP_REQUIRES_OK(ctx, CheckShapes("LSTM", 4, x, u, nullptr,
                                    {{&dh, 1, false, true}, {&h, 1, true}, {&c, 1, true}, {&tanh_c, 1, true}, {&g, 4, true}}));
    Isa isa;
    OP_REQUIRES_OK(ctx, ChooseIsa(&isa, nullptr, bf16_));
    const int64_t Bt = x.dim_size(0), T = x.dim_size(1), F = x.dim_size(2), U = u.dim_size(0), G = 4 * U;
    Tensor *dz, *dw, *du, *db;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, g.shape(), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({F, G}), &dw));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, u.shape(), &du));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({G}), &db));
#if !defined(TF_RNN_EMULATE_AVX512)
    if (isa == Isa::kAmx) return ComputeAmx(ctx, dh, x, u, h, c, tanh_c, g, dz, dw, du, db);
#endif
    Tensor ut_buf;
    float* ut_packed;
    OP_REQUIRES_OK(ctx, Scratch(ctx, PackedSize(G, U), &ut_buf, &ut_packed));
    const B ut = Pack(u.flat<float>().data(), G, U, 1, G, ut_packed);  // Uᵀ: dh_prev = dz · Uᵀ.
    const FromOutside from_outside{dh.flat<float>().data(), dh.dims() == 2, T, U};
    const float *xp = x.flat<float>().data(), *hp = h.flat<float>().data(),
                *cp = c.flat<float>().data(), *tcp = tanh_c.flat<float>().data(), *gp = g.flat<float>().data();
    float* dzp = dz->flat<float>().data();
    // Each block of rows has its own working memory: its weight-gradient sums [F + U + 1, 4·units] (added up at
    // the end, in block order), the gradients flowing back along time into its rows (into h through U, and into
    // c), the dz of up to kGradSteps steps packed in panels, and the transposes of those steps' x and h_prev. Sizes
    // for a full block of kGradRows rows.
    const int64_t sums_size = (F + U + 1) * G, max_ld = kGradSteps * kGradRows + 1,
                  pack_size = (G + kPanel - 1) / kPanel * max_ld * kPanel, scratch_size = (F + U) * max_ld,
                  per_block = sums_size + 2 * kGradRows * U + pack_size + scratch_size;
    const int64_t nblocks = Bt * T == 0 ? 0 : (Bt + kGradRows - 1) / kGradRows;
    Tensor work_buf;
    float* work;
    OP_REQUIRES_OK(ctx, Scratch(ctx, nblocks * per_block, &work_buf, &work));
    const int64_t blocks = nblocks == 0 ? 0 : ForRowBlocks(ctx, Bt, kGradRows, [&](int64_t block, int64_t lo, int64_t hi) {
      float* mem = work + block * per_block;
      std::fill(mem, mem + per_block, 0.f);
      float *sw = mem, *su = sw + F * G, *sb = su + U * G;
      const int64_t m = hi - lo;
      float *dh_next = mem + sums_size, *dc = dh_next + kGradRows * U, *dz_pack = dc + kGradRows * U,
            *xt = dz_pack + pack_size, *ht = xt + F * max_ld;
      GatheredSteps steps{xt, ht, sw, su, m, F, U, G};
      for (int64_t t = T - 1; t >= 0; --t) {
        // dz_t is the b of two products below: packed while its rows are in cache.
        const LstmBackStep step{t, lo, hi, Bt, U, from_outside, gp, tcp, cp, dh_next, dc, dzp, sb,
                                dz_pack + steps.Offset(), steps.pack_stride};
        if (isa != Isa::kAvx2)
          LstmRowsBackward512(step);
        else
          LstmRowsBackwardAvx2(step);
        steps.Add(isa, t, xp + (lo * T + t) * F, T * F, t ? hp + ((t - 1) * Bt + lo) * U : nullptr, dz_pack, dz_pack);
        if (t) Gemm(isa, {Term{A{dzp + (t * Bt + lo) * G, G}, ut}}, m, dh_next, U, /*acc_in=*/false);  // dz_t·Uᵀ
      }
    });
    AddBlockSums(work, blocks, per_block, {dw, du, db});
  }

 private:
  bool bf16_;

#if !defined(TF_RNN_EMULATE_AVX512)
  // The same blocks and steps with bfloat16 products. Besides the float32 path's working memory, each block has
  // bfloat16 copies of what the products read: dz_t's rows (for dz_t·Uᵀ), the gathered steps' dz packed as a b
  // (pairs of rows interleaved) and their transposed x and h_prev, padded to whole tiles.
  void ComputeAmx(OpKernelContext* ctx, const Tensor& dh, const Tensor& x, const Tensor& u, const Tensor& h,
                  const Tensor& c, const Tensor& tanh_c, const Tensor& g, Tensor* dz, Tensor* dw, Tensor* du,
                  Tensor* db) {
    const int64_t Bt = x.dim_size(0), T = x.dim_size(1), F = x.dim_size(2), U = u.dim_size(0), G = 4 * U;
    const int64_t Gp = RoundUp(G, kTileK), max_k = kGradSteps * kGradRows, max_ld = max_k + 1;
    // One pair of rows (64 bytes) past whole tiles, so that the panels are not 4 KiB apart (see GatheredSteps).
    const int64_t pack_stride = (RoundUp(max_k, kTileK) + 2) * kPanel, ldk = RoundUp(max_k, kTileK) + kTileK;
    const int64_t sums_size = (F + U + 1) * G, per_block = sums_size + 2 * kGradRows * U + (F + U) * max_ld;
    const int64_t dzb_size = kGradRows * Gp, pack_size = (G + kPanel - 1) / kPanel * pack_stride,
                  per_block16 = dzb_size + pack_size + (RoundUp(F, 16) + RoundUp(U, 16)) * ldk;
    const int64_t nblocks = (Bt + kGradRows - 1) / kGradRows;
    Tensor ut_buf, work_buf, work16_buf;
    bf16 *ut, *work16;
    float* work;
    OP_REQUIRES_OK(ctx, ScratchBf16(ctx, PackedSizeBf16(G, U), &ut_buf, &ut));
    OP_REQUIRES_OK(ctx, Scratch(ctx, nblocks * per_block, &work_buf, &work));
    OP_REQUIRES_OK(ctx, ScratchBf16(ctx, nblocks * per_block16, &work16_buf, &work16));
    const BBf16 utp = PackBf16(u.flat<float>().data(), G, U, 1, G, ut);  // Uᵀ: dh_prev = dz · Uᵀ.
    const FromOutside from_outside{dh.flat<float>().data(), dh.dims() == 2, T, U};
    const float *xp = x.flat<float>().data(), *hp = h.flat<float>().data(),
                *cp = c.flat<float>().data(), *tcp = tanh_c.flat<float>().data(), *gp = g.flat<float>().data();
    float* dzp = dz->flat<float>().data();
    const int64_t blocks = ForRowBlocks(ctx, Bt, kGradRows, [&](int64_t block, int64_t lo, int64_t hi) {
      float* mem = work + block * per_block;
      std::fill(mem, mem + per_block, 0.f);
      float *sw = mem, *su = sw + F * G, *sb = su + U * G, *dh_next = mem + sums_size, *dc = dh_next + kGradRows * U,
            *xt = dc + kGradRows * U, *ht = xt + F * max_ld;
      bf16 *dzb = work16 + block * per_block16, *pack = dzb + dzb_size, *xtb = pack + pack_size,
           *htb = xtb + RoundUp(F, 16) * ldk;
      const AmxTiles tiles;
      const int64_t m = hi - lo;
      int64_t slot = 0;
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t row = t * Bt + lo, k0 = slot * m;
        LstmRowsBackward512(LstmBackStep{t, lo, hi, Bt, U, from_outside, gp, tcp, cp, dh_next, dc, dzp, sb, nullptr, 0});
        for (int64_t r = 0; r < m; ++r) ToBf16(dzp + (row + r) * G, G, dzb + r * Gp);
        PackRowsBf16(dzp + row * G, G, m, G, k0, pack, pack_stride);
        Transpose(xp + (lo * T + t) * F, T * F, m, F, xt, max_ld);
        for (int64_t f = 0; f < F; ++f) ToBf16(xt + f * max_ld, m, xtb + f * ldk + k0);
        if (t) {
          Transpose(hp + (row - Bt) * U, U, m, U, ht, max_ld);
          for (int64_t j = 0; j < U; ++j) ToBf16(ht + j * max_ld, m, htb + j * ldk + k0);
        }
        if (++slot == kGradSteps || t == 0) {  // dW += Σ x_sᵀ·dz_s, dU += Σ h_{s-1}ᵀ·dz_s over the gathered steps.
          const int64_t k = slot * m, k_h = (t ? slot : slot - 1) * m;
          ZeroRowsFrom(pack, pack_stride, G, k);
          GemmAmx({TermBf16{ABf16{xtb, ldk}, BBf16{pack, pack_stride, RoundUp(k, kTileK), G}}}, F, sw, G, true);
          if (k_h) {
            ZeroRowsFrom(pack, pack_stride, G, k_h);  // Step 0's rows, which dW has used, have no h_prev.
            GemmAmx({TermBf16{ABf16{htb, ldk}, BBf16{pack, pack_stride, RoundUp(k_h, kTileK), G}}}, U, su, G, true);
          }
          slot = 0;
        }
        if (t) GemmAmx({TermBf16{ABf16{dzb, Gp}, utp}}, m, dh_next, U, /*acc_in=*/false);  // dz_t·Uᵀ
      }
    });
    AddBlockSums(work, blocks, per_block, {dw, du, db});
  }
#endif
};

// ---- GRU: the same design, Keras 3's GRU with reset_after=True (its default and cuDNN's form). ----------------
//
// Gates z, r, h in blocks of `units` columns; bias [2, 3·units]: row 0 is added to x·W, row 1 to h_prev·U.
// a = x·W + b_in, q = h_prev·U + b_rec; z = σ(a_z + q_z), r = σ(a_r + q_r), n = tanh(a_h + r·q_h);
// h = z·h_prev + (1 - z)·n; h_{-1} = 0. The forward op keeps the activated gates (z, r, n) and q_h, which is all
// the backward op needs besides h.

REGISTER_OP("TfRnnGruForward")
    .Input("x: float")
    .Input("kernel: float")
    .Input("recurrent_kernel: float")
    .Input("bias: float")
    .Output("h: float")
    .Output("gates: float")
    .Output("q_h: float")
    .SetShapeFn([](shape_inference::InferenceContext* ctx) {
      shape_inference::ShapeHandle x, u;
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(0), 3, &x));
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(2), 2, &u));
      auto batch = ctx->Dim(x, 0), time = ctx->Dim(x, 1);
      ctx->set_output(0, ctx->MakeShape({time, batch, ctx->Dim(u, 0)}));
      ctx->set_output(1, ctx->MakeShape({time, batch, ctx->Dim(u, 1)}));
      ctx->set_output(2, ctx->MakeShape({time, batch, ctx->Dim(u, 0)}));
      return absl::OkStatus();
    });

// d_h: [batch, time, units] (or [batch, units], as for the LSTM) from outside the layer → dz: [time, batch,
// 3·units], the gradient of each step's x·W + b_in (dx = dz·Wᵀ is left to TensorFlow); d_kernel,
// d_recurrent_kernel, d_bias [2, 3·units].
REGISTER_OP("TfRnnGruBackward")
    .Input("d_h: float")
    .Input("x: float")
    .Input("recurrent_kernel: float")
    .Input("h: float")
    .Input("gates: float")
    .Input("q_h: float")
    .Output("dz: float")
    .Output("d_kernel: float")
    .Output("d_recurrent_kernel: float")
    .Output("d_bias: float")
    .SetShapeFn([](shape_inference::InferenceContext* ctx) {
      shape_inference::ShapeHandle x, u;
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(1), 3, &x));
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(2), 2, &u));
      ctx->set_output(0, ctx->input(4));
      ctx->set_output(1, ctx->Matrix(ctx->Dim(x, 2), ctx->Dim(u, 1)));
      ctx->set_output(2, u);
      ctx->set_output(3, ctx->Matrix(2, ctx->Dim(u, 1)));
      return absl::OkStatus();
    });

class GruForward : public OpKernel {
 public:
  explicit GruForward(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor &x = ctx->input(0), &w = ctx->input(1), &u = ctx->input(2), &bias = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckShapes("GRU", 3, x, u, &w, {}));
    Isa isa;
    OP_REQUIRES_OK(ctx, ChooseIsa(&isa));
    const int64_t Bt = x.dim_size(0), T = x.dim_size(1), F = x.dim_size(2), U = u.dim_size(0), G = 3 * U;
    OP_REQUIRES(ctx, bias.dims() == 2 && bias.dim_size(0) == 2 && bias.dim_size(1) == G,
                errors::InvalidArgument("tf_rnn GRU op: bias must be [2, 3·units]; got ", bias.shape().DebugString()));
    Tensor *h, *g, *qh;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({T, Bt, U}), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({T, Bt, G}), &g));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({T, Bt, U}), &qh));
    if (Bt * T == 0) return;
    Tensor w_buf, u_buf, q_buf;
    float *w_packed, *u_packed, *q_all;
    OP_REQUIRES_OK(ctx, Scratch(ctx, PackedSize(F, G), &w_buf, &w_packed));
    OP_REQUIRES_OK(ctx, Scratch(ctx, PackedSize(U, G), &u_buf, &u_packed));
    const int64_t per = ForwardRows(ctx, Bt);
    OP_REQUIRES_OK(ctx, Scratch(ctx, Bt * G, &q_buf, &q_all));  // h_prev·U + b_rec of the current step, per row.
    const B wp = Pack(w.flat<float>().data(), F, G, G, 1, w_packed), up = Pack(u.flat<float>().data(), U, G, G, 1, u_packed);
    const float *xp = x.flat<float>().data(), *b_in = bias.flat<float>().data(), *b_rec = b_in + G;
    float *hp = h->flat<float>().data(), *gp = g->flat<float>().data(), *qhp = qh->flat<float>().data();
    ForRowBlocks(ctx, Bt, per, [&](int64_t, int64_t lo, int64_t hi) {
      float* q = q_all + lo * G;
      for (int64_t t = 0; t < T; ++t) {
        float* a = gp + (t * Bt + lo) * G;  // This block's rows of step t, G apart: a, then the activated gates.
        Gemm(isa, {Term{A{xp + (lo * T + t) * F, T * F}, wp}}, hi - lo, a, G, /*acc_in=*/false, b_in);
        if (t)
          Gemm(isa, {Term{A{hp + ((t - 1) * Bt + lo) * U, U}, up}}, hi - lo, q, G, /*acc_in=*/false, b_rec);
        else  // h_{-1} = 0: q = b_rec.
          for (int64_t b = lo; b < hi; ++b) std::copy(b_rec, b_rec + G, q + (b - lo) * G);
        const int64_t row = t * Bt + lo;
        const GruStep step{a, qhp + row * U, hp + row * U, q, t ? hp + (row - Bt) * U : nullptr, hi - lo, U};
        if (isa == Isa::kAvx512)
          GruRows512(step);
        else
          GruRowsAvx2(step);
      }
    });
  }
};

// One row of one step of the GRU's backward arithmetic, in one pass (as LstmRowBackward): g its activated gates
// (z, r, n), q_h its h_prev·U_h + b_rec_h, dh the gradient reaching h along time (replaced by the part that goes
// straight on to h_prev; dq·Uᵀ is added to it after) → dz, the gradient of x·W + b_in, and dq, of q, [3·units].
template <bool Outside, bool First>
static inline __attribute__((always_inline)) void GruRowBackward(
    int64_t U, const float* __restrict g, const float* __restrict q_h, const float* __restrict h_prev,
    const float* __restrict d_out, float* __restrict dh, float* __restrict dz, float* __restrict dq) {
  for (int64_t j = 0; j < U; ++j) {
    const float z = g[j], r = g[U + j], n = g[2 * U + j];
    const float dhj = Outside ? dh[j] + d_out[j] : dh[j];  // h_t's whole gradient: time and outside.
    const float da_h = dhj * (1.f - z) * (1.f - n * n);
    const float da_z = First ? -dhj * n * z * (1.f - z) : dhj * (h_prev[j] - n) * z * (1.f - z);
    const float da_r = da_h * q_h[j] * r * (1.f - r);
    dz[j] = dq[j] = da_z;  // q_z, q_r enter like a_z, a_r ...
    dz[U + j] = dq[U + j] = da_r;
    dz[2 * U + j] = da_h;
    dq[2 * U + j] = da_h * r;  // ... q_h is scaled by r.
    dh[j] = dhj * z;  // The direct path h_prev → h.
  }
}

// A block's rows of step t of the GRU's backward arithmetic, as LstmRowsBackward: each row's dz and dq, their sums
// into the two bias gradients, their copies into the panels the block's products read.
struct GruBackStep {
  int64_t t, lo, hi, Bt, U;
  FromOutside from_outside;
  const float *g, *q_h, *h;  // The forward op's gates, q_h and h: [time, batch, ·].
  float *dh_next, *dz, *dq, *sb_in, *sb_rec, *dz_pack, *dq_pack;
  int64_t pack_stride;
};
static inline __attribute__((always_inline)) void GruRowsBackward(const GruBackStep& s) {
  const int64_t U = s.U, G = 3 * U;
  for (int64_t b = s.lo; b < s.hi; ++b) {
    const int64_t row = s.t * s.Bt + b;
    const float* out = s.from_outside(b, s.t);
    const float* h_prev = s.t ? s.h + (row - s.Bt) * U : nullptr;
    float *dh = s.dh_next + (b - s.lo) * U, *d = s.dz + row * G, *e = s.dq + (b - s.lo) * G;
    if (out && s.t)
      GruRowBackward<true, false>(U, s.g + row * G, s.q_h + row * U, h_prev, out, dh, d, e);
    else if (out)
      GruRowBackward<true, true>(U, s.g + row * G, s.q_h + row * U, h_prev, out, dh, d, e);
    else if (s.t)
      GruRowBackward<false, false>(U, s.g + row * G, s.q_h + row * U, h_prev, out, dh, d, e);
    else
      GruRowBackward<false, true>(U, s.g + row * G, s.q_h + row * U, h_prev, out, dh, d, e);
    for (int64_t j = 0; j < G; ++j) {
      s.sb_in[j] += d[j];
      s.sb_rec[j] += e[j];
    }
    for (int64_t j = 0; j < G; j += kPanel) {
      const int64_t cols = std::min<int64_t>(kPanel, G - j);
      std::copy_n(d + j, cols, &s.dz_pack[j / kPanel * s.pack_stride + (b - s.lo) * kPanel]);
      std::copy_n(e + j, cols, &s.dq_pack[j / kPanel * s.pack_stride + (b - s.lo) * kPanel]);
    }
  }
}
static void GruRowsBackwardAvx2(const GruBackStep& s) { GruRowsBackward(s); }
TF_RNN_AVX512 static void GruRowsBackward512(const GruBackStep& s) { GruRowsBackward(s); }

class GruBackward : public OpKernel {
 public:
  explicit GruBackward(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor &dh = ctx->input(0), &x = ctx->input(1), &u = ctx->input(2), &h = ctx->input(3),
                 &g = ctx->input(4), &qh = ctx->input(5);
    OP_REQUIRES_OK(ctx, CheckShapes("GRU", 3, x, u, nullptr,
                                    {{&dh, 1, false, true}, {&h, 1, true}, {&g, 3, true}, {&qh, 1, true}}));
    Isa isa;
    OP_REQUIRES_OK(ctx, ChooseIsa(&isa));
    const int64_t Bt = x.dim_size(0), T = x.dim_size(1), F = x.dim_size(2), U = u.dim_size(0), G = 3 * U;
    Tensor *dz, *dw, *du, *db;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, g.shape(), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({F, G}), &dw));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, u.shape(), &du));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({2, G}), &db));
    Tensor ut_buf;
    float* ut_packed;
    OP_REQUIRES_OK(ctx, Scratch(ctx, PackedSize(G, U), &ut_buf, &ut_packed));
    const B ut = Pack(u.flat<float>().data(), G, U, 1, G, ut_packed);  // Uᵀ: dh_prev += dq · Uᵀ.
    const FromOutside from_outside{dh.flat<float>().data(), dh.dims() == 2, T, U};
    const float *xp = x.flat<float>().data(), *hp = h.flat<float>().data(),
                *gp = g.flat<float>().data(), *qhp = qh.flat<float>().data();
    float* dzp = dz->flat<float>().data();
    // Per block of kGradRows rows (see the LSTM's backward op): the sums [F + U + 2, 3·units] — dW, dU, d b_in,
    // d b_rec — the gradient flowing back into h along time, dq (the gradient of q) row-major, and for up to
    // kGradSteps steps both dz and dq packed in panels and the transposes of x and h_prev.
    const int64_t sums_size = (F + U + 2) * G, max_ld = kGradSteps * kGradRows + 1,
                  pack_size = (G + kPanel - 1) / kPanel * max_ld * kPanel, scratch_size = (F + U) * max_ld,
                  per_block = sums_size + kGradRows * U + kGradRows * G + 2 * pack_size + scratch_size;
    const int64_t nblocks = Bt * T == 0 ? 0 : (Bt + kGradRows - 1) / kGradRows;
    Tensor work_buf;
    float* work;
    OP_REQUIRES_OK(ctx, Scratch(ctx, nblocks * per_block, &work_buf, &work));
    const int64_t blocks = nblocks == 0 ? 0 : ForRowBlocks(ctx, Bt, kGradRows, [&](int64_t block, int64_t lo, int64_t hi) {
      float* mem = work + block * per_block;
      std::fill(mem, mem + per_block, 0.f);
      float *sw = mem, *su = sw + F * G, *sb_in = su + U * G, *sb_rec = sb_in + G;
      float *dh_next = mem + sums_size, *dq = dh_next + kGradRows * U, *dz_pack = dq + kGradRows * G,
            *dq_pack = dz_pack + pack_size, *xt = dq_pack + pack_size, *ht = xt + F * max_ld;
      const int64_t m = hi - lo;
      GatheredSteps steps{xt, ht, sw, su, m, F, U, G};
      for (int64_t t = T - 1; t >= 0; --t) {
        const GruBackStep step{t, lo, hi, Bt, U, from_outside, gp, qhp, hp, dh_next, dzp, dq, sb_in, sb_rec,
                               dz_pack + steps.Offset(), dq_pack + steps.Offset(), steps.pack_stride};
        if (isa == Isa::kAvx512)
          GruRowsBackward512(step);
        else
          GruRowsBackwardAvx2(step);
        steps.Add(isa, t, xp + (lo * T + t) * F, T * F, t ? hp + ((t - 1) * Bt + lo) * U : nullptr, dz_pack, dq_pack);
        if (t) Gemm(isa, {Term{A{dq, G}, ut}}, m, dh_next, U, /*acc_in=*/true);  // dh_{t-1} = dh·z + dq_t·Uᵀ
      }
    });
    AddBlockSums(work, blocks, per_block, {dw, du, db});
  }
};

REGISTER_KERNEL_BUILDER(Name("TfRnnGruForward").Device(DEVICE_CPU), GruForward);
REGISTER_KERNEL_BUILDER(Name("TfRnnGruBackward").Device(DEVICE_CPU), GruBackward);
REGISTER_KERNEL_BUILDER(Name("TfRnnLstmForward").Device(DEVICE_CPU), Forward);
REGISTER_KERNEL_BUILDER(Name("TfRnnLstmBackward").Device(DEVICE_CPU), Backward);
}  // namespace tf_rnn
