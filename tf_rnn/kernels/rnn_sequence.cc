// A whole LSTM or GRU layer as one op each way: the forward pass over all time steps, and its backward pass with
// every weight gradient.
//
// Why: TensorFlow trains an LSTM on a CPU at the speed of its op dispatch, not of its arithmetic: every time
// step is a MatMul plus ~20 small elementwise ops, each scheduled, allocated and synchronised on its own. Here
// the time loop runs inside one kernel, so a training step issues a handful of ops instead of ~1,000.
//
// Rows of the batch never interact in an LSTM, so each thread takes a block of rows through all time steps on
// its own: no synchronisation inside the loop, and the weights stay hot in each core's cache. The weight
// gradients are one product after the backward time loop, split across threads by output columns: every
// gradient element is summed over the same rows in the same order, so the bits do not depend on the machine's
// core count.
//
// Layout (Keras' LSTM): z = x·W + b + h_prev·U, gates i, f, c, o in blocks of `units` columns;
// i = σ(z_i), f = σ(z_f), g = tanh(z_c), o = σ(z_o); c = f·c_prev + i·g; h = o·tanh(c); h_{-1} = c_{-1} = 0.
// x and h are batch-major, [batch, time, ...], as Keras passes them. What only the backward op reads (c, tanh c,
// the gates) is time-major, [time, batch, ...]: a thread's rows of one step are then one contiguous stretch of
// memory, which the hardware prefetcher streams, instead of rows time·4·units floats apart. The backward pass
// writes dz straight into panels of 16 columns, [panel][time·batch][16], the layout its products read.

#define EIGEN_USE_THREADS
#include <algorithm>
#include <vector>
#include <type_traits>

#include "Eigen/Core"
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_rnn {
using namespace tensorflow;
using Arr = Eigen::Map<Eigen::ArrayXf>;
using CArr = Eigen::Map<const Eigen::ArrayXf>;
static const Eigen::internal::scalar_logistic_op<float> logistic;

// ---- The matrix products: c[m×n] (+)= a[m×k] · b[k×n], for the small shapes of one time step. ----------------
//
// b is read in panels of kPanel columns and a block of kRows×kPanel results stays in registers. 6×16 is the
// AVX2 shape (12 accumulators, 2 vectors of b and 1 broadcast of a fill the 16 registers): measured here at
// 65-75 GFLOP/s on one core, against ~40 for 4×16 and ~20 for plain loops left to the compiler. The blocked
// path must stay a separate function from the portable one: inlined together, GCC spills the accumulators.
constexpr int kPanel = 16, kRows = 6;

struct A {  // a(r, q) = p[r * rs + q * qs]: a matrix or its transpose, anywhere in a sequence.
  const float* p;
  int64_t rs, qs;
};
struct B {  // Columns [s·kPanel, s·kPanel + kPanel) of b(q, ·) start at p + s * ps + q * qs.
  const float* p;
  int64_t qs, ps, k, n;
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
  return B{buf, kPanel, k * kPanel, k, n};
}

// A product term a[m×k] · b[k×n]; a product is the sum of one or two terms (x·W + h·U in one pass over c).
struct Term {
  A a;
  B b;
};

template <int R>
static void BlockPortable(const Term* terms, int nterms, int64_t s, int64_t r0, float* c, int64_t ldc, int cols,
                          bool acc_in) {
  float acc[R][kPanel] = {};
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < cols; ++j) acc[r][j] = acc_in ? c[r * ldc + j] : 0.f;
  for (int n = 0; n < nterms; ++n) {
    const A& a = terms[n].a;
    const float* b = terms[n].b.p + s * terms[n].b.ps;
    for (int64_t q = 0; q < terms[n].b.k; ++q)
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < cols; ++j) acc[r][j] += a.p[(r0 + r) * a.rs + q * a.qs] * b[q * terms[n].b.qs + j];
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < cols; ++j) c[r * ldc + j] = acc[r][j];
}

template <int R>
static void Block(const Term* terms, int nterms, int64_t s, int64_t r0, float* c, int64_t ldc, bool acc_in) {
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) acc[r][h] = acc_in ? _mm256_loadu_ps(c + r * ldc + 8 * h) : _mm256_setzero_ps();
  for (int n = 0; n < nterms; ++n) {
    const float* a = terms[n].a.p + r0 * terms[n].a.rs;
    const int64_t rs = terms[n].a.rs, as = terms[n].a.qs, k = terms[n].b.k, bs = terms[n].b.qs;
    const float* b = terms[n].b.p + s * terms[n].b.ps;
    for (int64_t q = 0; q < k; ++q) {
      const __m256 b0 = _mm256_loadu_ps(b + q * bs), b1 = _mm256_loadu_ps(b + q * bs + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 x = _mm256_broadcast_ss(a + r * rs + q * as);
        acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(c + r * ldc + 8 * h, acc[r][h]);
#else
  BlockPortable<R>(terms, nterms, s, r0, c, ldc, kPanel, acc_in);
#endif
}

template <bool Full>
static void Panel(const Term* terms, int nterms, int64_t m, int64_t s, float* c, int64_t ldc, int cols, bool acc_in) {
  auto block = [&](auto rows, int64_t r) {
    constexpr int R = decltype(rows)::value;
    if constexpr (Full)
      Block<R>(terms, nterms, s, r, c + r * ldc, ldc, acc_in);
    else
      BlockPortable<R>(terms, nterms, s, r, c + r * ldc, ldc, cols, acc_in);
  };
  int64_t r = 0;
  for (; r + kRows <= m; r += kRows) block(std::integral_constant<int, kRows>(), r);
  for (; r + 2 <= m; r += 2) block(std::integral_constant<int, 2>(), r);
  if (r < m) block(std::integral_constant<int, 1>(), r);
}

// c[m×n] (+)= Σ terms a·b, every b [·×n]; rows of c are ldc apart; acc_in adds to what c holds.
static void Gemm(const Term* t, int nterms, int64_t m, float* c, int64_t ldc, bool acc_in) {
  const int64_t n = t->b.n;
  for (int64_t s = 0; s * kPanel < n; ++s) {  // Panel-outer: one panel of b serves every block of rows.
    const int cols = static_cast<int>(std::min<int64_t>(kPanel, n - s * kPanel));
    if (cols == kPanel)  // Only a last panel narrower than 16 columns (n % 16 != 0) takes the portable path.
      Panel<true>(t, nterms, m, s, c + s * kPanel, ldc, cols, acc_in);
    else
      Panel<false>(t, nterms, m, s, c + s * kPanel, ldc, cols, acc_in);
  }
}
static void Gemm(std::initializer_list<Term> terms, int64_t m, float* c, int64_t ldc, bool acc_in) {
  Gemm(terms.begin(), static_cast<int>(terms.size()), m, c, ldc, acc_in);
}

// Rows per block of the time loops: one block per worker thread (no sum crosses rows there).
static int64_t RowsPerThread(OpKernelContext* ctx, int64_t batch) {
  const int64_t threads = std::max(1, ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads());
  return std::max<int64_t>(kRows, (batch + threads - 1) / threads);
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

// ---- The ops. ---------------------------------------------------------------------------------------------

// x: <float32>[batch, time, features]; kernel W: [features, 4·units]; recurrent_kernel U: [units, 4·units];
// bias: [4·units] → h: [batch, time, units] of every step; for the backward pass, c and tanh(c):
// [time, batch, units] and the activated gates: [time, batch, 4·units].
REGISTER_OP("TfRnnLstmForward")
    .Input("x: float")
    .Input("kernel: float")
    .Input("recurrent_kernel: float")
    .Input("bias: float")
    .Output("h: float")
    .Output("c: float")
    .Output("tanh_c: float")
    .Output("gates: float")
    .SetShapeFn([](shape_inference::InferenceContext* ctx) {
      shape_inference::ShapeHandle x, u;
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(0), 3, &x));
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(2), 2, &u));
      auto batch = ctx->Dim(x, 0), time = ctx->Dim(x, 1);
      ctx->set_output(0, ctx->MakeShape({batch, time, ctx->Dim(u, 0)}));
      ctx->set_output(1, ctx->MakeShape({time, batch, ctx->Dim(u, 0)}));
      ctx->set_output(2, ctx->output(1));
      ctx->set_output(3, ctx->MakeShape({time, batch, ctx->Dim(u, 1)}));
      return absl::OkStatus();
    });

// d_h: <float32>[batch, time, units], the loss' gradient reaching each step's h from outside the layer; x,
// recurrent_kernel, and the forward op's outputs → dz: [ceil(4·units / 16), time·batch, 16], the gradient of
// every step's pre-activations in panels of 16 columns (dx = dz·Wᵀ is left to TensorFlow, which skips it when x
// needs none); d_kernel, d_recurrent_kernel, d_bias: the weights' gradients.
REGISTER_OP("TfRnnLstmBackward")
    .Input("d_h: float")
    .Input("x: float")
    .Input("recurrent_kernel: float")
    .Input("h: float")
    .Input("c: float")
    .Input("tanh_c: float")
    .Input("gates: float")
    .Output("dz: float")
    .Output("d_kernel: float")
    .Output("d_recurrent_kernel: float")
    .Output("d_bias: float")
    .SetShapeFn([](shape_inference::InferenceContext* ctx) {
      shape_inference::ShapeHandle x, u;
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(1), 3, &x));
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(2), 2, &u));
      ctx->set_output(0, ctx->MakeShape({ctx->UnknownDim(), ctx->UnknownDim(), 16}));
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
  for (auto [t, width, time_major] : seq)
    if (t->dims() != 3 || t->dim_size(time_major) != x.dim_size(0) || t->dim_size(!time_major) != x.dim_size(1) ||
        t->dim_size(2) != width * u.dim_size(0))
      return errors::InvalidArgument("tf_rnn ", cell, " op: need ", time_major ? "[time, batch, " : "[batch, time, ",
                                     width, "·units]; got ", t->shape().DebugString());
  return absl::OkStatus();
}

class Forward : public OpKernel {
 public:
  explicit Forward(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor &x = ctx->input(0), &w = ctx->input(1), &u = ctx->input(2), &bias = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckShapes("LSTM", 4, x, u, &w, {}));
    const int64_t Bt = x.dim_size(0), T = x.dim_size(1), F = x.dim_size(2), U = u.dim_size(0), G = 4 * U;
    OP_REQUIRES(ctx, bias.dims() == 1 && bias.dim_size(0) == G,
                errors::InvalidArgument("tf_rnn LSTM op: bias must be [4·units]; got ", bias.shape().DebugString()));
    Tensor *h, *c, *tanh_c, *g;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({Bt, T, U}), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({T, Bt, U}), &c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({T, Bt, U}), &tanh_c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({T, Bt, G}), &g));
    if (Bt * T == 0) return;
    Tensor w_buf, u_buf;
    float *w_packed, *u_packed;
    OP_REQUIRES_OK(ctx, Scratch(ctx, PackedSize(F, G), &w_buf, &w_packed));
    OP_REQUIRES_OK(ctx, Scratch(ctx, PackedSize(U, G), &u_buf, &u_packed));
    const B wp = Pack(w.flat<float>().data(), F, G, G, 1, w_packed), up = Pack(u.flat<float>().data(), U, G, G, 1, u_packed);
    const float *xp = x.flat<float>().data(), *bp = bias.flat<float>().data();
    float *hp = h->flat<float>().data(), *cp = c->flat<float>().data(), *tcp = tanh_c->flat<float>().data(),
          *gp = g->flat<float>().data();
    ForRowBlocks(ctx, Bt, RowsPerThread(ctx, Bt), [&](int64_t, int64_t lo, int64_t hi) {
      for (int64_t t = 0; t < T; ++t) {
        float* z = gp + (t * Bt + lo) * G;  // This block's rows of step t, G apart.
        for (int64_t b = lo; b < hi; ++b) std::copy(bp, bp + G, z + (b - lo) * G);
        const Term xw{A{xp + (lo * T + t) * F, T * F, 1}, wp};
        if (t)
          Gemm({xw, Term{A{hp + (lo * T + t - 1) * U, T * U, 1}, up}}, hi - lo, z, G, /*acc_in=*/true);
        else
          Gemm({xw}, hi - lo, z, G, /*acc_in=*/true);
        for (int64_t b = lo; b < hi; ++b) {
          const int64_t row = t * Bt + b;
          Arr zr(gp + row * G, G), co(cp + row * U, U), tc(tcp + row * U, U), ho(hp + (b * T + t) * U, U);
          zr.head(2 * U) = zr.head(2 * U).unaryExpr(logistic);
          zr.segment(2 * U, U) = zr.segment(2 * U, U).tanh();
          zr.tail(U) = zr.tail(U).unaryExpr(logistic);
          co = zr.head(U) * zr.segment(2 * U, U);
          if (t) co += zr.segment(U, U) * CArr(cp + (row - Bt) * U, U);
          tc = co.tanh();
          ho = zr.tail(U) * tc;
        }
      }
    });
  }
};

// Rows (of batch × steps) per chunk of the weight-gradient sums: a chunk's panel of packed gradients (16 KiB)
// stays in L1 while every row of the product reads it.
constexpr int64_t kChunkRows = 256;

// The weight gradients as one product over every row and step, after the time loop: d_kernel = Σ x_tᵀ·dz_t,
// d_recurrent_kernel = Σ h_{t-1}ᵀ·dq_t, d_bias_w = Σ dz_t and (GRU) d_bias_u = Σ dq_t, where dz and dq are the
// gradients of x·W (+ bias) and of h_prev·U (+ bias), packed in panels [panel][t·batch + b][kPanel] (for the LSTM
// both are the same). Threads split the output's column panels; each output element is summed over the same
// rows in the same order whatever the thread count, so the bits do not depend on it. (Summed inside the time
// loop instead, per step and block of rows, k = 32, the products spent as long loading and storing their
// accumulators as multiplying.)
static void WeightGradients(OpKernelContext* ctx, const float* xp, const float* hp, const float* dz_pack,
                            const float* dq_pack, int64_t Bt, int64_t T, int64_t F, int64_t U, int64_t G, float* dw,
                            float* du, float* db_w, float* db_u) {
  const int64_t panels = (G + kPanel - 1) / kPanel, ps = Bt * T * kPanel;
  const int64_t rows = std::min(Bt, kChunkRows), steps = std::max<int64_t>(1, kChunkRows / Bt);
  ForRowBlocks(ctx, panels, 1, [&](int64_t s, int64_t, int64_t) {
    const int cols = static_cast<int>(std::min<int64_t>(kPanel, G - s * kPanel));
    auto product = [&](const Term* terms, int nterms, int64_t m, float* c, bool acc_in) {
      if (cols == kPanel)
        Panel<true>(terms, nterms, m, s, c + s * kPanel, G, cols, acc_in);
      else
        Panel<false>(terms, nterms, m, s, c + s * kPanel, G, cols, acc_in);
    };
    Term wt[kChunkRows], ut[kChunkRows];  // One term per step of a chunk: x_t's rows are T·F floats apart.
    bool first_w = true, first_u = true;
    for (int64_t t0 = 0; t0 < T; t0 += steps)
      for (int64_t b0 = 0; b0 < Bt; b0 += rows) {
        const int64_t m = std::min(rows, Bt - b0);
        int nw = 0, nu = 0;
        for (int64_t t = t0; t < std::min(T, t0 + steps); ++t) {
          const int64_t at = (t * Bt + b0) * kPanel;
          wt[nw++] = Term{A{xp + (b0 * T + t) * F, 1, T * F}, B{dz_pack + at, kPanel, ps, m, G}};
          if (t)  // h_{-1} = 0: no term.
            ut[nu++] = Term{A{hp + (b0 * T + t - 1) * U, 1, T * U}, B{dq_pack + at, kPanel, ps, m, G}};
        }
        product(wt, nw, F, dw, !first_w);
        first_w = false;
        if (nu) {
          product(ut, nu, U, du, !first_u);
          first_u = false;
        }
      }
    if (first_u)  // A single step: h_{-1} = 0 had no effect.
      for (int64_t q = 0; q < U; ++q) std::fill_n(du + q * G + s * kPanel, cols, 0.f);
    for (auto [pack, db] : {std::pair{dz_pack, db_w}, std::pair{dq_pack, db_u}}) {
      if (!db) continue;
      float sum[kPanel] = {};
      const float* d = pack + s * ps;
      for (int64_t q = 0; q < Bt * T; ++q)
        for (int j = 0; j < cols; ++j) sum[j] += d[q * kPanel + j];
      std::copy_n(sum, cols, db + s * kPanel);
    }
  });
}

// One row of one step of the LSTM's backward pass, over units [0, U): from the activated gates z = (i, f, g, o),
// tanh(c), c_prev (null at t = 0) and the gradient reaching h (dh_in: along time, dh_out: from outside), the
// gradient dc carried along c (updated in place: dc ← dc_t·f), and dz = d(pre-activations), stored to `dz(col)`.
// One pass over the row: as separate array expressions it read and wrote each vector a dozen times.
template <typename Store>
static void LstmBackwardRow(const float* z, const float* tc, const float* c_prev, const float* dh_in,
                            const float* dh_out, float* dc, int64_t U, Store dz) {
  using Packet = Eigen::internal::packet_traits<float>::type;
  constexpr int64_t kWidth = Eigen::internal::unpacket_traits<Packet>::size;
  using namespace Eigen::internal;
  const Packet one = pset1<Packet>(1.f);
  // A packet of dz must not straddle two panels: with U a multiple of the packet width, no column block does.
  const int64_t vectorized = U % kWidth == 0 && kPanel % kWidth == 0 ? U : 0;
  int64_t j = 0;
  for (; j < vectorized; j += kWidth) {
    const Packet i = ploadu<Packet>(z + j), f = ploadu<Packet>(z + U + j), g = ploadu<Packet>(z + 2 * U + j),
                 o = ploadu<Packet>(z + 3 * U + j), t = ploadu<Packet>(tc + j);
    const Packet dh = padd(ploadu<Packet>(dh_in + j), ploadu<Packet>(dh_out + j));
    const Packet dct = padd(ploadu<Packet>(dc + j), pmul(pmul(dh, o), psub(one, pmul(t, t))));
    pstoreu(dz(j), pmul(pmul(pmul(dct, g), i), psub(one, i)));
    pstoreu(dz(U + j), c_prev ? pmul(pmul(pmul(dct, ploadu<Packet>(c_prev + j)), f), psub(one, f)) : pzero(one));
    pstoreu(dz(2 * U + j), pmul(pmul(dct, i), psub(one, pmul(g, g))));
    pstoreu(dz(3 * U + j), pmul(pmul(pmul(dh, t), o), psub(one, o)));
    pstoreu(dc + j, pmul(dct, f));
  }
  for (; j < U; ++j) {  // The same arithmetic, one unit at a time.
    const float i = z[j], f = z[U + j], g = z[2 * U + j], o = z[3 * U + j], t = tc[j], dh = dh_in[j] + dh_out[j];
    const float dct = dc[j] + dh * o * (1.f - t * t);
    *dz(j) = dct * g * i * (1.f - i);
    *dz(U + j) = c_prev ? dct * c_prev[j] * f * (1.f - f) : 0.f;
    *dz(2 * U + j) = dct * i * (1.f - g * g);
    *dz(3 * U + j) = dh * t * o * (1.f - o);
    dc[j] = dct * f;
  }
}

// d_h: <float32>[batch, time, units] and the forward op's outputs → dz: the gradient of every step's
// pre-activations in panels, [panels, time·batch, kPanel] (column j of row t·batch + b at [j / 16][..][j % 16],
// columns ≥ 4·units undefined; `fused.py` turns it into dx = dz·Wᵀ when something needs dx), and the weights'
// gradients. The time loop carries dh and dc back along time per block of rows; the weight gradients are one
// product after it (WeightGradients).
class Backward : public OpKernel {
 public:
  explicit Backward(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor &dh = ctx->input(0), &x = ctx->input(1), &u = ctx->input(2), &h = ctx->input(3),
                 &c = ctx->input(4), &tanh_c = ctx->input(5), &g = ctx->input(6);
    OP_REQUIRES_OK(ctx, CheckShapes("LSTM", 4, x, u, nullptr,
                                    {{&dh, 1, false}, {&h, 1, false}, {&c, 1, true}, {&tanh_c, 1, true}, {&g, 4, true}}));
    const int64_t Bt = x.dim_size(0), T = x.dim_size(1), F = x.dim_size(2), U = u.dim_size(0), G = 4 * U;
    const int64_t panels = (G + kPanel - 1) / kPanel, ps = Bt * T * kPanel;
    Tensor *dz, *dw, *du, *db;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({panels, T * Bt, kPanel}), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({F, G}), &dw));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, u.shape(), &du));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({G}), &db));
    if (Bt * T == 0) {  // No rows or no steps: the weights had no effect.
      for (Tensor* out : {dw, du, db}) out->flat<float>().setZero();
      return;
    }
    Tensor ut_buf, work_buf;
    float *ut_packed, *work;
    OP_REQUIRES_OK(ctx, Scratch(ctx, PackedSize(G, U), &ut_buf, &ut_packed));
    const B ut = Pack(u.flat<float>().data(), G, U, 1, G, ut_packed);  // Uᵀ: dh_prev = dz · Uᵀ.
    const float *dhp = dh.flat<float>().data(), *xp = x.flat<float>().data(), *hp = h.flat<float>().data(),
                *cp = c.flat<float>().data(), *tcp = tanh_c.flat<float>().data(), *gp = g.flat<float>().data();
    float* pack = dz->flat<float>().data();
    // Each block of rows carries back along time the gradients into its h (through U) and into its c.
    const int64_t per = RowsPerThread(ctx, Bt), per_block = 2 * per * U;
    OP_REQUIRES_OK(ctx, Scratch(ctx, (Bt + per - 1) / per * per_block, &work_buf, &work));
    ForRowBlocks(ctx, Bt, per, [&](int64_t block, int64_t lo, int64_t hi) {
      float *dh_next = work + block * per_block, *dc = dh_next + per * U;
      std::fill(dh_next, dh_next + per_block, 0.f);
      // dh_prev = dz_t·Uᵀ with dz_t read in its panels: one term per panel of 16 columns (k = 16 each).
      std::vector<Term> terms(panels);
      for (int64_t p = 0; p < panels; ++p)
        terms[p].b = B{ut.p + p * kPanel * kPanel, kPanel, ut.ps, std::min<int64_t>(kPanel, G - p * kPanel), U};
      for (int64_t t = T - 1; t >= 0; --t) {
        float* rows = pack + t * Bt * kPanel;  // Row b of step t starts at rows + b·kPanel in every panel.
        for (int64_t b = lo; b < hi; ++b) {
          const int64_t row = t * Bt + b;
          float* out = rows + b * kPanel;
          LstmBackwardRow(gp + row * G, tcp + row * U, t ? cp + (row - Bt) * U : nullptr, dh_next + (b - lo) * U,
                          dhp + (b * T + t) * U, dc + (b - lo) * U, U,
                          [&](int64_t j) { return out + j / kPanel * ps + j % kPanel; });
        }
        if (t) {
          for (int64_t p = 0; p < panels; ++p) terms[p].a = A{rows + p * ps + lo * kPanel, kPanel, 1};
          Gemm(terms.data(), static_cast<int>(panels), hi - lo, dh_next, U, /*acc_in=*/false);
        }
      }
    });
    WeightGradients(ctx, xp, hp, pack, pack, Bt, T, F, U, G, dw->flat<float>().data(), du->flat<float>().data(),
                    db->flat<float>().data(), nullptr);
  }
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
      ctx->set_output(0, ctx->MakeShape({batch, time, ctx->Dim(u, 0)}));
      ctx->set_output(1, ctx->MakeShape({time, batch, ctx->Dim(u, 1)}));
      ctx->set_output(2, ctx->MakeShape({time, batch, ctx->Dim(u, 0)}));
      return absl::OkStatus();
    });

// d_h: [batch, time, units] from outside the layer → dz: [ceil(3·units / 16), time·batch, 16], the gradient of
// each step's x·W + b_in in panels (dx = dz·Wᵀ is left to TensorFlow); d_kernel, d_recurrent_kernel, d_bias
// [2, 3·units].
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
      ctx->set_output(0, ctx->MakeShape({ctx->UnknownDim(), ctx->UnknownDim(), 16}));
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
    const int64_t Bt = x.dim_size(0), T = x.dim_size(1), F = x.dim_size(2), U = u.dim_size(0), G = 3 * U;
    OP_REQUIRES(ctx, bias.dims() == 2 && bias.dim_size(0) == 2 && bias.dim_size(1) == G,
                errors::InvalidArgument("tf_rnn GRU op: bias must be [2, 3·units]; got ", bias.shape().DebugString()));
    Tensor *h, *g, *qh;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({Bt, T, U}), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({T, Bt, G}), &g));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({T, Bt, U}), &qh));
    if (Bt * T == 0) return;
    Tensor w_buf, u_buf, q_buf;
    float *w_packed, *u_packed, *q_all;
    OP_REQUIRES_OK(ctx, Scratch(ctx, PackedSize(F, G), &w_buf, &w_packed));
    OP_REQUIRES_OK(ctx, Scratch(ctx, PackedSize(U, G), &u_buf, &u_packed));
    const int64_t per = RowsPerThread(ctx, Bt);
    OP_REQUIRES_OK(ctx, Scratch(ctx, Bt * G, &q_buf, &q_all));  // h_prev·U + b_rec of the current step, per row.
    const B wp = Pack(w.flat<float>().data(), F, G, G, 1, w_packed), up = Pack(u.flat<float>().data(), U, G, G, 1, u_packed);
    const float *xp = x.flat<float>().data(), *b_in = bias.flat<float>().data(), *b_rec = b_in + G;
    float *hp = h->flat<float>().data(), *gp = g->flat<float>().data(), *qhp = qh->flat<float>().data();
    ForRowBlocks(ctx, Bt, per, [&](int64_t, int64_t lo, int64_t hi) {
      float* q = q_all + lo * G;
      for (int64_t t = 0; t < T; ++t) {
        float* a = gp + (t * Bt + lo) * G;  // This block's rows of step t, G apart: a, then the activated gates.
        for (int64_t b = lo; b < hi; ++b) {
          std::copy(b_in, b_in + G, a + (b - lo) * G);
          std::copy(b_rec, b_rec + G, q + (b - lo) * G);
        }
        Gemm({Term{A{xp + (lo * T + t) * F, T * F, 1}, wp}}, hi - lo, a, G, /*acc_in=*/true);
        if (t) Gemm({Term{A{hp + (lo * T + t - 1) * U, T * U, 1}, up}}, hi - lo, q, G, /*acc_in=*/true);
        for (int64_t b = lo; b < hi; ++b) {
          const int64_t row = t * Bt + b;
          Arr ar(gp + row * G, G), qr(q + (b - lo) * G, G), ho(hp + (b * T + t) * U, U);
          Arr(qhp + row * U, U) = qr.tail(U);
          ar.head(2 * U) = (ar.head(2 * U) + qr.head(2 * U)).unaryExpr(logistic);  // z, r
          ar.tail(U) = (ar.tail(U) + ar.segment(U, U) * qr.tail(U)).tanh();         // n
          if (t)
            ho = ar.head(U) * CArr(hp + (b * T + t - 1) * U, U) + (1.f - ar.head(U)) * ar.tail(U);
          else
            ho = (1.f - ar.head(U)) * ar.tail(U);
        }
      }
    });
  }
};

// One row of one step of the GRU's backward pass (see LstmBackwardRow): from the activated gates (z, r, n), q_h,
// h_prev (null at t = 0) and the gradient reaching h (dh_in, along time, updated in place to the direct path
// dh·z; dh_out, from outside) → dz = d(x·W + b_in), stored to `dz(col)`, and dq = d(h_prev·U + b_rec) to `dq(col)`.
template <typename StoreZ, typename StoreQ>
static void GruBackwardRow(const float* g, const float* q_h, const float* h_prev, float* dh_in, const float* dh_out,
                           int64_t U, StoreZ dz, StoreQ dq) {
  using Packet = Eigen::internal::packet_traits<float>::type;
  constexpr int64_t kWidth = Eigen::internal::unpacket_traits<Packet>::size;
  using namespace Eigen::internal;
  const Packet one = pset1<Packet>(1.f), zero = pzero(one);
  const int64_t vectorized = U % kWidth == 0 && kPanel % kWidth == 0 ? U : 0;
  int64_t j = 0;
  for (; j < vectorized; j += kWidth) {
    const Packet z = ploadu<Packet>(g + j), r = ploadu<Packet>(g + U + j), n = ploadu<Packet>(g + 2 * U + j);
    const Packet dh = padd(ploadu<Packet>(dh_in + j), ploadu<Packet>(dh_out + j));
    const Packet d_ah = pmul(pmul(dh, psub(one, z)), psub(one, pmul(n, n)));
    const Packet hp = h_prev ? ploadu<Packet>(h_prev + j) : zero;
    const Packet d_az = pmul(pmul(pmul(dh, psub(hp, n)), z), psub(one, z));
    const Packet d_ar = pmul(pmul(pmul(d_ah, ploadu<Packet>(q_h + j)), r), psub(one, r));
    pstoreu(dz(j), d_az);
    pstoreu(dz(U + j), d_ar);
    pstoreu(dz(2 * U + j), d_ah);
    pstoreu(dq(j), d_az);  // q_z, q_r enter like a_z, a_r;
    pstoreu(dq(U + j), d_ar);
    pstoreu(dq(2 * U + j), pmul(d_ah, r));  // q_h is scaled by r.
    pstoreu(dh_in + j, pmul(dh, z));  // The direct path h_prev → h; dq·Uᵀ is added by the caller.
  }
  for (; j < U; ++j) {
    const float z = g[j], r = g[U + j], n = g[2 * U + j], dh = dh_in[j] + dh_out[j];
    const float d_ah = dh * (1.f - z) * (1.f - n * n);
    const float d_az = dh * ((h_prev ? h_prev[j] : 0.f) - n) * z * (1.f - z);
    const float d_ar = d_ah * q_h[j] * r * (1.f - r);
    *dz(j) = *dq(j) = d_az;
    *dz(U + j) = *dq(U + j) = d_ar;
    *dz(2 * U + j) = d_ah;
    *dq(2 * U + j) = d_ah * r;
    dh_in[j] = dh * z;
  }
}

// The LSTM's backward design (see Backward) with the GRU's gradients: dz [panels, time·batch, 16] feeds dW, d b_in
// and dx; dq, the same shape, feeds dU, d b_rec and dh_prev.
class GruBackward : public OpKernel {
 public:
  explicit GruBackward(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor &dh = ctx->input(0), &x = ctx->input(1), &u = ctx->input(2), &h = ctx->input(3),
                 &g = ctx->input(4), &qh = ctx->input(5);
    OP_REQUIRES_OK(ctx, CheckShapes("GRU", 3, x, u, nullptr, {{&dh, 1, false}, {&h, 1, false}, {&g, 3, true}, {&qh, 1, true}}));
    const int64_t Bt = x.dim_size(0), T = x.dim_size(1), F = x.dim_size(2), U = u.dim_size(0), G = 3 * U;
    const int64_t panels = (G + kPanel - 1) / kPanel, ps = Bt * T * kPanel;
    Tensor *dz, *dw, *du, *db;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({panels, T * Bt, kPanel}), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({F, G}), &dw));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, u.shape(), &du));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({2, G}), &db));
    if (Bt * T == 0) {
      for (Tensor* out : {dw, du, db}) out->flat<float>().setZero();
      return;
    }
    Tensor ut_buf, dq_buf, work_buf;
    float *ut_packed, *dq_pack, *work;
    OP_REQUIRES_OK(ctx, Scratch(ctx, PackedSize(G, U), &ut_buf, &ut_packed));
    const B ut = Pack(u.flat<float>().data(), G, U, 1, G, ut_packed);  // Uᵀ: dh_prev += dq · Uᵀ.
    OP_REQUIRES_OK(ctx, Scratch(ctx, panels * ps, &dq_buf, &dq_pack));
    const float *dhp = dh.flat<float>().data(), *xp = x.flat<float>().data(), *hp = h.flat<float>().data(),
                *gp = g.flat<float>().data(), *qhp = qh.flat<float>().data();
    float* dz_pack = dz->flat<float>().data();
    const int64_t per = RowsPerThread(ctx, Bt);
    OP_REQUIRES_OK(ctx, Scratch(ctx, (Bt + per - 1) / per * per * U, &work_buf, &work));
    ForRowBlocks(ctx, Bt, per, [&](int64_t block, int64_t lo, int64_t hi) {
      float* dh_next = work + block * per * U;  // The gradient flowing back along time into this block's h.
      std::fill(dh_next, dh_next + per * U, 0.f);
      std::vector<Term> terms(panels);  // dq_t·Uᵀ with dq_t read in its panels (see the LSTM's Backward).
      for (int64_t p = 0; p < panels; ++p)
        terms[p].b = B{ut.p + p * kPanel * kPanel, kPanel, ut.ps, std::min<int64_t>(kPanel, G - p * kPanel), U};
      for (int64_t t = T - 1; t >= 0; --t) {
        float *z_rows = dz_pack + t * Bt * kPanel, *q_rows = dq_pack + t * Bt * kPanel;
        for (int64_t b = lo; b < hi; ++b) {
          const int64_t row = t * Bt + b;
          float *zo = z_rows + b * kPanel, *qo = q_rows + b * kPanel;
          GruBackwardRow(gp + row * G, qhp + row * U, t ? hp + (b * T + t - 1) * U : nullptr,
                         dh_next + (b - lo) * U, dhp + (b * T + t) * U, U,
                         [&](int64_t j) { return zo + j / kPanel * ps + j % kPanel; },
                         [&](int64_t j) { return qo + j / kPanel * ps + j % kPanel; });
        }
        if (t) {
          for (int64_t p = 0; p < panels; ++p) terms[p].a = A{q_rows + p * ps + lo * kPanel, kPanel, 1};
          Gemm(terms.data(), static_cast<int>(panels), hi - lo, dh_next, U, /*acc_in=*/true);
        }
      }
    });
    float* dbp = db->flat<float>().data();
    WeightGradients(ctx, xp, hp, dz_pack, dq_pack, Bt, T, F, U, G, dw->flat<float>().data(), du->flat<float>().data(),
                    dbp, dbp + G);
  }
};

REGISTER_KERNEL_BUILDER(Name("TfRnnGruForward").Device(DEVICE_CPU), GruForward);
REGISTER_KERNEL_BUILDER(Name("TfRnnGruBackward").Device(DEVICE_CPU), GruBackward);
REGISTER_KERNEL_BUILDER(Name("TfRnnLstmForward").Device(DEVICE_CPU), Forward);
REGISTER_KERNEL_BUILDER(Name("TfRnnLstmBackward").Device(DEVICE_CPU), Backward);
}  // namespace tf_rnn
