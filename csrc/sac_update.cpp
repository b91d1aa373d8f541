// pyscorepen::sac_update: one whole SAC step (critic, actor, alpha, Adam, Polyak) in one call,
// see pyscorepen/ops/sac_update.py for the math, the argument layout and the population note.
//
// Every MLP pass goes through the ISA-dispatching ops of this extension (soft_value,
// ensemble_mlp_forward, ensemble_mlp_backward: AVX-512, AVX2 or the generic ATen path, as
// pyscorepen.ops.set_cpu_isa / $PYSCOREPEN_CPU_ISA / the CPU chose), called through the dispatcher below autograd: no
// autograd graph is recorded and no Python runs between the passes. The optimizer is ATen's
// fused Adam (the kernel torch.optim.Adam(fused=True) runs) on the caller's parameter and state
// tensors, in place; the Polyak average is one _foreach_lerp_. Everything here is deterministic
// for a given thread count and independent of it: the MLP kernels give each row / output block
// to exactly one task and reduce over the batch in a fixed order.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <vector>

#include "adam.h"
#include "ensemble_ops.h"
#include "cpu/fused_mlp.h"
#include "transpose.h"

namespace pyscorepen {
namespace {

using at::Tensor;

// ------------------------------------------------------------- the dispatching MLP ops
Tensor call_soft_value(const Tensor& obs, const Tensor& noise, at::TensorList actor_weights,
                       at::TensorList actor_biases, at::TensorList critic_weights, at::TensorList critic_biases,
                       const Tensor& scale, const Tensor& offset, const Tensor& alpha, double lo, double hi) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyscorepen::soft_value", "")
          .typed<Tensor(const Tensor&, const Tensor&, at::TensorList, at::TensorList, at::TensorList,
                        at::TensorList, const Tensor&, const Tensor&, const Tensor&, double, double)>();
  return op.call(obs, noise, actor_weights, actor_biases, critic_weights, critic_biases, scale, offset, alpha, lo,
                 hi);
}

void check_f32(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "pyscorepen.sac_update: ", name,
              " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
}

void check_contiguous(at::TensorList list, const char* name) {
  for (const Tensor& t : list) {
    check_f32(t, name);
    TORCH_CHECK(t.is_contiguous(), "pyscorepen.sac_update: ", name, " must be contiguous (updated in place)");
  }
}

// --------------------------------------------------------------------------- the op
Tensor sac_update_cpu(const Tensor& obs, const Tensor& actions, const Tensor& rewards, const Tensor& next_obs,
                      const Tensor& terminals, const Tensor& penalty, const c10::optional<Tensor>& target_penalty,
                      const Tensor& target_noise, const Tensor& actor_noise, at::TensorList actor_weights,
                      at::TensorList actor_biases, at::TensorList critic_weights, at::TensorList critic_biases,
                      at::TensorList target_weights, at::TensorList target_biases, const Tensor& log_alpha,
                      at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList steps,
                      const Tensor& action_scale, const Tensor& action_offset, double gamma, double tau,
                      double target_entropy, bool auto_alpha, double actor_lr, double critic_lr, double alpha_lr,
                      double beta1, double beta2, double adam_eps, double weight_decay, double log_std_min,
                      double log_std_max, bool deterministic_backup, c10::optional<double> target_min,
                      const c10::optional<Tensor>& cql_obs, const c10::optional<Tensor>& cql_actions,
                      const c10::optional<Tensor>& cql_log_density, const c10::optional<Tensor>& cql_push_up,
                      double cql_weight, double cql_temperature) {
  // below autograd: the parameters may require grad, but no graph is recorded and the in-place
  // updates of leaves are allowed (the op's schema declares them)
  at::AutoDispatchBelowADInplaceOrView no_autograd;

  for (auto [t, name] : {std::pair{&obs, "obs"}, {&actions, "actions"}, {&rewards, "rewards"},
                         {&next_obs, "next_obs"}, {&terminals, "terminals"}, {&penalty, "penalty"},
                         {&target_noise, "target_noise"}, {&actor_noise, "actor_noise"}, {&log_alpha, "log_alpha"},
                         {&action_scale, "action_scale"}, {&action_offset, "action_offset"}})
    check_f32(*t, name);
  TORCH_CHECK(obs.dim() == 2 && actions.dim() == 2 && obs.size(0) == actions.size(0),
              "pyscorepen.sac_update: obs [B, S] and actions [B, A] expected, got ", obs.sizes(), " and ",
              actions.sizes());
  const int64_t B = obs.size(0), S = obs.size(1), A = actions.size(1);
  TORCH_CHECK(B > 0, "pyscorepen.sac_update: empty batch");
  TORCH_CHECK(next_obs.sizes() == obs.sizes(), "pyscorepen.sac_update: next_obs must be [B, S] like obs");
  for (const Tensor* t : {&rewards, &terminals, &penalty})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == B, "pyscorepen.sac_update: rewards, terminals and penalty must be [B]");
  if (target_penalty.has_value()) {
    check_f32(*target_penalty, "target_penalty");
    TORCH_CHECK(target_penalty->dim() == 1 && target_penalty->size(0) == B,
                "pyscorepen.sac_update: target_penalty must be [B]");
  }
  const bool cql = cql_actions.has_value();
  TORCH_CHECK(cql == cql_obs.has_value() && cql == cql_log_density.has_value() && cql == cql_push_up.has_value(),
              "pyscorepen.sac_update: cql_obs, cql_actions, cql_log_density and cql_push_up come together");
  int64_t K = 0, C = 0;   // CQL: K sampled actions for each of C push-down states
  if (cql) {
    for (auto [t, name] : {std::pair{&*cql_obs, "cql_obs"}, {&*cql_actions, "cql_actions"},
                           {&*cql_log_density, "cql_log_density"}, {&*cql_push_up, "cql_push_up"}})
      check_f32(*t, name);
    TORCH_CHECK(cql_actions->dim() == 3 && cql_actions->size(2) == actions.size(1) && cql_obs->dim() == 2 &&
                    cql_obs->size(0) == cql_actions->size(1) && cql_obs->size(1) == obs.size(1),
                "pyscorepen.sac_update: cql_obs [C, S] and cql_actions [K, C, A] expected, got ", cql_obs->sizes(),
                " and ", cql_actions->sizes());
    K = cql_actions->size(0);
    C = cql_actions->size(1);
    TORCH_CHECK(K > 0 && C > 0, "pyscorepen.sac_update: cql_actions must not be empty");
    TORCH_CHECK(cql_log_density->dim() == 2 && cql_log_density->size(0) == K && cql_log_density->size(1) == C,
                "pyscorepen.sac_update: cql_log_density must be [K, C] = [", K, ", ", C, "], got ",
                cql_log_density->sizes());
    TORCH_CHECK(cql_push_up->dim() == 1 && cql_push_up->size(0) == obs.size(0),
                "pyscorepen.sac_update: cql_push_up must be [B]");
    TORCH_CHECK(cql_temperature > 0.0, "pyscorepen.sac_update: cql_temperature must be > 0");
  }
  TORCH_CHECK(target_noise.sizes() == actions.sizes() && actor_noise.sizes() == actions.sizes(),
              "pyscorepen.sac_update: target_noise and actor_noise must be [B, A] like actions");
  TORCH_CHECK(log_alpha.dim() == 0, "pyscorepen.sac_update: log_alpha must be 0-dim");
  TORCH_CHECK(action_scale.numel() == A && action_offset.numel() == A,
              "pyscorepen.sac_update: action_scale/offset must have A = ", A, " entries");
  const size_t La = actor_weights.size(), Lc = critic_weights.size();
  TORCH_CHECK(La >= 1 && actor_biases.size() == La && Lc >= 1 && critic_biases.size() == Lc &&
                  target_weights.size() == Lc && target_biases.size() == Lc,
              "pyscorepen.sac_update: one bias per weight, and as many target layers as critic layers");
  for (auto [list, name] : {std::pair{actor_weights, "actor_weights"}, {actor_biases, "actor_biases"},
                            {critic_weights, "critic_weights"}, {critic_biases, "critic_biases"},
                            {target_weights, "target_weights"}, {target_biases, "target_biases"},
                            {exp_avgs, "exp_avgs"}, {exp_avg_sqs, "exp_avg_sqs"}})
    check_contiguous(list, name);
  int64_t in_dim = S;
  for (size_t l = 0; l < La; ++l) {   // nn.Linear layout: [out, in]
    const Tensor& w = actor_weights[l];
    TORCH_CHECK(w.dim() == 2 && w.size(1) == in_dim && actor_biases[l].dim() == 1 &&
                    actor_biases[l].size(0) == w.size(0),
                "pyscorepen.sac_update: actor layer ", l, " must be weight [out, ", in_dim, "] and bias [out], got ",
                w.sizes(), " and ", actor_biases[l].sizes());
    in_dim = w.size(0);
  }
  TORCH_CHECK(in_dim == 2 * A, "pyscorepen.sac_update: the actor's last layer must output 2A = ", 2 * A,
              " (mu | log_std), got ", in_dim);
  const int64_t N = critic_weights[0].dim() == 3 ? critic_weights[0].size(0) : 0;
  in_dim = S + A;
  for (size_t l = 0; l < Lc; ++l) {   // QEnsemble layout: [N, in, out]
    const Tensor& w = critic_weights[l];
    TORCH_CHECK(N > 0 && w.dim() == 3 && w.size(0) == N && w.size(1) == in_dim && critic_biases[l].dim() == 2 &&
                    critic_biases[l].size(0) == N && critic_biases[l].size(1) == w.size(2) &&
                    target_weights[l].sizes() == w.sizes() && target_biases[l].sizes() == critic_biases[l].sizes(),
                "pyscorepen.sac_update: critic (and target) layer ", l, " must be weight [N, ", in_dim,
                ", out] and bias [N, out], got ", w.sizes(), " and ", critic_biases[l].sizes());
    in_dim = w.size(2);
  }
  TORCH_CHECK(in_dim == 1, "pyscorepen.sac_update: the critics' last layer must output 1 (Q), got ", in_dim);
  const size_t n_states = 2 * La + 2 * Lc + (auto_alpha ? 1 : 0);
  TORCH_CHECK(exp_avgs.size() == n_states && exp_avg_sqs.size() == n_states && steps.size() == n_states,
              "pyscorepen.sac_update: expected Adam states for ", n_states,
              " tensors (actor w0, b0, ..., critic w0, b0, ..., log_alpha if auto_alpha), got ", exp_avgs.size());
  for (const Tensor& t : steps)
    TORCH_CHECK(t.numel() == 1 && t.device().is_cpu() && t.scalar_type() == at::kFloat,
                "pyscorepen.sac_update: Adam steps must be one-element float32 CPU tensors");

  // the actor's weights as [in, out] (the fused kernels' layout) and as a 1-member ensemble
  std::vector<Tensor> actor_w_io(La), actor_w_1(La), actor_b_1(La), actor_w_c(La);
  std::vector<TransposeJob> to_io;
  for (size_t l = 0; l < La; ++l) {
    actor_w_c[l] = actor_weights[l].contiguous();                                  // [out, in]
    const int64_t out = actor_w_c[l].size(0), in = actor_w_c[l].size(1);
    actor_w_io[l] = at::empty({in, out}, actor_w_c[l].options());                  // [in, out]
    to_io.push_back({actor_w_c[l].data_ptr<float>(), out, in, actor_w_io[l].data_ptr<float>(), out});
    actor_w_1[l] = actor_w_io[l].unsqueeze(0);            // [1, in, out]
    actor_b_1[l] = actor_biases[l].unsqueeze(0);          // [1, out]
  }
  transpose_jobs(to_io);
  const Tensor alpha = log_alpha.exp();                   // [] temperature before this step
  const float alpha_value = alpha.item<float>();
  const Tensor scale = action_scale.reshape({A}).contiguous(), offset = action_offset.reshape({A}).contiguous();
  const float* scale_p = scale.data_ptr<float>();
  const float* offset_p = offset.data_ptr<float>();
  const at::TensorOptions f32 = obs.options();
  const float inv_b = 1.0f / static_cast<float>(B);

  // 1. Bellman target (SAC Eq. 3; ScorePen-MORL Eq. 20 / MOPO Alg. 2 stored penalty; MOBILE
  //    target penalty precomputed): y = r - penalty + gamma (1 - d) [min_k Q'_k(s', a') - alpha log pi(a'|s')];
  //    the entropy-free backup (COMBO's default) is alpha = 0 in V(s'); target_min (MOBILE's
  //    references: 0) clamps y from below
  const Tensor target_alpha = deterministic_backup ? at::zeros_like(alpha) : alpha;
  const Tensor next_v = call_soft_value(next_obs, target_noise, actor_w_io, actor_biases, target_weights,
                                        target_biases, scale, offset, target_alpha, log_std_min, log_std_max);   // [B]
  const Tensor y = at::empty({B}, f32);                                                                  // [B]
  {
    const Tensor r = rewards.contiguous(), d = terminals.contiguous(), p = penalty.contiguous();
    const Tensor v = next_v.contiguous();
    const Tensor tp = target_penalty.has_value() ? target_penalty->contiguous() : Tensor();
    const float *r_p = r.data_ptr<float>(), *d_p = d.data_ptr<float>(), *p_p = p.data_ptr<float>(),
                *v_p = v.data_ptr<float>(), *tp_p = tp.defined() ? tp.data_ptr<float>() : nullptr;
    float* y_p = y.data_ptr<float>();
    const float g = static_cast<float>(gamma);
    const bool clamp = target_min.has_value();
    const float lower = clamp ? static_cast<float>(*target_min) : 0.0f;
    for (int64_t b = 0; b < B; ++b) {
      float reward = r_p[b] - p_p[b];
      if (tp_p != nullptr) reward -= tp_p[b];
      const float target = reward + g * (1.0f - d_p[b]) * v_p[b];
      y_p[b] = clamp ? std::max(target, lower) : target;
    }
  }

  // 2. critic step: L_Q = sum_k mean_b (Q_k(s, a) - y)^2 (SAC Eq. 5, every critic); dL/dQ = 2 (Q - y) / B.
  //    With CQL (COMBO Eq. 2) the critics also run on the K*C sampled rows, state-major (row
  //    B + c*K + j: push-down state c, its j-th action), and L_Q gains
  //    w sum_k [mean_c T lse_j((Q_kcj - log rho_jc) / T) - sum_b m_b Q_kb / sum m]:
  //    dL/dQ_kcj = w softmax_j(...) / C, dL/dQ_kb += -w m_b / sum m.
  const int64_t R = B + K * C;                                                                           // rows
  Tensor x = at::cat({obs, actions}, 1);                                                                 // [B, S+A]
  if (cql) {
    const Tensor x_cql = at::cat({cql_obs->unsqueeze(1).expand({C, K, S}), cql_actions->transpose(0, 1)}, 2)
                             .reshape({C * K, S + A});                                                  // [C*K, S+A]
    x = at::cat({x, x_cql}, 0);                                                                          // [R, S+A]
  }
  // Every row's loss gradient depends only on rows of the same unit (a batch row; a push-down
  // state's K actions), so the critics stream over chunks of whole units of at most kCriticChunk
  // rows: forward, loss gradient, backward, then the chunk's activations are released and the
  // next chunk reuses their memory (COMBO's R = B + K*C = 4 096-7 936 rows at Hopper sizes would
  // otherwise hold 4-8 MB of activations per 1 024 rows until the last backward). One chunk when
  // R <= kCriticChunk (SAC, MOPO, MOBILE). On the AMD EPYC Zen 5, 2 threads, 4 096 rows of a
  // 2 x (14-256-256-1) critic took 13.6 ms forward + backward in one pass, 10.0 ms in 1 024-row
  // chunks with every forward before every backward (512: 10.0, 256: 10.6).
  constexpr int64_t kCriticChunk = 1024;
  const auto chunk_end = [&](int64_t r0) {
    int64_t r1 = std::min(r0 + kCriticChunk, R);
    if (K > 0 && r1 > B) r1 = B + (r1 - B) / K * K;                  // whole push-down states only
    if (r1 <= r0) r1 = std::max(r0, B) + K;                           // one state of more than kCriticChunk rows
    return r1;
  };
  const Tensor y_c = y.contiguous();
  const float* y_p = y_c.data_ptr<float>();
  Tensor m_c, logd_c;   // CQL push-up mask [B], log densities [K, C]
  const float *m_p = nullptr, *logd_p = nullptr;
  double m_sum = 0.0;
  if (cql) {
    m_c = cql_push_up->contiguous();
    logd_c = cql_log_density->contiguous();
    m_p = m_c.data_ptr<float>();
    logd_p = logd_c.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) m_sum += m_p[b];
    TORCH_CHECK(m_sum > 0.0, "pyscorepen.sac_update: cql_push_up selects no row");
  }
  const float cql_t = static_cast<float>(cql_temperature);
  const float up_grad = cql ? static_cast<float>(-cql_weight / m_sum) : 0.0f;
  const float down_grad = cql ? static_cast<float>(cql_weight / static_cast<double>(C)) : 0.0f;
  std::vector<double> sq(N, 0.0), push_up(N, 0.0), push_down(N, 0.0);   // per critic, summed over the chunks
  double q_sum = 0.0;
  std::vector<float> v(K);
  std::vector<Tensor> grad_cw, grad_cb;                                   // summed over the chunks
  for (int64_t r0 = 0; r0 < R;) {
    const int64_t r1 = chunk_end(r0), n = r1 - r0;
    const Tensor x_chunk = x.narrow(0, r0, n);
    auto [q_chunk, saved_chunk] = call_forward(x_chunk, critic_weights, critic_biases, "relu");                  // [N, n, 1]
    const Tensor qc = q_chunk.contiguous();
    const Tensor grad_q = at::empty({N, n, 1}, f32);                                                     // [N, n, 1]
    const float* q_p = qc.data_ptr<float>();
    float* g_p = grad_q.data_ptr<float>();
    for (int64_t k = 0; k < N; ++k) {
      const float* qk = q_p + k * n;
      float* gk = g_p + k * n;
      for (int64_t b = r0; b < std::min(r1, B); ++b) {   // batch rows: TD error (and CQL's push-up)
        const float diff = qk[b - r0] - y_p[b];
        sq[k] += static_cast<double>(diff) * diff;
        q_sum += qk[b - r0];
        gk[b - r0] = 2.0f * diff * inv_b;
        if (cql) {
          push_up[k] += static_cast<double>(m_p[b]) * qk[b - r0];
          gk[b - r0] += up_grad * m_p[b];
        }
      }
      for (int64_t s0 = std::max(r0, B); s0 < r1; s0 += K) {   // push-down state c: lse over its K actions
        const int64_t c = (s0 - B) / K;
        float top = -INFINITY;
        for (int64_t j = 0; j < K; ++j) {
          v[j] = (qk[s0 - r0 + j] - logd_p[j * C + c]) / cql_t;
          top = std::max(top, v[j]);
        }
        float total = 0.0f;
        for (int64_t j = 0; j < K; ++j) {
          v[j] = std::exp(v[j] - top);
          total += v[j];
        }
        push_down[k] += cql_t * (top + std::log(total));
        for (int64_t j = 0; j < K; ++j) gk[s0 - r0 + j] = down_grad * v[j] / total;
      }
    }
    auto [unused_gx, gw, gb] = call_backward(grad_q, x_chunk, critic_weights, saved_chunk, "relu", {false, true, true});
    if (r0 == 0) {
      grad_cw = std::move(gw);
      grad_cb = std::move(gb);
    } else {
      at::_foreach_add_(grad_cw, gw);
      at::_foreach_add_(grad_cb, gb);
    }
    r0 = r1;
  }
  double critic_loss = 0.0, cql_gap = 0.0;
  for (int64_t k = 0; k < N; ++k) {
    critic_loss += sq[k] / static_cast<double>(B);
    if (cql) cql_gap += push_down[k] / static_cast<double>(C) - push_up[k] / m_sum;
  }
  if (cql) cql_gap /= static_cast<double>(N);
  std::vector<Tensor> critic_params, critic_grads;
  for (size_t l = 0; l < Lc; ++l) {
    critic_params.insert(critic_params.end(), {critic_weights[l], critic_biases[l]});
    critic_grads.insert(critic_grads.end(), {grad_cw[l], grad_cb[l]});
  }
  adam_step(critic_params, critic_grads, exp_avgs, exp_avg_sqs, steps, 2 * La, critic_lr, beta1, beta2, adam_eps,
            weight_decay);

  // 3. actor step through the updated critics: L_pi = mean_b [alpha log pi(a|s) - min_k Q_k(s, a)]
  //    (SAC Eq. 7), a = scale tanh(u) + offset, u = mu + exp(log_std) eps (reparameterized)
  auto [head, saved_pi] = call_forward(obs, actor_w_1, actor_b_1, "relu");                                       // [1, B, 2A]
  const Tensor head_c = head.contiguous(), obs_c = obs.contiguous(), eps_c = actor_noise.contiguous();
  const float *head_p = head_c.data_ptr<float>(), *obs_p = obs_c.data_ptr<float>(), *eps_p = eps_c.data_ptr<float>();
  const Tensor x_pi = at::empty({B, S + A}, f32);                                                        // [B, S+A]
  const Tensor log_prob = at::empty({B}, f32);                                                           // [B]
  const Tensor std_dev = at::empty({B, A}, f32), tanh_u = at::empty({B, A}, f32);   // [B, A] for the backward
  {
    // as TanhGaussianActor: log N(u; mu, std) - sum log(1 - tanh(u)^2), density on [-1, 1]^A
    const float half_log_2pi = static_cast<float>(0.5 * std::log(2.0 * M_PI));
    const float log_2 = static_cast<float>(std::log(2.0));
    const float lo = static_cast<float>(log_std_min), hi = static_cast<float>(log_std_max);
    float *x_p = x_pi.data_ptr<float>(), *lp_p = log_prob.data_ptr<float>(), *sd_p = std_dev.data_ptr<float>(),
          *t_p = tanh_u.data_ptr<float>();
    // rows in parallel (scalar libm, as torch's ops compute them: ~2 % of a 2-thread SAC update's
    // wall time with the other thread idle when this ran on one thread; perf, AMD EPYC Zen 3)
    at::parallel_for(0, B, 64, [&](int64_t row_begin, int64_t row_end) {
      for (int64_t b = row_begin; b < row_end; ++b) {
        std::copy(obs_p + b * S, obs_p + (b + 1) * S, x_p + b * (S + A));
        float gauss = 0.0f, squash = 0.0f;
        for (int64_t j = 0; j < A; ++j) {
          const float mu = head_p[b * 2 * A + j];
          const float log_std = std::min(std::max(head_p[b * 2 * A + A + j], lo), hi);
          const float sd = std::exp(log_std);
          const float u = mu + sd * eps_p[b * A + j];
          const float t = std::tanh(u);
          const float z = (u - mu) / sd;
          const float m2u = -2.0f * u;
          const float softplus = m2u > 20.0f ? m2u : std::log1p(std::exp(m2u));   // torch's threshold
          gauss += -0.5f * z * z - log_std - half_log_2pi;
          squash += 2.0f * (log_2 - u - softplus);
          x_p[b * (S + A) + S + j] = t * scale_p[j] + offset_p[j];
          sd_p[b * A + j] = sd;
          t_p[b * A + j] = t;
        }
        lp_p[b] = gauss - squash;
      }
    });
  }
  auto [q_pi, saved_q_pi] = call_forward(x_pi, critic_weights, critic_biases, "relu");                           // [N, B, 1]
  // min over critics; dL/dQ = -1/B on the critic that attained the min (torch's min backward), 0 on the others
  std::vector<std::vector<int64_t>> rows_of(N);   // the rows whose min critic is k
  double actor_loss = 0.0, log_prob_sum = 0.0;
  {
    const Tensor qc = q_pi.contiguous();
    const float *q_p = qc.data_ptr<float>(), *lp_p = log_prob.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      int64_t best = 0;
      for (int64_t k = 1; k < N; ++k)
        if (q_p[k * B + b] < q_p[best * B + b]) best = k;
      rows_of[best].push_back(b);
      actor_loss += alpha_value * lp_p[b] - q_p[best * B + b];
      log_prob_sum += lp_p[b];
    }
    actor_loss /= static_cast<double>(B);
  }
  // dL/da: each critic's input-gradient chain runs on its own rows only (1/N of the dense work; the
  // other rows would add exact zeros), on row-gathered copies of its saved activations
  const Tensor grad_x_pi = at::empty({B, S + A}, f32);                                                   // [B, S+A]
  for (int64_t k = 0; k < N; ++k) {
    const int64_t n = static_cast<int64_t>(rows_of[k].size());
    if (n == 0) continue;
    const Tensor index = at::from_blob(rows_of[k].data(), {n}, at::kLong);
    const int64_t n_pad = (n + cpu::kRowPad - 1) / cpu::kRowPad * cpu::kRowPad;   // the saved buffers' row padding
    std::vector<Tensor> weights_k, saved_k;
    for (size_t l = 0; l < Lc; ++l) weights_k.push_back(critic_weights[l].narrow(0, k, 1));             // [1, in, out]
    for (const Tensor& saved : saved_q_pi) {                                                   // [N, B_pad, ld]
      Tensor gathered = at::empty({1, n_pad, saved.size(2)}, f32);
      Tensor rows = gathered[0].narrow(0, 0, n);
      at::index_select_out(rows, saved[k], 0, index);
      gathered[0].narrow(0, n, n_pad - n).zero_();   // pad rows as the forward leaves them
      saved_k.push_back(gathered);
    }
    auto [grad_x_k, unused_w, unused_b] = call_backward(at::full({1, n, 1}, -inv_b, f32), x_pi.index_select(0, index),
                                                        weights_k, saved_k, "relu", {true, false, false});     // [n, S+A]
    grad_x_pi.index_copy_(0, index, grad_x_k);
  }
  // dlog pi/du = 2 tanh(u); dlog pi/dlog_std = -1 + 2 tanh(u) std eps (the Gaussian term's mu and std
  // dependence cancels through u); da/du = scale (1 - tanh(u)^2); clamp passes the gradient inside [lo, hi]
  const Tensor grad_head = at::empty({1, B, 2 * A}, f32);                                                // [1, B, 2A]
  {
    const Tensor gx = grad_x_pi.contiguous();
    const float *gx_p = gx.data_ptr<float>(), *sd_p = std_dev.data_ptr<float>(), *t_p = tanh_u.data_ptr<float>();
    float* gh_p = grad_head.data_ptr<float>();
    const float alpha_over_b = alpha_value * inv_b;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < A; ++j) {
        const float t = t_p[b * A + j];
        const float grad_u = 2.0f * alpha_over_b * t + gx_p[b * (S + A) + S + j] * scale_p[j] * (1.0f - t * t);
        const float raw = head_p[b * 2 * A + A + j];
        const bool inside = raw >= log_std_min && raw <= log_std_max;
        gh_p[b * 2 * A + j] = grad_u;
        gh_p[b * 2 * A + A + j] = inside ? grad_u * sd_p[b * A + j] * eps_p[b * A + j] - alpha_over_b : 0.0f;
      }
    }
  }
  auto [unused_gobs, grad_aw, grad_ab] = call_backward(grad_head, obs, actor_w_1, saved_pi, "relu", {false, true, true});
  std::vector<Tensor> actor_params, actor_grads;
  std::vector<TransposeJob> to_oi;
  std::vector<Tensor> grad_io(La);
  for (size_t l = 0; l < La; ++l) {
    grad_io[l] = grad_aw[l][0].contiguous();                                        // [in, out]
    const int64_t in = grad_io[l].size(0), out = grad_io[l].size(1);
    const Tensor g_oi = at::empty({out, in}, grad_io[l].options());                 // back to [out, in]
    to_oi.push_back({grad_io[l].data_ptr<float>(), in, out, g_oi.data_ptr<float>(), in});
    actor_params.insert(actor_params.end(), {actor_weights[l], actor_biases[l]});
    actor_grads.insert(actor_grads.end(), {g_oi, grad_ab[l][0]});
  }
  transpose_jobs(to_oi);
  adam_step(actor_params, actor_grads, exp_avgs, exp_avg_sqs, steps, 0, actor_lr, beta1, beta2, adam_eps,
            weight_decay);

  // 4. temperature (Haarnoja et al. 2018b, Eq. 18): L_alpha = -mean_b log_alpha (log pi + H_target)
  if (auto_alpha) {
    const Tensor grad_log_alpha =
        at::full({}, static_cast<float>(-(log_prob_sum / static_cast<double>(B) + target_entropy)), f32);
    adam_step({log_alpha}, {grad_log_alpha}, exp_avgs, exp_avg_sqs, steps, 2 * La + 2 * Lc, alpha_lr, beta1, beta2,
              adam_eps, weight_decay);
  }

  // 5. Polyak average of the target critics: theta' <- theta' + tau (theta - theta')
  std::vector<Tensor> target_params;
  for (size_t l = 0; l < Lc; ++l) target_params.insert(target_params.end(), {target_weights[l], target_biases[l]});
  at::_foreach_lerp_(target_params, critic_params, tau);

  const Tensor stats = at::empty({4}, f32);
  stats[0].fill_(critic_loss);
  stats[1].fill_(actor_loss);
  stats[2].fill_(q_sum / static_cast<double>(N * B));
  stats[3].fill_(cql_gap);
  return stats;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyscorepen, CPU, m) { m.impl("sac_update", &sac_update_cpu); }

}  // namespace pyscorepen
