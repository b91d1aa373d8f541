// Custom ops of the `pyscorepen` namespace: schemas and the CPU kernels.
//
//   rollout_step  one fused model-rollout step (MOPO Algorithm 2 penalty,
//                 ScorePen-MORL Eq. 20 penalty), see pyscorepen/ops/rollout_step.py
//   score_penalty ||h(x)||^2 of a plain SiLU MLP,  see pyscorepen/ops/score_penalty.py
//
// Both ops are inference-only (frozen nets under no_grad): no autograd kernel
// is registered. Fake (meta) kernels are registered from Python.
//
// CPU strategy: the batch is cut into chunks of a few hundred rows that are
// processed independently (OpenMP threads via at::parallel_for over chunks);
// inside a chunk every layer of every member runs on L2-resident activations
// with the AVX-512 micro-kernels of csrc/cpu/fused_mlp_avx512.cpp. On CPUs
// without AVX-512 (or with PYSCOREPEN_CPU_ISA=generic) a chunked ATen path
// (MKL GEMMs) with the same math is used instead.
//
// Environment: PYSCOREPEN_CPU_ISA = auto | avx512 | generic (read per call),
//              PYSCOREPEN_CHUNK_ROWS = rows per chunk (read once, default 960).
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/fused_mlp.h"

// `import pyscorepen._C` loads this library, which runs the static
// TORCH_LIBRARY initialisers below; the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace pyscorepen {
namespace {

using at::Tensor;

// Target rows per chunk. Measured on 2 Zen 4 cores (1 MiB L2 each), 4x200 ensemble + 3x256
// score net, single-thread CPU time: 96 rows 80 GFLOP/s, 256 rows 85, 480 rows 90, 960 rows 91,
// 2048 rows 88.5 (the [rows, 256] ping-pong activations then spill out of L2).
// PYSCOREPEN_CHUNK_ROWS overrides.
int64_t chunk_rows() {
  static const int64_t rows = [] {
    const char* env = std::getenv("PYSCOREPEN_CHUNK_ROWS");
    int64_t value = env ? std::atoll(env) : 0;
    return value > 0 ? value : int64_t{960};
  }();
  return rows;
}

enum class Isa { kAvx512, kGeneric };

// PYSCOREPEN_CPU_ISA = auto (default) | avx512 | generic; read on every call so tests can switch it.
Isa cpu_isa() {
  static const bool has_avx512 = cpu::cpu_has_avx512();
  const char* env = std::getenv("PYSCOREPEN_CPU_ISA");
  std::string want = env ? env : "auto";
  if (want == "generic") return Isa::kGeneric;
  if (want == "avx512") {
    TORCH_CHECK(has_avx512, "PYSCOREPEN_CPU_ISA=avx512 but this CPU has no AVX-512F");
    return Isa::kAvx512;
  }
  TORCH_CHECK(want == "auto" || want.empty(), "PYSCOREPEN_CPU_ISA must be auto, avx512 or generic, got ", want);
  return has_avx512 ? Isa::kAvx512 : Isa::kGeneric;
}

void check_cpu_f32(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "pyscorepen: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "pyscorepen: ", name, " must be float32, got ", t.scalar_type());
}

// Fills `desc` from weights[l] ([E, in, out] when `members` > 0, else [in, out]) and biases[l].
// The contiguous copies are kept alive in `keep`.
void describe_mlp(at::TensorList weights, at::TensorList biases, int64_t members, int64_t in_dim,
                  cpu::MlpDesc& desc, std::vector<Tensor>& keep) {
  TORCH_CHECK(weights.size() == biases.size(), "pyscorepen: got ", weights.size(), " weights but ",
              biases.size(), " biases");
  TORCH_CHECK(static_cast<int>(weights.size()) <= cpu::kMaxLayers, "pyscorepen: at most ", cpu::kMaxLayers,
              " layers are supported");
  desc.n_layers = static_cast<int>(weights.size());
  desc.dims[0] = in_dim;
  for (size_t l = 0; l < weights.size(); ++l) {
    const Tensor& w = weights[l];
    const Tensor& b = biases[l];
    check_cpu_f32(w, "weight");
    check_cpu_f32(b, "bias");
    const int64_t in_l = desc.dims[l];
    if (members > 0) {
      TORCH_CHECK(w.dim() == 3 && w.size(0) == members && w.size(1) == in_l,
                  "pyscorepen: ensemble weight ", l, " must be [E=", members, ", ", in_l, ", out], got ", w.sizes());
      TORCH_CHECK(b.dim() == 2 && b.size(0) == members && b.size(1) == w.size(2),
                  "pyscorepen: ensemble bias ", l, " must be [E, out], got ", b.sizes());
    } else {
      TORCH_CHECK(w.dim() == 2 && w.size(0) == in_l, "pyscorepen: weight ", l, " must be [", in_l, ", out], got ",
                  w.sizes());
      TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(1), "pyscorepen: bias ", l, " must be [out], got ", b.sizes());
    }
    keep.push_back(w.contiguous());
    keep.push_back(b.contiguous());
    desc.w[l] = keep[keep.size() - 2].data_ptr<float>();
    desc.b[l] = keep.back().data_ptr<float>();
    desc.dims[l + 1] = w.size(-1);
  }
}

// Splits `batch` rows into chunks and runs body(row_begin, row_end, scratch) on each. One
// worker per thread pulls chunks from a shared counter (dynamic schedule: the machine may be
// shared, and a static split waits for the slowest, possibly descheduled, thread). Chunks
// hold ~chunk_rows() rows, but with several threads there are >= 4 per thread when the batch
// allows (>= 48 rows each), so a stalled thread costs at most one small chunk. Chunk rows
// are a multiple of kRowPad (no padding waste except in the last chunk).
template <class LayoutFn, class Body>
void for_each_chunk(int64_t batch, LayoutFn layout_of, Body body) {
  if (batch == 0) return;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t desired_chunks = std::max((batch + chunk_rows() - 1) / chunk_rows(), threads > 1 ? 4 * threads : 1);
  int64_t rows_per_chunk = (batch + desired_chunks - 1) / desired_chunks;
  rows_per_chunk = std::max<int64_t>(2 * cpu::kRowPad, (rows_per_chunk + cpu::kRowPad - 1) / cpu::kRowPad * cpu::kRowPad);
  rows_per_chunk = std::min(rows_per_chunk, batch);
  const int64_t n_chunks = (batch + rows_per_chunk - 1) / rows_per_chunk;
  const int64_t workers = std::min(threads, n_chunks);
  const int64_t scratch_floats = layout_of(rows_per_chunk).total;
  std::atomic<int64_t> next_chunk{0};
  at::parallel_for(0, workers, 1, [&](int64_t worker_begin, int64_t worker_end) {
    for (int64_t worker = worker_begin; worker < worker_end; ++worker) {
      Tensor scratch = at::empty({scratch_floats}, at::TensorOptions().dtype(at::kFloat));
      float* scratch_ptr = scratch.data_ptr<float>();
      for (int64_t chunk = next_chunk++; chunk < n_chunks; chunk = next_chunk++) {
        const int64_t row_begin = chunk * rows_per_chunk;
        body(row_begin, std::min(batch, row_begin + rows_per_chunk), scratch_ptr);
      }
    }
  });
}

// ---------------------------------------------------------------- generic path
Tensor mlp_generic(const Tensor& x, at::TensorList weights, at::TensorList biases) {
  Tensor h = x;  // [B, in] or [E, B, in]
  for (size_t l = 0; l < weights.size(); ++l) {
    h = h.dim() == 3 ? at::baddbmm(biases[l].unsqueeze(1), h, weights[l]) : at::addmm(biases[l], h, weights[l]);
    if (l + 1 != weights.size()) h = at::silu(h);
  }
  return h;
}

Tensor soft_plus(const Tensor& x) { return at::softplus(x, 1, 20); }

void rollout_chunk_generic(const Tensor& x, const Tensor& obs, at::TensorList weights, at::TensorList biases,
                           const Tensor& max_logvar, const Tensor& min_logvar, const Tensor& member_index,
                           const Tensor& noise, at::TensorList score_weights, at::TensorList score_biases,
                           Tensor next_obs, Tensor rewards, Tensor mopo, Tensor score) {
  const int64_t S = obs.size(1), E = weights[0].size(0);
  Tensor out = mlp_generic(x.unsqueeze(0).expand({E, x.size(0), x.size(1)}), weights, biases);  // [E, b, 2(S+1)]
  Tensor mean = out.narrow(2, 0, S + 1);
  Tensor logvar = out.narrow(2, S + 1, S + 1);
  logvar = max_logvar - soft_plus(max_logvar - logvar);
  logvar = min_logvar + soft_plus(logvar - min_logvar);
  Tensor std = at::exp(0.5 * logvar);                                  // [E, b, S+1]
  mopo.copy_(std::get<0>(at::linalg_vector_norm(std, 2, {-1}).max(0)));
  Tensor rows = at::arange(obs.size(0), member_index.options());
  Tensor sample = mean.index({member_index, rows}) + std.index({member_index, rows}) * noise;  // [b, S+1]
  next_obs.copy_(obs + sample.narrow(1, 0, S));
  rewards.copy_(sample.select(1, S));
  if (score_weights.empty())
    score.zero_();
  else
    score.copy_(mlp_generic(x, score_weights, score_biases).square().sum(-1));
}

// ------------------------------------------------------------------- ops
std::tuple<Tensor, Tensor, Tensor, Tensor> rollout_step_cpu(
    const Tensor& obs, const Tensor& actions, const Tensor& input_mean, const Tensor& input_std,
    at::TensorList weights, at::TensorList biases, const Tensor& max_logvar, const Tensor& min_logvar,
    const Tensor& member_index, const Tensor& noise, at::TensorList score_weights, at::TensorList score_biases) {
  for (auto [t, name] : {std::pair{&obs, "obs"}, {&actions, "actions"}, {&input_mean, "input_mean"},
                         {&input_std, "input_std"}, {&max_logvar, "max_logvar"}, {&min_logvar, "min_logvar"},
                         {&noise, "noise"}})
    check_cpu_f32(*t, name);
  TORCH_CHECK(obs.dim() == 2 && actions.dim() == 2 && obs.size(0) == actions.size(0),
              "pyscorepen.rollout_step: obs [B, S] and actions [B, A] expected, got ", obs.sizes(), " and ",
              actions.sizes());
  const int64_t B = obs.size(0), S = obs.size(1), A = actions.size(1), D = S + A;
  TORCH_CHECK(input_mean.numel() == D && input_std.numel() == D, "pyscorepen.rollout_step: input_mean/std must have ",
              D, " entries");
  TORCH_CHECK(max_logvar.numel() == S + 1 && min_logvar.numel() == S + 1,
              "pyscorepen.rollout_step: max/min_logvar must have S + 1 = ", S + 1, " entries");
  TORCH_CHECK(noise.dim() == 2 && noise.size(0) == B && noise.size(1) == S + 1,
              "pyscorepen.rollout_step: noise must be [B, S + 1], got ", noise.sizes());
  TORCH_CHECK(member_index.device().is_cpu() && member_index.scalar_type() == at::kLong && member_index.dim() == 1 &&
                  member_index.size(0) == B,
              "pyscorepen.rollout_step: member_index must be an int64 [B] CPU tensor");
  TORCH_CHECK(!weights.empty() && weights[0].dim() == 3, "pyscorepen.rollout_step: weights must be a non-empty list "
              "of [E, in, out] tensors");
  const int64_t E = weights[0].size(0);
  TORCH_CHECK(weights.back().size(-1) == 2 * (S + 1), "pyscorepen.rollout_step: last layer must output 2(S+1) = ",
              2 * (S + 1), ", got ", weights.back().size(-1));
  if (B > 0) {
    Tensor index_min = member_index.min(), index_max = member_index.max();
    TORCH_CHECK(index_min.item<int64_t>() >= 0 && index_max.item<int64_t>() < E,
                "pyscorepen.rollout_step: member_index out of range [0, ", E, ")");
  }

  Tensor next_obs = at::empty({B, S}, obs.options());
  Tensor rewards = at::empty({B}, obs.options());
  Tensor mopo = at::empty({B}, obs.options());
  Tensor score = at::empty({B}, obs.options());

  std::vector<Tensor> keep;
  cpu::RolloutArgs args;
  describe_mlp(weights, biases, E, D, args.ensemble, keep);
  describe_mlp(score_weights, score_biases, 0, D, args.score, keep);
  TORCH_CHECK(score_weights.empty() || args.score.dims[args.score.n_layers] > 0,
              "pyscorepen.rollout_step: empty score output");

  if (cpu_isa() == Isa::kGeneric) {
    Tensor x = (at::cat({obs, actions}, -1) - input_mean) / input_std;  // [B, D]
    const int64_t rows = 1024;
    for (int64_t r0 = 0; r0 < B; r0 += rows) {
      const int64_t n = std::min(rows, B - r0);
      rollout_chunk_generic(x.narrow(0, r0, n), obs.narrow(0, r0, n), weights, biases, max_logvar, min_logvar,
                            member_index.narrow(0, r0, n), noise.narrow(0, r0, n), score_weights, score_biases,
                            next_obs.narrow(0, r0, n), rewards.narrow(0, r0, n), mopo.narrow(0, r0, n),
                            score.narrow(0, r0, n));
    }
    return {next_obs, rewards, mopo, score};
  }

  Tensor obs_c = obs.contiguous(), actions_c = actions.contiguous(), mean_c = input_mean.contiguous(),
         std_c = input_std.contiguous(), max_c = max_logvar.contiguous(), min_c = min_logvar.contiguous(),
         index_c = member_index.contiguous(), noise_c = noise.contiguous();
  args.batch = B;
  args.obs_dim = S;
  args.act_dim = A;
  args.members = E;
  args.obs = obs_c.data_ptr<float>();
  args.actions = actions_c.data_ptr<float>();
  args.input_mean = mean_c.data_ptr<float>();
  args.input_std = std_c.data_ptr<float>();
  args.max_logvar = max_c.data_ptr<float>();
  args.min_logvar = min_c.data_ptr<float>();
  args.member_index = index_c.data_ptr<int64_t>();
  args.noise = noise_c.data_ptr<float>();
  args.next_obs = next_obs.data_ptr<float>();
  args.rewards = rewards.data_ptr<float>();
  args.mopo_penalty = mopo.data_ptr<float>();
  args.score_penalty = score.data_ptr<float>();
  for_each_chunk(
      B, [&](int64_t rows) { return cpu::rollout_layout(args, rows); },
      [&](int64_t r0, int64_t r1, float* scratch) {
#if defined(__x86_64__)
        cpu::rollout_rows_avx512(args, r0, r1, scratch);
#endif
      });
  return {next_obs, rewards, mopo, score};
}

Tensor score_penalty_cpu(const Tensor& x, at::TensorList weights, at::TensorList biases) {
  check_cpu_f32(x, "x");
  TORCH_CHECK(x.dim() == 2, "pyscorepen.score_penalty: x must be [B, D], got ", x.sizes());
  const int64_t B = x.size(0);
  Tensor out = at::empty({B}, x.options());
  std::vector<Tensor> keep;
  cpu::ScoreArgs args;
  describe_mlp(weights, biases, 0, x.size(1), args.mlp, keep);
  if (cpu_isa() == Isa::kGeneric || args.mlp.dims[args.mlp.n_layers] == 0) {
    const int64_t rows = 1024;
    for (int64_t r0 = 0; r0 < B; r0 += rows) {
      const int64_t n = std::min(rows, B - r0);
      out.narrow(0, r0, n).copy_(mlp_generic(x.narrow(0, r0, n), weights, biases).square().sum(-1));
    }
    return out;
  }
  Tensor x_c = x.contiguous();
  args.batch = B;
  args.x = x_c.data_ptr<float>();
  args.out = out.data_ptr<float>();
  for_each_chunk(
      B, [&](int64_t rows) { return cpu::score_layout(args, rows); },
      [&](int64_t r0, int64_t r1, float* scratch) {
#if defined(__x86_64__)
        cpu::score_rows_avx512(args, r0, r1, scratch);
#endif
      });
  return out;
}

}  // namespace

TORCH_LIBRARY(pyscorepen, m) {
  m.def(
      "rollout_step(Tensor obs, Tensor actions, Tensor input_mean, Tensor input_std, Tensor[] weights, "
      "Tensor[] biases, Tensor max_logvar, Tensor min_logvar, Tensor member_index, Tensor noise, "
      "Tensor[] score_weights, Tensor[] score_biases) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("score_penalty(Tensor x, Tensor[] weights, Tensor[] biases) -> Tensor");
}

TORCH_LIBRARY_IMPL(pyscorepen, CPU, m) {
  m.impl("rollout_step", &rollout_step_cpu);
  m.impl("score_penalty", &score_penalty_cpu);
}

}  // namespace pyscorepen
