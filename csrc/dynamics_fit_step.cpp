// pyscorepen::dynamics_fit_step: one minibatch step of the dynamics ensemble's fit (Gaussian NLL
// with learned log-variance bounds, its gradient, Adam with per-layer coupled L2) in one call;
// see pyscorepen/ops/dynamics_fit_step.py for the math and the argument layout.
//
// The MLP passes are the ISA-dispatching ensemble_mlp_forward / ensemble_mlp_backward ops (SiLU),
// called below autograd; the loss gradient is one pass of the ISA's gaussian_nll_rows kernel over
// fixed 256-row chunks (each chunk's sums land in its own slot and are added in chunk order, so
// the result does not depend on the thread count), or ATen ops on the generic path; the optimizer
// is ATen's fused Adam, called per parameter group exactly as torch.optim.Adam(fused=True) is by
// EnsembleDynamics.make_optimizer (one group per weight with its decay, one for everything else).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <vector>

#include "adam.h"
#include "cpu/fused_mlp.h"
#include "ensemble_ops.h"

namespace pyscorepen {
namespace {

using at::Tensor;

void check_f32(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "pyscorepen.dynamics_fit_step: ", name,
              " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
}

Tensor dynamics_fit_step_cpu(const Tensor& x, const Tensor& target, at::TensorList weights, at::TensorList biases,
                             const Tensor& max_logvar, const Tensor& min_logvar, at::TensorList exp_avgs,
                             at::TensorList exp_avg_sqs, at::TensorList steps, at::ArrayRef<double> weight_decays,
                             double lr, double beta1, double beta2, double eps, double logvar_bound_coef) {
  at::AutoDispatchBelowADInplaceOrView no_autograd;   // in-place updates of leaves; no graph

  for (auto [t, name] : {std::pair{&x, "x"}, {&target, "target"}, {&max_logvar, "max_logvar"},
                         {&min_logvar, "min_logvar"}})
    check_f32(*t, name);
  const size_t L = weights.size();
  TORCH_CHECK(L >= 1 && biases.size() == L, "pyscorepen.dynamics_fit_step: one bias per weight, at least one layer");
  TORCH_CHECK(weights[0].dim() == 3, "pyscorepen.dynamics_fit_step: weights must be [E, in, out]");
  const int64_t E = weights[0].size(0);
  TORCH_CHECK(x.dim() == 3 && x.size(0) == E && x.size(2) == weights[0].size(1),
              "pyscorepen.dynamics_fit_step: x must be [E, B, in] = [", E, ", B, ", weights[0].size(1), "], got ",
              x.sizes());
  const int64_t B = x.size(1), two_o = weights[L - 1].size(2), O = two_o / 2;
  TORCH_CHECK(B > 0, "pyscorepen.dynamics_fit_step: empty batch");
  TORCH_CHECK(two_o % 2 == 0 && target.dim() == 3 && target.size(0) == E && target.size(1) == B &&
                  target.size(2) == O,
              "pyscorepen.dynamics_fit_step: the last layer outputs 2O = ", two_o, " (mean | log-variance), so target ",
              "must be [E, B, O] = [", E, ", ", B, ", ", O, "], got ", target.sizes());
  TORCH_CHECK(max_logvar.dim() == 1 && max_logvar.size(0) == O && min_logvar.sizes() == max_logvar.sizes(),
              "pyscorepen.dynamics_fit_step: max_logvar and min_logvar must be [O] = [", O, "]");
  TORCH_CHECK(max_logvar.is_contiguous() && min_logvar.is_contiguous(),
              "pyscorepen.dynamics_fit_step: max_logvar and min_logvar must be contiguous (updated in place)");
  for (size_t l = 0; l < L; ++l) {
    for (const Tensor* t : {&weights[l], &biases[l]}) {
      check_f32(*t, "weights and biases");
      TORCH_CHECK(t->is_contiguous(), "pyscorepen.dynamics_fit_step: weights and biases must be contiguous");
    }
    TORCH_CHECK(weights[l].dim() == 3 && weights[l].size(0) == E && biases[l].dim() == 2 && biases[l].size(0) == E &&
                    biases[l].size(1) == weights[l].size(2) &&
                    (l == 0 || weights[l].size(1) == weights[l - 1].size(2)),
                "pyscorepen.dynamics_fit_step: layer ", l, " must be weight [E, in, out] and bias [E, out] chained to ",
                "the previous layer, got ", weights[l].sizes(), " and ", biases[l].sizes());
  }
  const size_t n_states = 2 * L + 2;
  TORCH_CHECK(exp_avgs.size() == n_states && exp_avg_sqs.size() == n_states && steps.size() == n_states,
              "pyscorepen.dynamics_fit_step: expected Adam states for ", n_states,
              " tensors (w0..w", L - 1, ", b0..b", L - 1, ", max_logvar, min_logvar), got ", exp_avgs.size());
  TORCH_CHECK(weight_decays.size() == L, "pyscorepen.dynamics_fit_step: one weight decay per layer (", L,
              "), got ", weight_decays.size());

  // 1. forward (SiLU hidden layers): out = [mean | raw log-variance]
  auto [out_raw, saved] = call_forward(x, weights, biases, "silu");                  // [E, B, 2O]
  const Tensor out = out_raw.contiguous(), y = target.contiguous();
  const Tensor grad_out = at::empty({E, B, two_o}, x.options());                      // [E, B, 2O]
  const double scale = 1.0 / (static_cast<double>(B) * static_cast<double>(O));

  // 2. the loss and its gradient w.r.t. the outputs and the bounds
  double terms = 0.0;
  Tensor grad_max, grad_min;                                                          // [O]
  if (const cpu::Kernels* kernels = active_kernels()) {
    constexpr int64_t kChunk = 256;
    const int64_t rows = E * B, chunks = (rows + kChunk - 1) / kChunk;
    const Tensor hi = max_logvar.detach().contiguous(), lo = min_logvar.detach().contiguous();
    cpu::GaussianNllArgs args;
    args.outputs = O;
    args.out = out.data_ptr<float>();
    args.target = y.data_ptr<float>();
    args.max_logvar = hi.data_ptr<float>();
    args.min_logvar = lo.data_ptr<float>();
    args.scale = static_cast<float>(scale);
    args.grad_out = grad_out.data_ptr<float>();
    std::vector<float> chunk_terms(chunks), chunk_max(chunks * O), chunk_min(chunks * O);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c)
        chunk_terms[c] = kernels->gaussian_nll_rows(args, c * kChunk, std::min(rows, (c + 1) * kChunk),
                                                    chunk_max.data() + c * O, chunk_min.data() + c * O);
    });
    grad_max = at::zeros({O}, x.options());
    grad_min = at::zeros({O}, x.options());
    float *gmax = grad_max.data_ptr<float>(), *gmin = grad_min.data_ptr<float>();
    for (int64_t c = 0; c < chunks; ++c) {   // chunk order: independent of the thread count
      terms += chunk_terms[c];
      for (int64_t o = 0; o < O; ++o) {
        gmax[o] += chunk_max[c * O + o];
        gmin[o] += chunk_min[c * O + o];
      }
    }
  } else {   // generic: the same formulas as ATen ops
    const Tensor mean = out.narrow(2, 0, O), raw = out.narrow(2, O, O);
    const Tensor hi = max_logvar.detach(), lo = min_logvar.detach();
    const Tensor u = hi - raw;
    const Tensor v = hi - at::softplus(u, 1, 20) - lo;
    const Tensor lv = lo + at::softplus(v, 1, 20);
    const Tensor inv_var = at::exp(-lv), diff = mean - y;
    const Tensor q = diff * diff * inv_var;
    terms = (q + lv).sum().item<double>();
    const Tensor g_lv = (1.0 - q) * scale;
    const Tensor g_l1 = g_lv * at::sigmoid(v), s_u = at::sigmoid(u);
    grad_out.narrow(2, 0, O).copy_(diff * inv_var * (2.0 * scale));
    grad_out.narrow(2, O, O).copy_(g_l1 * s_u);
    grad_max = (g_l1 * (1.0 - s_u)).sum({0, 1});
    grad_min = (g_lv - g_l1).sum({0, 1});
  }
  // the bound term coef * (sum max - sum min)
  grad_max.add_(logvar_bound_coef);
  grad_min.sub_(logvar_bound_coef);
  const double bound = logvar_bound_coef * (max_logvar.sum().item<double>() - min_logvar.sum().item<double>());
  const Tensor loss = at::full({}, terms * scale + bound, x.options());

  // 3. backward: weight and bias gradients
  auto [unused_gx, grad_w, grad_b] = call_backward(grad_out, x, weights, saved, "silu", {false, true, true});

  // 4. Adam: one group per weight (its L2 decay), then biases and the bounds (no decay)
  for (size_t l = 0; l < L; ++l)
    adam_step({weights[l]}, {grad_w[l]}, exp_avgs, exp_avg_sqs, steps, l, lr, beta1, beta2, eps, weight_decays[l]);
  std::vector<Tensor> rest_params(biases.begin(), biases.end()), rest_grads(grad_b.begin(), grad_b.end());
  rest_params.insert(rest_params.end(), {max_logvar, min_logvar});
  rest_grads.insert(rest_grads.end(), {grad_max, grad_min});
  adam_step(rest_params, rest_grads, exp_avgs, exp_avg_sqs, steps, L, lr, beta1, beta2, eps, 0.0);
  return loss;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyscorepen, CPU, m) { m.impl("dynamics_fit_step", &dynamics_fit_step_cpu); }

}  // namespace pyscorepen
