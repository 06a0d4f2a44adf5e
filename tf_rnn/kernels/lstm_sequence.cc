// A whole LSTM layer as one op each way: the forward pass over all time steps, and its backward pass with
// every weight gradient.
//
// Why: TensorFlow trains an LSTM on a CPU at the speed of its op dispatch, not of its arithmetic: every time
// step is a MatMul plus ~20 small elementwise ops, each scheduled, allocated and synchronised on its own. Here
// the time loop runs inside one kernel, so a training step issues a handful of ops instead of ~1,000.
//
// Rows of the batch never interact in an LSTM, so each thread takes a block of rows through all time steps on
// its own: no synchronisation inside the loop, and the weights stay hot in each core's cache. The weight
// gradients are summed per thread and added up at the end.
//
// Layout (Keras' LSTM): z = x·W + b + h_prev·U, gates i, f, c, o in blocks of `units` columns;
// i = σ(z_i), f = σ(z_f), g = tanh(z_c), o = σ(z_o); c = f·c_prev + i·g; h = o·tanh(c); h_{-1} = c_{-1} = 0.
// All sequences are batch-major, [batch, time, ...], as Keras passes them: no transposes around the ops.

#define EIGEN_USE_THREADS
#include <algorithm>
#include <type_traits>
#include <vector>

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

// b[k×n] (element (q, j) at w[q * qs + j * js]) packed as [panel][k][kPanel], zero beyond column n: the weights,
// read at every step, then stream through the inner loop contiguously.
struct Packed {
  std::vector<float> data;
  B b;
  Packed(const float* w, int64_t k, int64_t n, int64_t qs, int64_t js) {
    const int64_t panels = (n + kPanel - 1) / kPanel;
    data.assign(panels * k * kPanel, 0.f);
    for (int64_t q = 0; q < k; ++q)
      for (int64_t j = 0; j < n; ++j) data[(j / kPanel * k + q) * kPanel + j % kPanel] = w[q * qs + j * js];
    b = B{data.data(), kPanel, k * kPanel, k, n};
  }
};

template <int R>
static void BlockPortable(A a, const float* b, int64_t qs, int64_t k, float* c, int64_t ldc, int cols, bool acc_in) {
  float acc[R][kPanel] = {};
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < cols; ++j) acc[r][j] = acc_in ? c[r * ldc + j] : 0.f;
  for (int64_t q = 0; q < k; ++q)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < cols; ++j) acc[r][j] += a.p[r * a.rs + q * a.qs] * b[q * qs + j];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < cols; ++j) c[r * ldc + j] = acc[r][j];
}

template <int R>
static void Block(A a, const float* b, int64_t qs, int64_t k, float* c, int64_t ldc, bool acc_in) {
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) acc[r][h] = acc_in ? _mm256_loadu_ps(c + r * ldc + 8 * h) : _mm256_setzero_ps();
  for (int64_t q = 0; q < k; ++q) {
    const __m256 b0 = _mm256_loadu_ps(b + q * qs), b1 = _mm256_loadu_ps(b + q * qs + 8);
    for (int r = 0; r < R; ++r) {
      const __m256 x = _mm256_broadcast_ss(a.p + r * a.rs + q * a.qs);
      acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(c + r * ldc + 8 * h, acc[r][h]);
#else
  BlockPortable<R>(a, b, qs, k, c, ldc, kPanel, acc_in);
#endif
}

template <bool Full>
static void Panel(A a, int64_t m, const float* b, int64_t qs, int64_t k, float* c, int64_t ldc, int cols,
                  bool acc_in) {
  auto block = [&](auto rows, int64_t r) {
    constexpr int R = decltype(rows)::value;
    const A ar{a.p + r * a.rs, a.rs, a.qs};
    if constexpr (Full)
      Block<R>(ar, b, qs, k, c + r * ldc, ldc, acc_in);
    else
      BlockPortable<R>(ar, b, qs, k, c + r * ldc, ldc, cols, acc_in);
  };
  int64_t r = 0;
  for (; r + kRows <= m; r += kRows) block(std::integral_constant<int, kRows>(), r);
  for (; r + 2 <= m; r += 2) block(std::integral_constant<int, 2>(), r);
  if (r < m) block(std::integral_constant<int, 1>(), r);
}

// c[m×n] (+)= a[m×k] · b[k×n]; rows of c are ldc apart; acc_in adds to what c holds.
static void Gemm(A a, int64_t m, const B& b, float* c, int64_t ldc, bool acc_in) {
  for (int64_t s = 0; s * kPanel < b.n; ++s) {  // Panel-outer: one panel of b serves every block of rows.
    const int cols = static_cast<int>(std::min<int64_t>(kPanel, b.n - s * kPanel));
    if (cols == kPanel)  // The last panel is narrower only when units is not a multiple of 4.
      Panel<true>(a, m, b.p + s * b.ps, b.qs, b.k, c + s * kPanel, ldc, cols, acc_in);
    else
      Panel<false>(a, m, b.p + s * b.ps, b.qs, b.k, c + s * kPanel, ldc, cols, acc_in);
  }
}

// Runs fn(block index, first row, end row) on blocks of rows, one per worker thread; returns the block count.
template <typename F>
static int64_t ForRowBlocks(OpKernelContext* ctx, int64_t batch, F fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const int64_t threads = std::max(1, pool->NumThreads());
  const int64_t per = std::max<int64_t>(kRows, (batch + threads - 1) / threads);
  pool->ParallelFor(batch,
                    thread::ThreadPool::SchedulingParams(thread::ThreadPool::SchedulingStrategy::kFixedBlockSize,
                                                         std::nullopt, per),
                    [&](int64_t lo, int64_t hi) { fn(lo / per, lo, hi); });
  return (batch + per - 1) / per;
}

// ---- The ops. ---------------------------------------------------------------------------------------------

// x: <float32>[batch, time, features]; kernel W: [features, 4·units]; recurrent_kernel U: [units, 4·units];
// bias: [4·units] → h, c: [batch, time, units] of every step; gates: [batch, time, 4·units], activated, kept for
// the backward pass.
REGISTER_OP("TfRnnLstmForward")
    .Input("x: float")
    .Input("kernel: float")
    .Input("recurrent_kernel: float")
    .Input("bias: float")
    .Output("h: float")
    .Output("c: float")
    .Output("gates: float")
    .SetShapeFn([](shape_inference::InferenceContext* ctx) {
      shape_inference::ShapeHandle x, u, hc, g;
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(0), 3, &x));
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(2), 2, &u));
      TF_RETURN_IF_ERROR(ctx->ReplaceDim(x, 2, ctx->Dim(u, 0), &hc));
      TF_RETURN_IF_ERROR(ctx->ReplaceDim(x, 2, ctx->Dim(u, 1), &g));
      ctx->set_output(0, hc);
      ctx->set_output(1, hc);
      ctx->set_output(2, g);
      return absl::OkStatus();
    });

// d_h: <float32>[batch, time, units], the loss' gradient reaching each step's h from outside the layer; x,
// recurrent_kernel, and the forward op's h, c, gates → dz: [batch, time, 4·units], the gradient of every step's
// pre-activations (dx = dz·Wᵀ is left to TensorFlow, which skips it when x needs none); d_kernel, d_recurrent_kernel,
// d_bias: the weights' gradients.
REGISTER_OP("TfRnnLstmBackward")
    .Input("d_h: float")
    .Input("x: float")
    .Input("recurrent_kernel: float")
    .Input("h: float")
    .Input("c: float")
    .Input("gates: float")
    .Output("dz: float")
    .Output("d_kernel: float")
    .Output("d_recurrent_kernel: float")
    .Output("d_bias: float")
    .SetShapeFn([](shape_inference::InferenceContext* ctx) {
      shape_inference::ShapeHandle x, u;
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(1), 3, &x));
      TF_RETURN_IF_ERROR(ctx->WithRank(ctx->input(2), 2, &u));
      ctx->set_output(0, ctx->input(5));
      ctx->set_output(1, ctx->Matrix(ctx->Dim(x, 2), ctx->Dim(u, 1)));
      ctx->set_output(2, u);
      ctx->set_output(3, ctx->Vector(ctx->Dim(u, 1)));
      return absl::OkStatus();
    });

// Shapes: x [B, T, F]; every `seq` tensor [B, T, width]; U [units, 4·units]; W [F, 4·units] when given.
static Status CheckShapes(const Tensor& x, const Tensor& u, const Tensor* w,
                          std::initializer_list<std::pair<const Tensor*, int64_t>> seq) {
  const bool ok_u = u.dims() == 2 && u.dim_size(1) == 4 * u.dim_size(0);
  if (x.dims() != 3 || !ok_u || (w && (w->dims() != 2 || w->dim_size(0) != x.dim_size(2) ||
                                       w->dim_size(1) != u.dim_size(1))))
    return errors::InvalidArgument("tf_rnn LSTM op: need x [batch, time, features], kernel [features, 4·units], "
                                   "recurrent_kernel [units, 4·units]; got ", x.shape().DebugString(), ", ",
                                   w ? w->shape().DebugString() : "-", ", ", u.shape().DebugString());
  for (auto [t, width] : seq)
    if (t->dims() != 3 || t->dim_size(0) != x.dim_size(0) || t->dim_size(1) != x.dim_size(1) ||
        t->dim_size(2) != width * u.dim_size(0))
      return errors::InvalidArgument("tf_rnn LSTM op: need [batch, time, ", width, "·units]; got ",
                                     t->shape().DebugString());
  return absl::OkStatus();
}

class Forward : public OpKernel {
 public:
  explicit Forward(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor &x = ctx->input(0), &w = ctx->input(1), &u = ctx->input(2), &bias = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckShapes(x, u, &w, {}));
    const int64_t Bt = x.dim_size(0), T = x.dim_size(1), F = x.dim_size(2), U = u.dim_size(0), G = 4 * U;
    OP_REQUIRES(ctx, bias.dims() == 1 && bias.dim_size(0) == G,
                errors::InvalidArgument("tf_rnn LSTM op: bias must be [4·units]; got ", bias.shape().DebugString()));
    Tensor *h, *c, *g;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({Bt, T, U}), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({Bt, T, U}), &c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({Bt, T, G}), &g));
    if (Bt * T == 0) return;
    const Packed wp(w.flat<float>().data(), F, G, G, 1), up(u.flat<float>().data(), U, G, G, 1);
    const float *xp = x.flat<float>().data(), *bp = bias.flat<float>().data();
    float *hp = h->flat<float>().data(), *cp = c->flat<float>().data(), *gp = g->flat<float>().data();
    ForRowBlocks(ctx, Bt, [&](int64_t, int64_t lo, int64_t hi) {
      for (int64_t t = 0; t < T; ++t) {
        float* z = gp + (lo * T + t) * G;  // Row b of step t is z + (b - lo)·T·G.
        for (int64_t b = lo; b < hi; ++b) std::copy(bp, bp + G, gp + (b * T + t) * G);
        Gemm(A{xp + (lo * T + t) * F, T * F, 1}, hi - lo, wp.b, z, T * G, /*acc_in=*/true);
        if (t) Gemm(A{hp + (lo * T + t - 1) * U, T * U, 1}, hi - lo, up.b, z, T * G, /*acc_in=*/true);
        for (int64_t b = lo; b < hi; ++b) {
          const int64_t row = b * T + t;
          Arr zr(gp + row * G, G), co(cp + row * U, U), ho(hp + row * U, U);
          zr.head(2 * U) = zr.head(2 * U).unaryExpr(logistic);
          zr.segment(2 * U, U) = zr.segment(2 * U, U).tanh();
          zr.tail(U) = zr.tail(U).unaryExpr(logistic);
          co = zr.head(U) * zr.segment(2 * U, U);
          if (t) co += zr.segment(U, U) * CArr(cp + (row - 1) * U, U);
          ho = zr.tail(U) * co.tanh();
        }
      }
    });
  }
};

class Backward : public OpKernel {
 public:
  explicit Backward(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor &dh = ctx->input(0), &x = ctx->input(1), &u = ctx->input(2), &h = ctx->input(3),
                 &c = ctx->input(4), &g = ctx->input(5);
    OP_REQUIRES_OK(ctx, CheckShapes(x, u, nullptr, {{&dh, 1}, {&h, 1}, {&c, 1}, {&g, 4}}));
    const int64_t Bt = x.dim_size(0), T = x.dim_size(1), F = x.dim_size(2), U = u.dim_size(0), G = 4 * U;
    Tensor *dz, *dw, *du, *db;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, g.shape(), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({F, G}), &dw));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, u.shape(), &du));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({G}), &db));
    const Packed ut(u.flat<float>().data(), G, U, 1, G);  // Uᵀ: dh_prev = dz · Uᵀ.
    const float *dhp = dh.flat<float>().data(), *xp = x.flat<float>().data(), *hp = h.flat<float>().data(),
                *cp = c.flat<float>().data(), *gp = g.flat<float>().data();
    float* dzp = dz->flat<float>().data();
    // Each block of rows sums its own weight gradients, [F + U + 1, 4·units]; they are added up at the end.
    std::vector<std::vector<float>> partial(std::max<int64_t>(1, (Bt + kRows - 1) / kRows));
    const int64_t blocks = Bt * T == 0 ? 0 : ForRowBlocks(ctx, Bt, [&](int64_t block, int64_t lo, int64_t hi) {
      std::vector<float>& sums = partial[block];
      sums.assign((F + U + 1) * G, 0.f);
      float *sw = sums.data(), *su = sw + F * G, *sb = su + U * G;
      const int64_t m = hi - lo;
      // The gradients flowing back along time into this block's rows: into h (through U) and into c.
      std::vector<float> dh_next(m * U, 0.f), dc(m * U, 0.f);
      Eigen::ArrayXf dct(U), tc(U);
      for (int64_t t = T - 1; t >= 0; --t) {
        for (int64_t b = lo; b < hi; ++b) {
          const int64_t row = b * T + t;
          CArr z(gp + row * G, G), ct(cp + row * U, U);
          Arr dz_r(dzp + row * G, G), dc_r(dc.data() + (b - lo) * U, U), dhn(dh_next.data() + (b - lo) * U, U);
          auto i = z.head(U), f = z.segment(U, U), gg = z.segment(2 * U, U), o = z.tail(U);
          dhn += CArr(dhp + row * U, U);  // Now the whole gradient reaching h_t.
          tc = ct.tanh();
          dct = dc_r + dhn * o * (1.f - tc * tc);
          dz_r.head(U) = dct * gg * i * (1.f - i);
          if (t)
            dz_r.segment(U, U) = dct * CArr(cp + (row - 1) * U, U) * f * (1.f - f);
          else
            dz_r.segment(U, U).setZero();
          dz_r.segment(2 * U, U) = dct * i * (1.f - gg * gg);
          dz_r.tail(U) = dhn * tc * o * (1.f - o);
          dc_r = dct * f;
          Arr(sb, G) += dz_r;
        }
        // dz_t of this block's rows as a matrix [m × 4·units], rows T·G apart.
        const B dz_t{dzp + (lo * T + t) * G, T * G, kPanel, m, G};
        Gemm(A{xp + (lo * T + t) * F, 1, T * F}, F, dz_t, sw, G, /*acc_in=*/true);  // dW += x_tᵀ · dz_t
        if (t) {
          Gemm(A{hp + (lo * T + t - 1) * U, 1, T * U}, U, dz_t, su, G, /*acc_in=*/true);  // dU += h_{t-1}ᵀ · dz_t
          Gemm(A{dzp + (lo * T + t) * G, T * G, 1}, m, ut.b, dh_next.data(), U, /*acc_in=*/false);  // dz_t · Uᵀ
        }
      }
    });
    Eigen::Map<Eigen::ArrayXf> out_w(dw->flat<float>().data(), F * G), out_u(du->flat<float>().data(), U * G),
        out_b(db->flat<float>().data(), G);
    out_w.setZero();
    out_u.setZero();
    out_b.setZero();
    for (int64_t k = 0; k < blocks; ++k) {
      const float* s = partial[k].data();
      out_w += CArr(s, F * G);
      out_u += CArr(s + F * G, U * G);
      out_b += CArr(s + (F + U) * G, G);
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("TfRnnLstmForward").Device(DEVICE_CPU), Forward);
REGISTER_KERNEL_BUILDER(Name("TfRnnLstmBackward").Device(DEVICE_CPU), Backward);
}  // namespace tf_rnn
