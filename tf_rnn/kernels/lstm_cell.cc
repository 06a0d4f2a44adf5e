// One LSTM time step's elementwise work as a single kernel in each direction.
//
// Why: on a CPU, an LSTM training step in TensorFlow is bound by per-op dispatch and by the memory traffic of
// ~20 separate elementwise ops per time step, not by its matrix products. These kernels do a step's gates,
// cell and hidden state in one pass over the batch (and the backward pass likewise); the matrix products stay
// in TensorFlow's MatMul (tf_rnn/fused.py), which is faster on these small shapes than anything written here.
//
// Layout (Keras' LSTM): z = x·W + b + h_prev·U, gates i, f, c, o in blocks of `units` columns;
// i = σ(z_i), f = σ(z_f), g = tanh(z_c), o = σ(z_o); c = f·c_prev + i·g; h = o·tanh(c).

#define EIGEN_USE_THREADS
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "Eigen/Core"

namespace tf_rnn {
using namespace tensorflow;
using Arr = Eigen::Map<Eigen::ArrayXf>;
using CArr = Eigen::Map<const Eigen::ArrayXf>;
static const Eigen::internal::scalar_logistic_op<float> logistic;

// xproj, hw: <float32>[batch, 4·units]; c_prev: [batch, units] → h, c: [batch, units]; gates (activated): [batch, 4·units].
REGISTER_OP("TfRnnLstmCellForward")
    .Input("xproj: float").Input("hw: float").Input("c_prev: float")
    .Output("h: float").Output("c: float").Output("gates: float")
    .SetShapeFn([](shape_inference::InferenceContext* ctx) {
      ctx->set_output(0, ctx->input(2)); ctx->set_output(1, ctx->input(2)); ctx->set_output(2, ctx->input(0));
      return absl::OkStatus(); });

// dh, dc: gradients reaching h and c of this step; gates, c, c_prev from the forward step →
// dz: [batch, 4·units] (gradient of the pre-activations), dc_prev: [batch, units].
REGISTER_OP("TfRnnLstmCellBackward")
    .Input("dh: float").Input("dc: float").Input("gates: float").Input("c: float").Input("c_prev: float")
    .Output("dz: float").Output("dc_prev: float")
    .SetShapeFn([](shape_inference::InferenceContext* ctx) {
      ctx->set_output(0, ctx->input(2)); ctx->set_output(1, ctx->input(1));
      return absl::OkStatus(); });

class CellForward : public OpKernel {
 public:
  explicit CellForward(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor &x = ctx->input(0), &hw = ctx->input(1), &cp = ctx->input(2);
    const int64_t B = cp.dim_size(0), U = cp.dim_size(1);
    OP_REQUIRES(ctx, cp.dims() == 2 && x.dims() == 2 && x.dim_size(0) == B && x.dim_size(1) == 4 * U &&
                     hw.shape() == x.shape(),
                errors::InvalidArgument("TfRnnLstmCellForward: xproj and hw must be [batch, 4*units] and c_prev "
                                        "[batch, units]; got ", x.shape().DebugString(), ", ",
                                        hw.shape().DebugString(), ", ", cp.shape().DebugString()));
    Tensor *h, *c, *g;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, cp.shape(), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, cp.shape(), &c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, x.shape(), &g));
    const float *xp = x.flat<float>().data(), *hwp = hw.flat<float>().data(), *cpp = cp.flat<float>().data();
    float *hp = h->flat<float>().data(), *cop = c->flat<float>().data(), *gp = g->flat<float>().data();
    auto rows = [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        CArr xr(xp + b * 4 * U, 4 * U), hr(hwp + b * 4 * U, 4 * U), cr(cpp + b * U, U);
        Arr gr(gp + b * 4 * U, 4 * U), ho(hp + b * U, U), co(cop + b * U, U);
        gr = xr + hr;
        gr.segment(0, 2 * U) = gr.segment(0, 2 * U).unaryExpr(logistic);
        gr.segment(2 * U, U) = gr.segment(2 * U, U).tanh();
        gr.segment(3 * U, U) = gr.segment(3 * U, U).unaryExpr(logistic);
        co = gr.segment(U, U) * cr + gr.segment(0, U) * gr.segment(2 * U, U);
        ho = gr.segment(3 * U, U) * co.tanh();
      }
    };
    // Two halves of the batch on the op's worker threads: measured faster than one thread or finer blocks.
    ctx->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(
        B, thread::ThreadPool::SchedulingParams(thread::ThreadPool::SchedulingStrategy::kFixedBlockSize,
                                                std::nullopt, (B + 1) / 2), rows);
  }
};

class CellBackward : public OpKernel {
 public:
  explicit CellBackward(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor &dh = ctx->input(0), &dc = ctx->input(1), &g = ctx->input(2), &c = ctx->input(3), &cp = ctx->input(4);
    const int64_t B = c.dim_size(0), U = c.dim_size(1);
    OP_REQUIRES(ctx, c.dims() == 2 && g.dims() == 2 && g.dim_size(0) == B && g.dim_size(1) == 4 * U &&
                     dh.shape() == c.shape() && dc.shape() == c.shape() && cp.shape() == c.shape(),
                errors::InvalidArgument("TfRnnLstmCellBackward: inconsistent shapes"));
    Tensor *dz, *dcp;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, g.shape(), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, c.shape(), &dcp));
    const float *dhp = dh.flat<float>().data(), *dcin = dc.flat<float>().data(), *gp = g.flat<float>().data(),
                *cpt = c.flat<float>().data(), *cpp = cp.flat<float>().data();
    float *dzp = dz->flat<float>().data(), *dcout = dcp->flat<float>().data();
    auto rows = [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        CArr dhr(dhp + b * U, U), dcr(dcin + b * U, U), gr(gp + b * 4 * U, 4 * U), cr(cpt + b * U, U),
            cpr(cpp + b * U, U);
        Arr dzr(dzp + b * 4 * U, 4 * U), dco(dcout + b * U, U);
        auto i = gr.segment(0, U); auto f = gr.segment(U, U); auto gg = gr.segment(2 * U, U);
        auto o = gr.segment(3 * U, U);
        Eigen::ArrayXf tc = cr.tanh();
        Eigen::ArrayXf dct = dcr + dhr * o * (1.f - tc * tc);
        dzr.segment(0, U) = dct * gg * i * (1.f - i);
        dzr.segment(U, U) = dct * cpr * f * (1.f - f);
        dzr.segment(2 * U, U) = dct * i * (1.f - gg * gg);
        dzr.segment(3 * U, U) = dhr * tc * o * (1.f - o);
        dco = dct * f;
      }
    };
    ctx->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(
        B, thread::ThreadPool::SchedulingParams(thread::ThreadPool::SchedulingStrategy::kFixedBlockSize,
                                                std::nullopt, (B + 1) / 2), rows);
  }
};

REGISTER_KERNEL_BUILDER(Name("TfRnnLstmCellForward").Device(DEVICE_CPU), CellForward);
REGISTER_KERNEL_BUILDER(Name("TfRnnLstmCellBackward").Device(DEVICE_CPU), CellBackward);
}  // namespace tf_rnn
