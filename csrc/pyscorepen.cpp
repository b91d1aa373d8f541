// Custom ops of the `pyscorepen` namespace: schemas and the CPU kernels.
//
//   rollout_step  one fused model-rollout step (MOPO Algorithm 2 penalty,
//                 ScorePen-MORL Eq. 20 penalty), see pyscorepen/ops/rollout_step.py
//   score_penalty ||h(x)||^2 of a plain SiLU MLP,  see pyscorepen/ops/score_penalty.py
//   soft_value    min_k Q_k(s, a) - alpha log pi(a|s), a ~ tanh-Gaussian actor (SAC Eq. 3,
//                 MOBILE Eq. 7-8 target), see pyscorepen/ops/soft_value.py
//   ensemble_mlp_forward / ensemble_mlp_backward / ensemble_mlp (composite)
//                 E ReLU/SiLU MLPs for training (SAC critics, dynamics ensemble), see
//                 pyscorepen/ops/ensemble_mlp.py
//   sac_update    one whole SAC step (critic, actor, alpha, Adam, Polyak) in place; kernel in
//                 csrc/sac_update.cpp, see pyscorepen/ops/sac_update.py
//
// rollout_step / score_penalty / soft_value are inference-only (frozen nets under no_grad).
// Fake (meta) kernels and the autograd of ensemble_mlp_forward are registered from Python.
//
// CPU strategy: the batch is cut into chunks of a few hundred rows that are
// processed independently (OpenMP threads via at::parallel_for over chunks);
// inside a chunk every layer of every member runs on L2-resident activations
// with the register-blocked micro-kernels of csrc/cpu/fused_mlp_impl.h, compiled
// for AVX-512 (fused_mlp_avx512.cpp) and for AVX2 + FMA (fused_mlp_avx2.cpp) and
// chosen at run time. On other CPUs (or with PYSCOREPEN_CPU_ISA=generic) a chunked
// ATen path (MKL / oneDNN GEMMs) with the same math is used instead.
//
// Environment: PYSCOREPEN_CPU_ISA = auto | avx512 | avx2 | generic (read once, at the first
//              op call; pyscorepen._C.set_cpu_isa switches it at run time, for tests/benches),
//              PYSCOREPEN_CHUNK_ROWS = rows per chunk (read once, default 960).
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/fused_mlp.h"
#include "run_tasks.h"
#include "transpose.h"

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

// ------------------------------------------------------------------ ISA choice
// The kernels the CPU ops run: AVX-512, AVX2 + FMA, or none (the generic ATen path).
// Chosen once: PYSCOREPEN_CPU_ISA = auto (default: the best this CPU supports) | avx512 |
// avx2 | generic, read at the first op call; set_isa (pyscorepen._C.set_cpu_isa) switches.
// Asking for an ISA this CPU (or build) lacks is an error, never a silent fallback.
enum class Isa : int { kAvx512 = 0, kAvx2 = 1, kGeneric = 2 };
constexpr const char* kIsaNames[] = {"avx512", "avx2", "generic"};

// A build with PYSCOREPEN_AVX512_EMULATED (a test build, csrc/cpu/avx512_emulation.h) runs its
// "avx512" kernels on emulated intrinsics on any AVX2 CPU: there "avx512" is supported when asked
// for by name, and auto never picks it.
bool isa_supported(Isa isa) {
  static const bool avx512 = (PYSCOREPEN_AVX512_EMULATED ? cpu::cpu_has_avx2() : cpu::cpu_has_avx512()) &&
                             cpu::avx512_kernels() != nullptr;
  static const bool avx2 = cpu::cpu_has_avx2() && cpu::avx2_kernels() != nullptr;
  return isa == Isa::kGeneric || (isa == Isa::kAvx512 && avx512) || (isa == Isa::kAvx2 && avx2);
}

Isa parse_isa(const std::string& want, const char* source) {
  if (want.empty() || want == "auto")
    return isa_supported(Isa::kAvx512) && !PYSCOREPEN_AVX512_EMULATED ? Isa::kAvx512
           : isa_supported(Isa::kAvx2)                                ? Isa::kAvx2
                                                                      : Isa::kGeneric;
  for (int i = 0; i < 3; ++i) {
    if (want != kIsaNames[i]) continue;
    TORCH_CHECK(isa_supported(static_cast<Isa>(i)), source, want, " but this ",
                cpu::avx512_kernels() ? "CPU lacks it" : "build has no x86-64 kernels",
                " (supported here: ", isa_supported(Isa::kAvx512) ? "avx512, " : "",
                isa_supported(Isa::kAvx2) ? "avx2, " : "", "generic)");
    return static_cast<Isa>(i);
  }
  TORCH_CHECK(false, source, want, " is not one of auto, avx512, avx2, generic");
  return Isa::kGeneric;  // unreachable
}

std::atomic<int> g_isa{-1};  // -1: not chosen yet

Isa cpu_isa() {
  int isa = g_isa.load(std::memory_order_relaxed);
  if (isa < 0) {
    const char* env = std::getenv("PYSCOREPEN_CPU_ISA");
    isa = static_cast<int>(parse_isa(env ? env : "", "PYSCOREPEN_CPU_ISA="));
    g_isa.store(isa, std::memory_order_relaxed);
  }
  return static_cast<Isa>(isa);
}

// Kernel table of the chosen ISA; nullptr: the generic path.
const cpu::Kernels* simd_kernels() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return cpu::avx512_kernels();
    case Isa::kAvx2: return cpu::avx2_kernels();
    default: return nullptr;
  }
}

}  // namespace

const cpu::Kernels* active_kernels() { return simd_kernels(); }

namespace {

void check_cpu_f32(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "pyscorepen: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "pyscorepen: ", name, " must be float32, got ", t.scalar_type());
}

// Row skew of the kernels' operands. A tile walks its k loop down a column block of a
// row-major operand (W in the forward, W^T in the dz chain and grad_x, dz and h^T in the weight
// gradient; W in the inference ops' dense layers too). With rows 512 B or 1 KB apart (widths that
// are multiples of 128 floats: the critics', actor's and score net's 256) those lines fall into 8
// or 4 of the 64 L1 sets, so the block cannot stay in L1 and every row tile re-reads it from L2.
// 16 more floats per row spread it over all the sets.
// Measured on an AVX2-only AMD EPYC Zen 3 (session 12, critics E = 2, [23, 256, 256, 1], 1 thread,
// paired in one process, the layouts switched per round, medians of 30-60 rounds), time without /
// with the skew: backward 1.09x (B = 3 840) and 1.10x (B = 256); forward with the skewed copy of W
// 1.06x (3 840) and 1.03x (256, the copy included), 0.96-0.98x with the skewed buffers alone.
int64_t skewed_ld(int64_t n) { return n % 128 == 0 ? n + 16 : n; }

// The training forward reads a skewed copy of W_l [E, in, out] from this many rows per member on
// (below, the copy costs more than the skew saves: a [256, 256] copy is ~the work of ~10 rows).
constexpr int64_t kSkewedWeightMinRows = 256;

// The inference ops (rollout_step, score_penalty, soft_value) read skewed copies of their
// weights from this many rows per torch thread on: the copy is made once per call, before the
// rows are split among the threads. Measured on an AVX2-only AMD EPYC Zen 3 (session 13, paired in
// one process, medians of 8-10 rounds, time without / with the copies): soft_value 1 thread
// 0.91x (64 rows), ~1.0x (128), 1.05-1.08x (256), 1.05-1.08x (4 096), 1.12x (50k); 2 threads
// 0.93-0.94x (256), 0.98x (512), 1.03x (1 024), 1.09-1.10x (12 150, MOBILE's penalty);
// score_penalty alike (1.14-1.15x at 50k, 1 thread); rollout_step 1.01x (its 200-wide ensemble
// is not skewed, only the score net).
constexpr int64_t kSkewedInferenceRowsPerThread = 384;

bool skew_inference_weights(int64_t batch) {
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  return batch >= kSkewedInferenceRowsPerThread * threads;
}

// Fills `desc` from weights[l] ([E, in, out] when `members` > 0, else [in, out]) and biases[l];
// hidden layers apply `hidden`. The contiguous copies are kept alive in `keep`.
void describe_mlp(at::TensorList weights, at::TensorList biases, int64_t members, int64_t in_dim,
                  cpu::Activation hidden, cpu::MlpDesc& desc, std::vector<Tensor>& keep) {
  TORCH_CHECK(weights.size() == biases.size(), "pyscorepen: got ", weights.size(), " weights but ",
              biases.size(), " biases");
  TORCH_CHECK(static_cast<int>(weights.size()) <= cpu::kMaxLayers, "pyscorepen: at most ", cpu::kMaxLayers,
              " layers are supported");
  desc.n_layers = static_cast<int>(weights.size());
  desc.hidden = hidden;
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

// Points desc's layers whose width skewed_ld widens at skewed copies of their weights
// ([E, in, ld_w] or [in, ld_w], kept alive in `keep`). Call after
// describe_mlp; worth it only where enough rows pass through each weight (see the callers).
void skew_weights(at::TensorList weights, cpu::MlpDesc& desc, std::vector<Tensor>& keep) {
  for (int l = 0; l < desc.n_layers; ++l) {
    const int64_t n = desc.dims[l + 1], ld_w = skewed_ld(n);
    if (ld_w == n) continue;
    std::vector<int64_t> shape(weights[l].sizes().begin(), weights[l].sizes().end());
    shape.back() = ld_w;
    Tensor w = at::empty(shape, weights[l].options());
    w.narrow(-1, 0, n).copy_(weights[l]);   // the skew columns are never read (masked last vectors)
    keep.push_back(w);
    desc.w[l] = w.data_ptr<float>();
    desc.ld_w[l] = ld_w;
  }
}

// True when some layer of `desc` has no outputs (the micro-kernels need n >= 1).
bool has_empty_layer(const cpu::MlpDesc& desc) {
  for (int l = 1; l <= desc.n_layers; ++l)
    if (desc.dims[l] == 0) return true;
  return false;
}

// Splits `batch` rows into chunks and runs body(row_begin, row_end, scratch) on each. One
// worker per thread pulls chunks from a shared counter (dynamic schedule: the machine may be
// shared, and a static split waits for the slowest, possibly descheduled, thread). Chunks
// hold ~chunk_rows() rows, but with several threads there are >= 4 per thread when the batch
// allows (>= 48 rows each, the last one shorter), so a stalled thread costs at most one small
// chunk. When full-size chunks would leave the busiest thread more than 5 % above the mean
// (12 150 rows on 2 threads: 13 chunks, 7 on one thread and 6 on the other), the chunk count is
// rounded up to a multiple of the threads and the kRowPad-row tiles are shared out evenly: MOBILE's
// soft_value on those rows 1.06x (paired in one process, medians of 20 rounds; 1.15-1.23x in
// alternating processes), Zen 3. Elsewhere the even split measured 0.95-1.01x (50k and 20k rows,
// where full-size chunks are within 2-5 % of even), so it is not used there. Chunks start on a
// tile; only the last one has a row tail.
template <class LayoutFn, class Body>
void for_each_chunk(int64_t batch, LayoutFn layout_of, Body body) {
  if (batch == 0) return;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t tiles = (batch + cpu::kRowPad - 1) / cpu::kRowPad;
  const int64_t full_chunks = (batch + chunk_rows() - 1) / chunk_rows();
  int64_t n_chunks = 0, rows_per_chunk = 0, max_rows = 0;   // rows_per_chunk 0: the even split by tiles
  const int64_t busiest = (full_chunks + threads - 1) / threads;   // chunks of the busiest thread
  if (threads > 1 && full_chunks > 4 * threads && 20 * busiest * threads > 21 * full_chunks) {
    n_chunks = (full_chunks + threads - 1) / threads * threads;
    max_rows = (tiles + n_chunks - 1) / n_chunks * cpu::kRowPad;
  } else {
    const int64_t desired_chunks = std::max(full_chunks, threads > 1 ? 4 * threads : 1);
    rows_per_chunk = (batch + desired_chunks - 1) / desired_chunks;
    rows_per_chunk = (rows_per_chunk + cpu::kRowPad - 1) / cpu::kRowPad * cpu::kRowPad;
    rows_per_chunk = std::max<int64_t>(2 * cpu::kRowPad, rows_per_chunk);
    rows_per_chunk = std::min(rows_per_chunk, batch);
    n_chunks = (batch + rows_per_chunk - 1) / rows_per_chunk;
    max_rows = rows_per_chunk;
  }
  const auto chunk_begin = [&](int64_t chunk) {
    return std::min(batch, rows_per_chunk > 0 ? chunk * rows_per_chunk : chunk * tiles / n_chunks * cpu::kRowPad);
  };
  const int64_t workers = std::min(threads, n_chunks);
  const int64_t scratch_floats = layout_of(max_rows).total;
  std::atomic<int64_t> next_chunk{0};
  at::parallel_for(0, workers, 1, [&](int64_t worker_begin, int64_t worker_end) {
    for (int64_t worker = worker_begin; worker < worker_end; ++worker) {
      Tensor scratch = at::empty({scratch_floats}, at::TensorOptions().dtype(at::kFloat));
      float* scratch_ptr = scratch.data_ptr<float>();
      for (int64_t chunk = next_chunk++; chunk < n_chunks; chunk = next_chunk++)
        body(chunk_begin(chunk), chunk_begin(chunk + 1), scratch_ptr);
    }
  });
}

// x ([B, D] or [E, B, D]) with b_pad >= B rows, zeros below row B; x itself when it is
// already contiguous with b_pad rows (the training kernels read whole padded row tiles).
Tensor pad_rows(const Tensor& x, int64_t b_pad) {
  const int64_t rows = x.size(-2);
  if (x.is_contiguous() && rows == b_pad) return x;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape[shape.size() - 2] = b_pad;
  Tensor padded = at::zeros(shape, x.options());
  padded.narrow(-2, 0, rows).copy_(x);
  return padded;
}

// A float buffer of at least n floats owned by the calling thread and reused by its later calls
// (64-byte aligned, contents undefined): the backward's temporaries (W^T, the dz chain). Fresh
// allocations of these ~1 MB buffers on every call cost page faults (the kernel's first-touch
// zeroing), ~5 % of a dynamics-fit backward (perf, AMD EPYC Zen 5). Only one op body uses it at a
// time on a thread: the callers run it to completion before returning. It grows to the largest
// call and is kept for the thread's life: ~2 MB for the dynamics fit, ~16 MB for COMBO's critics
// on 3 x 2 560 rows.
float* thread_workspace(int64_t n) {
  thread_local std::vector<float> buffer;
  constexpr int64_t kAlign = 16;   // floats: 64 bytes
  if (static_cast<int64_t>(buffer.size()) < n + kAlign) buffer.resize(n + kAlign);
  const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
  return buffer.data() + (kAlign - static_cast<int64_t>((address / sizeof(float)) % kAlign)) % kAlign;
}

// ---------------------------------------------------------------- generic path
Tensor mlp_generic(const Tensor& x, at::TensorList weights, at::TensorList biases,
                   cpu::Activation hidden = cpu::Activation::kSilu) {
  Tensor h = x;  // [B, in] or [E, B, in]
  for (size_t l = 0; l < weights.size(); ++l) {
    h = h.dim() == 3 ? at::baddbmm(biases[l].unsqueeze(1), h, weights[l]) : at::addmm(biases[l], h, weights[l]);
    if (l + 1 == weights.size()) break;
    if (hidden == cpu::Activation::kSilu) h = at::silu_(h);
    if (hidden == cpu::Activation::kRelu) h = at::relu_(h);
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

// Same math as soft_value_ref (and the AVX-512 kernel) on rows obs [b, S], noise [b, A]; writes out [b].
void soft_value_chunk_generic(const Tensor& obs, const Tensor& noise, at::TensorList actor_weights,
                              at::TensorList actor_biases, at::TensorList critic_weights,
                              at::TensorList critic_biases, const Tensor& action_scale, const Tensor& action_offset,
                              double alpha, double log_std_min, double log_std_max, Tensor out) {
  constexpr double kLog2 = 0.69314718055994530942, kHalfLog2Pi = 0.91893853320467274178;
  const int64_t A = noise.size(1), N = critic_weights[0].size(0);
  Tensor head = mlp_generic(obs, actor_weights, actor_biases, cpu::Activation::kRelu);  // [b, 2A]
  Tensor mu = head.narrow(1, 0, A);
  Tensor log_std = head.narrow(1, A, A).clamp(log_std_min, log_std_max);
  Tensor u = mu + log_std.exp() * noise;                                               // [b, A]
  Tensor action = at::tanh(u) * action_scale + action_offset;                          // [b, A]
  Tensor log_pi = (-0.5 * noise.square() - log_std - kHalfLog2Pi).sum(-1) -
                  (2 * (kLog2 - u - soft_plus(-2 * u))).sum(-1);                       // [b]
  Tensor x = at::cat({obs, action}, -1);                                               // [b, S+A]
  Tensor q = mlp_generic(x.unsqueeze(0).expand({N, x.size(0), x.size(1)}), critic_weights, critic_biases,
                         cpu::Activation::kRelu);                                      // [N, b, 1]
  out.copy_(q.squeeze(-1).amin(0) - alpha * log_pi);
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
  describe_mlp(weights, biases, E, D, cpu::Activation::kSilu, args.ensemble, keep);
  describe_mlp(score_weights, score_biases, 0, D, cpu::Activation::kSilu, args.score, keep);
  TORCH_CHECK(score_weights.empty() || args.score.dims[args.score.n_layers] > 0,
              "pyscorepen.rollout_step: empty score output");

  const cpu::Kernels* kernels = simd_kernels();
  if (kernels == nullptr) {
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
  if (skew_inference_weights(B)) {
    skew_weights(weights, args.ensemble, keep);
    skew_weights(score_weights, args.score, keep);
  }
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
      [&](int64_t r0, int64_t r1, float* scratch) { kernels->rollout_rows(args, r0, r1, scratch); });
  return {next_obs, rewards, mopo, score};
}

Tensor score_penalty_cpu(const Tensor& x, at::TensorList weights, at::TensorList biases) {
  check_cpu_f32(x, "x");
  TORCH_CHECK(x.dim() == 2, "pyscorepen.score_penalty: x must be [B, D], got ", x.sizes());
  const int64_t B = x.size(0);
  Tensor out = at::empty({B}, x.options());
  std::vector<Tensor> keep;
  cpu::ScoreArgs args;
  describe_mlp(weights, biases, 0, x.size(1), cpu::Activation::kSilu, args.mlp, keep);
  const cpu::Kernels* kernels = simd_kernels();
  if (kernels == nullptr || args.mlp.dims[args.mlp.n_layers] == 0) {
    const int64_t rows = 1024;
    for (int64_t r0 = 0; r0 < B; r0 += rows) {
      const int64_t n = std::min(rows, B - r0);
      out.narrow(0, r0, n).copy_(mlp_generic(x.narrow(0, r0, n), weights, biases).square().sum(-1));
    }
    return out;
  }
  Tensor x_c = x.contiguous();
  if (skew_inference_weights(B)) skew_weights(weights, args.mlp, keep);
  args.batch = B;
  args.x = x_c.data_ptr<float>();
  args.out = out.data_ptr<float>();
  for_each_chunk(
      B, [&](int64_t rows) { return cpu::score_layout(args, rows); },
      [&](int64_t r0, int64_t r1, float* scratch) { kernels->score_rows(args, r0, r1, scratch); });
  return out;
}

Tensor soft_value_cpu(const Tensor& obs, const Tensor& noise, at::TensorList actor_weights,
                      at::TensorList actor_biases, at::TensorList critic_weights, at::TensorList critic_biases,
                      const Tensor& action_scale, const Tensor& action_offset, const Tensor& alpha,
                      double log_std_min, double log_std_max) {
  for (auto [t, name] : {std::pair{&obs, "obs"}, {&noise, "noise"}, {&action_scale, "action_scale"},
                         {&action_offset, "action_offset"}, {&alpha, "alpha"}})
    check_cpu_f32(*t, name);
  TORCH_CHECK(obs.dim() == 2 && noise.dim() == 2 && obs.size(0) == noise.size(0),
              "pyscorepen.soft_value: obs [B, S] and noise [B, A] expected, got ", obs.sizes(), " and ",
              noise.sizes());
  const int64_t B = obs.size(0), S = obs.size(1), A = noise.size(1);
  TORCH_CHECK(action_scale.numel() == A && action_offset.numel() == A,
              "pyscorepen.soft_value: action_scale/offset must have A = ", A, " entries");
  TORCH_CHECK(alpha.numel() == 1, "pyscorepen.soft_value: alpha must have one element, got ", alpha.sizes());
  TORCH_CHECK(!actor_weights.empty() && actor_weights.back().dim() == 2 && actor_weights.back().size(1) == 2 * A,
              "pyscorepen.soft_value: actor_weights must be a non-empty list of [in, out] tensors, the last "
              "with out = 2A = ", 2 * A, " (mu | log_std)");
  TORCH_CHECK(!critic_weights.empty() && critic_weights[0].dim() == 3 && critic_weights[0].size(0) > 0,
              "pyscorepen.soft_value: critic_weights must be a non-empty list of [N, in, out] tensors, N >= 1");
  TORCH_CHECK(critic_weights.back().dim() == 3 && critic_weights.back().size(2) == 1,
              "pyscorepen.soft_value: the critics' last layer must output 1 (Q), got ", critic_weights.back().sizes());
  const int64_t N = critic_weights[0].size(0);

  Tensor out = at::empty({B}, obs.options());
  std::vector<Tensor> keep;
  cpu::SoftValueArgs args;
  describe_mlp(actor_weights, actor_biases, 0, S, cpu::Activation::kRelu, args.actor, keep);
  describe_mlp(critic_weights, critic_biases, N, S + A, cpu::Activation::kRelu, args.critic, keep);
  const float alpha_value = alpha.item<float>();

  const cpu::Kernels* kernels = simd_kernels();
  if (kernels == nullptr || has_empty_layer(args.actor) || has_empty_layer(args.critic)) {
    const int64_t rows = 1024;
    for (int64_t r0 = 0; r0 < B; r0 += rows) {
      const int64_t n = std::min(rows, B - r0);
      soft_value_chunk_generic(obs.narrow(0, r0, n), noise.narrow(0, r0, n), actor_weights, actor_biases,
                               critic_weights, critic_biases, action_scale.reshape({A}),
                               action_offset.reshape({A}), alpha_value, log_std_min, log_std_max,
                               out.narrow(0, r0, n));
    }
    return out;
  }

  Tensor obs_c = obs.contiguous(), noise_c = noise.contiguous(), scale_c = action_scale.contiguous(),
         offset_c = action_offset.contiguous();
  if (skew_inference_weights(B)) {
    skew_weights(actor_weights, args.actor, keep);
    skew_weights(critic_weights, args.critic, keep);
  }
  args.batch = B;
  args.obs_dim = S;
  args.act_dim = A;
  args.critics = N;
  args.obs = obs_c.data_ptr<float>();
  args.noise = noise_c.data_ptr<float>();
  args.action_scale = scale_c.data_ptr<float>();
  args.action_offset = offset_c.data_ptr<float>();
  args.alpha = alpha_value;
  args.log_std_min = static_cast<float>(log_std_min);
  args.log_std_max = static_cast<float>(log_std_max);
  args.out = out.data_ptr<float>();
  for_each_chunk(
      B, [&](int64_t rows) { return cpu::soft_value_layout(args, rows); },
      [&](int64_t r0, int64_t r1, float* scratch) { kernels->soft_value_rows(args, r0, r1, scratch); });
  return out;
}

// --------------------------------------------------- ensemble MLP training
// Forward saving the hidden activations and the backward of E MLPs (SAC's critics, the
// dynamics ensemble), see pyscorepen/ops/ensemble_mlp.py. Activation buffers are
// [E, B_pad, ld_l]: rows padded to kRowPad, columns to padded_cols (the "saved" outputs of the forward).
cpu::Activation parse_activation(c10::string_view activation) {
  if (activation == "relu") return cpu::Activation::kRelu;
  if (activation == "silu") return cpu::Activation::kSilu;
  TORCH_CHECK(false, "pyscorepen.ensemble_mlp: activation must be 'relu' or 'silu', got '", std::string(activation),
              "'");
}

int64_t padded_rows(int64_t batch) { return (std::max<int64_t>(batch, 1) + cpu::kRowPad - 1) / cpu::kRowPad * cpu::kRowPad; }
// Rows the training kernels compute (EnsembleTrainArgs::batch_rows): the batch rounded up to 4.
int64_t computed_rows(int64_t batch) { return (std::max<int64_t>(batch, 1) + 3) / 4 * 4; }

// Leading dimension of an activation buffer with n columns: n rounded up to 16, then skewed
// (pyscorepen/ops/ensemble_mlp.py: saved_width, the same rule).
int64_t padded_cols(int64_t n) { return skewed_ld((n + 15) / 16 * 16); }


// Rows of one (member, row block) task: whole batch on one thread; with several threads
// >= 4 tasks per thread over all members when the batch allows, at most 480 rows.
int64_t rows_per_task(int64_t batch_pad, int64_t members, bool per_member) {
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t groups = per_member ? members : 1;
  const int64_t blocks = threads > 1 ? std::max<int64_t>(1, (4 * threads + groups - 1) / groups) : 1;
  int64_t rows = (batch_pad + blocks - 1) / blocks;
  rows = (rows + cpu::kRowPad - 1) / cpu::kRowPad * cpu::kRowPad;
  return std::min<int64_t>(std::max<int64_t>(rows, cpu::kRowPad), std::min<int64_t>(batch_pad, 480));
}

void check_ensemble_input(const Tensor& x, at::TensorList weights, const char* op) {
  check_cpu_f32(x, "x");
  TORCH_CHECK(!weights.empty() && weights[0].dim() == 3, "pyscorepen.", op,
              ": weights must be a non-empty list of [E, in, out] tensors");
  TORCH_CHECK(x.dim() == 2 || (x.dim() == 3 && x.size(0) == weights[0].size(0)), "pyscorepen.", op,
              ": x must be [B, in] or [E, B, in] with E = ", weights[0].size(0), ", got ", x.sizes());
}

Tensor activate_generic(const Tensor& z, cpu::Activation act) {
  return act == cpu::Activation::kRelu ? at::relu(z) : at::silu(z);
}

// Zero-padded [E, B_pad, ld] copy of t [E, B, n] (generic path; the SIMD kernels write in place).
Tensor saved_buffer_generic(const Tensor& t) {
  Tensor out = at::zeros({t.size(0), padded_rows(t.size(1)), padded_cols(t.size(2))}, t.options());
  out.narrow(1, 0, t.size(1)).narrow(2, 0, t.size(2)).copy_(t);
  return out;
}

std::tuple<Tensor, std::vector<Tensor>> ensemble_mlp_forward_cpu(const Tensor& x, at::TensorList weights,
                                                                 at::TensorList biases, c10::string_view activation) {
  check_ensemble_input(x, weights, "ensemble_mlp_forward");
  const cpu::Activation act = parse_activation(activation);
  const int64_t E = weights[0].size(0), B = x.size(-2), D = x.size(-1), L = static_cast<int64_t>(weights.size());
  std::vector<Tensor> keep;
  cpu::EnsembleTrainArgs args;
  describe_mlp(weights, biases, E, D, act, args.mlp, keep);
  const int64_t B_pad = padded_rows(B), N = args.mlp.dims[L];

  const cpu::Kernels* kernels = simd_kernels();
  if (kernels == nullptr || has_empty_layer(args.mlp)) {
    Tensor h = x.dim() == 2 ? x.unsqueeze(0).expand({E, B, D}) : x;   // [E, B, in]
    std::vector<Tensor> saved_h, saved_z;
    for (int64_t l = 0; l + 1 < L; ++l) {
      Tensor z = at::baddbmm(biases[l].unsqueeze(1), h, weights[l]);  // [E, B, out_l]
      h = activate_generic(z, act);
      saved_h.push_back(saved_buffer_generic(h));
      if (act == cpu::Activation::kSilu) {   // silu'(z) = s (1 + z (1 - s))
        Tensor s = at::sigmoid(z);
        saved_z.push_back(saved_buffer_generic(s * (1 + z * (1 - s))));
      }
    }
    Tensor out = at::baddbmm(biases[L - 1].unsqueeze(1), h, weights[L - 1]).contiguous();
    saved_h.insert(saved_h.end(), saved_z.begin(), saved_z.end());
    return {out, saved_h};
  }

  // x with B_pad rows (zeros below B), unless it already is a contiguous B_pad-row tensor
  Tensor x_pad = pad_rows(x, B_pad);
  args.members = E;
  args.batch_pad = B_pad;
  args.batch_rows = computed_rows(B);
  args.x = x_pad.data_ptr<float>();
  args.ld_x = D;
  args.x_shared = x.dim() == 2;
  std::vector<Tensor> saved_h, saved_z;
  for (int64_t l = 0; l < L; ++l) args.ld[l] = padded_cols(args.mlp.dims[l + 1]);
  for (int64_t l = 0; l + 1 < L; ++l) {
    saved_h.push_back(at::empty({E, B_pad, args.ld[l]}, x.options()));
    args.h[l] = saved_h.back().data_ptr<float>();
    if (act == cpu::Activation::kSilu) {
      saved_z.push_back(at::empty({E, B_pad, args.ld[l]}, x.options()));
      args.z[l] = saved_z.back().data_ptr<float>();
    }
  }
  Tensor out_pad = at::empty({E, B_pad, args.ld[L - 1]}, x.options());
  args.out = out_pad.data_ptr<float>();
  if (B_pad >= kSkewedWeightMinRows) skew_weights(weights, args.mlp, keep);
  const int64_t rows = rows_per_task(B_pad, E, true), blocks = (B_pad + rows - 1) / rows;
  run_tasks(E * blocks, [&](int64_t task) {
    const int64_t member = task / blocks, r0 = (task % blocks) * rows;
    kernels->ensemble_forward_rows(args, member, r0, std::min(args.batch_rows, r0 + rows));
    if (r0 + rows >= B_pad) {   // the member's last block: zeros in the saved rows the kernels skip
      const int64_t skipped = B_pad - args.batch_rows;
      for (int64_t l = 0; l + 1 < L; ++l)
        for (float* buffer : {args.h[l], args.z[l]})
          if (buffer != nullptr && skipped > 0)
            std::memset(buffer + (member * B_pad + args.batch_rows) * args.ld[l], 0,
                        sizeof(float) * skipped * args.ld[l]);
    }
  });
  saved_h.insert(saved_h.end(), saved_z.begin(), saved_z.end());
  return {out_pad.narrow(1, 0, B).narrow(2, 0, N).contiguous(), saved_h};
}

std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>> ensemble_mlp_backward_cpu(
    const Tensor& grad_out, const Tensor& x, at::TensorList weights, at::TensorList saved,
    c10::string_view activation, std::array<bool, 3> output_mask) {
  check_ensemble_input(x, weights, "ensemble_mlp_backward");
  check_cpu_f32(grad_out, "grad_out");
  const cpu::Activation act = parse_activation(activation);
  const int64_t E = weights[0].size(0), B = x.size(-2), D = x.size(-1), L = static_cast<int64_t>(weights.size());
  const int64_t B_pad = padded_rows(B);
  const bool need_x = output_mask[0], need_w = output_mask[1], need_b = output_mask[2];
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == (L - 1) * (act == cpu::Activation::kSilu ? 2 : 1),
              "pyscorepen.ensemble_mlp_backward: expected the saved activations of ensemble_mlp_forward, got ",
              saved.size(), " tensors for ", L, " layers");
  int64_t dims[cpu::kMaxLayers + 1];
  TORCH_CHECK(L <= cpu::kMaxLayers, "pyscorepen: at most ", cpu::kMaxLayers, " layers are supported");
  dims[0] = D;
  for (int64_t l = 0; l < L; ++l) {
    check_cpu_f32(weights[l], "weight");
    TORCH_CHECK(weights[l].dim() == 3 && weights[l].size(0) == E && weights[l].size(1) == dims[l],
                "pyscorepen.ensemble_mlp_backward: weight ", l, " must be [E=", E, ", ", dims[l], ", out], got ",
                weights[l].sizes());
    dims[l + 1] = weights[l].size(2);
  }
  for (int64_t l = 0; l + 1 < L; ++l) {
    for (int64_t k = 0; k < (act == cpu::Activation::kSilu ? 2 : 1); ++k) {
      const Tensor& s = saved[k * (L - 1) + l];
      check_cpu_f32(s, "saved");
      TORCH_CHECK(s.dim() == 3 && s.size(0) == E && s.size(1) == B_pad && s.size(2) == padded_cols(dims[l + 1]),
                  "pyscorepen.ensemble_mlp_backward: saved activation of layer ", l, " must be [", E, ", ", B_pad,
                  ", ", padded_cols(dims[l + 1]), "], got ", s.sizes());
    }
  }
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == E && grad_out.size(1) == B && grad_out.size(2) == dims[L],
              "pyscorepen.ensemble_mlp_backward: grad_out must be [", E, ", ", B, ", ", dims[L], "], got ",
              grad_out.sizes());

  bool empty_layer = false;
  for (int64_t l = 1; l <= L; ++l) empty_layer = empty_layer || dims[l] == 0;
  const cpu::Kernels* kernels = simd_kernels();
  if (kernels == nullptr || empty_layer) {
    std::vector<Tensor> hs, zs, grad_weights, grad_biases;
    for (int64_t l = 0; l + 1 < L; ++l) {
      hs.push_back(saved[l].narrow(1, 0, B).narrow(2, 0, dims[l + 1]));
      if (act == cpu::Activation::kSilu) zs.push_back(saved[L - 1 + l].narrow(1, 0, B).narrow(2, 0, dims[l + 1]));
    }
    Tensor x_members = x.dim() == 2 ? x.unsqueeze(0).expand({E, B, D}) : x;
    Tensor grad_x = at::empty({0}, x.options());
    Tensor dz = grad_out;   // [E, B, out_l]
    for (int64_t l = L - 1; l >= 0; --l) {
      const Tensor& h_prev = l > 0 ? hs[l - 1] : x_members;
      if (need_w) grad_weights.insert(grad_weights.begin(), at::bmm(h_prev.transpose(1, 2), dz));
      if (need_b) grad_biases.insert(grad_biases.begin(), dz.sum(1));
      if (l > 0) {
        Tensor dh = at::bmm(dz, weights[l].transpose(1, 2));   // [E, B, in_l]
        if (act == cpu::Activation::kRelu) {
          dz = dh * hs[l - 1].gt(0);
        } else {
          dz = dh * zs[l - 1];   // saved silu'(z)
        }
      } else if (need_x) {
        grad_x = at::bmm(dz, weights[0].transpose(1, 2));
        if (x.dim() == 2) grad_x = grad_x.sum(0);
        grad_x = grad_x.contiguous();
      }
    }
    for (auto& g : grad_weights) g = g.contiguous();
    return {grad_x, grad_weights, grad_biases};
  }

  std::vector<Tensor> keep;
  cpu::EnsembleTrainArgs args;
  args.mlp.n_layers = static_cast<int>(L);
  args.mlp.hidden = act;
  args.members = E;
  args.batch_pad = B_pad;
  args.batch_rows = computed_rows(B);
  args.x_shared = x.dim() == 2;
  args.ld_x = D;
  for (int64_t l = 0; l <= L; ++l) args.mlp.dims[l] = dims[l];
  for (int64_t l = 0; l < L; ++l) args.ld[l] = padded_cols(dims[l + 1]);
  for (int64_t l = 0; l + 1 < L; ++l) {
    keep.push_back(saved[l].contiguous());
    args.h[l] = keep.back().data_ptr<float>();
    if (act == cpu::Activation::kSilu) {
      keep.push_back(saved[L - 1 + l].contiguous());
      args.z[l] = keep.back().data_ptr<float>();
    }
  }
  // workspace: W_l^T [E, out_l, in_l] for the dz chain / grad_x, then the dz buffers [E, B_pad, ld_l]
  int64_t workspace = 0, wt_offset[cpu::kMaxLayers], dz_offset[cpu::kMaxLayers];
  for (int64_t l = 0; l < L; ++l) {
    wt_offset[l] = workspace;
    args.ld_wt[l] = skewed_ld(dims[l]);
    if (l > 0 || need_x) workspace += (E * dims[l + 1] * args.ld_wt[l] + 15) / 16 * 16;
  }
  for (int64_t l = 0; l < L; ++l) {
    dz_offset[l] = workspace;
    workspace += E * B_pad * args.ld[l];
  }
  float* work = thread_workspace(workspace);
  // W_l^T per (layer, member) in the thread pool: tiled transposes (~10x faster than ATen's strided
  // copy), which on one thread were ~5 % of the dynamics fit's step, serial before the parallel phases
  std::vector<TransposeJob> transposes;
  for (int64_t l = (need_x ? 0 : 1); l < L; ++l) {
    keep.push_back(weights[l].contiguous());
    args.wt[l] = work + wt_offset[l];
    const float* w = keep.back().data_ptr<float>();
    const int64_t rows = dims[l], cols = dims[l + 1];
    for (int64_t member = 0; member < E; ++member)
      transposes.push_back({w + member * rows * cols, rows, cols, work + wt_offset[l] + member * cols * args.ld_wt[l],
                            args.ld_wt[l]});
  }
  transpose_jobs(transposes);
  if (need_w || need_b) {   // the weight gradient reads the layer inputs: x with B_pad rows
    Tensor x_pad = pad_rows(x, B_pad);
    keep.push_back(x_pad);
    args.x = x_pad.data_ptr<float>();
  }
  for (int64_t l = 0; l < L; ++l) args.dz[l] = work + dz_offset[l];
  {   // dz_{L-1} = grad_out, zero in the padded rows and columns
    Tensor dz_last = at::from_blob(args.dz[L - 1], {E, B_pad, args.ld[L - 1]}, x.options());
    dz_last.zero_();
    dz_last.narrow(1, 0, B).narrow(2, 0, dims[L]).copy_(grad_out);
  }

  std::vector<Tensor> grad_weights, grad_biases;
  for (int64_t l = 0; l < L; ++l) {
    if (need_w) {
      grad_weights.push_back(at::empty({E, dims[l], dims[l + 1]}, x.options()));
      args.grad_w[l] = grad_weights.back().data_ptr<float>();
    }
    if (need_b) {
      grad_biases.push_back(at::empty({E, dims[l + 1]}, x.options()));
      args.grad_b[l] = grad_biases.back().data_ptr<float>();
    }
  }
  Tensor grad_x_pad;
  if (need_x) {
    grad_x_pad = x.dim() == 2 ? at::empty({B_pad, padded_cols(D)}, x.options())
                              : at::empty({E, B_pad, padded_cols(D)}, x.options());
    args.grad_x = grad_x_pad.data_ptr<float>();
    args.ld_gx = padded_cols(D);
  }

  // The phases run per chunk of kBackwardChunkRows (384) rows: phase 1 writes the chunk's dz rows
  // and phases 2 / 3 read them (and the chunk's saved activations) while they are still in cache.
  // Phase 2 adds each chunk's slabs to the sums of the chunks before it, in row order: the bits of
  // one pass (checked against the unchunked build: 72 cases up to 7 000 rows, 1 and 2 threads).
  // Measured on critics 2 x 23-256-256-1 at 3 840 rows, AMD EPYC Zen 4: the dz chain took 2.6-2.8
  // us per row up to 1 024 rows and 3.1-3.4 us from 2 048, once the buffers outgrew the caches;
  // forward + all gradients, builds alternating: 1 thread (CPU time) 25.0 -> 23.6 ms with 384-row
  // chunks, 24.1 with 1 152 (medians of 3); 2 threads, % of the paired sgemm probe (targets.py
  // critic-3840) 83.6 / 89.1 / 83.1 -> 88.3 / 94.5 / 87.4; COMBO's fused update (1 thread, CPU
  // time) 41.5 / 40.4 -> 39.4 / 39.6 ms. Unchanged at <= 384 rows (SAC's 256).
  // Phase 2 (weight / bias gradients, per (layer, member, group of column blocks), largest first)
  // and phase 3 (input gradient, per row block) run in one pool: both only read the dz buffers. A
  // task's column blocks share every slab of the layer input read from memory, so a layer is
  // split into groups only as far as the threads need: no group costs more than the phase's
  // total / threads (1 thread: whole layers; at B = 3 840 one group per 256-wide layer read the
  // critics' h once instead of once per block). The phase-2 tasks are the same for every chunk.
  struct Task { int layer; int64_t member, begin, end, cost; };   // blocks or, for grad_x, one row block
  std::vector<Task> param_tasks;
  if (need_w || need_b) {
    const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
    int64_t total_cost = 0;
    for (int64_t l = 0; l < L; ++l) total_cost += E * dims[l] * dims[l + 1];
    for (int64_t l = 0; l < L; ++l) {
      const int64_t n_blocks = kernels->column_blocks(dims[l + 1]), layer_cost = dims[l] * dims[l + 1];
      const int64_t wanted = (layer_cost * threads + total_cost - 1) / std::max<int64_t>(total_cost, 1);
      const int64_t groups = std::min(n_blocks, std::max<int64_t>(1, wanted));
      for (int64_t e = 0; e < E; ++e)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t begin = g * n_blocks / groups, end = (g + 1) * n_blocks / groups;
          param_tasks.push_back({static_cast<int>(l), e, begin, end, layer_cost * (end - begin) / n_blocks});
        }
    }
  }
  const int64_t x_groups = args.x_shared ? 1 : E;
  for (int64_t c0 = 0; c0 < args.batch_rows; c0 += cpu::kBackwardChunkRows) {
    const int64_t c1 = std::min(args.batch_rows, c0 + cpu::kBackwardChunkRows), c_pad = padded_rows(c1 - c0);
    // phase 1: dz chain, per (member, row block)
    const int64_t rows = rows_per_task(c_pad, E, true), blocks = (c_pad + rows - 1) / rows;
    if (L > 1 && (need_x || need_w || need_b)) {
      run_tasks(E * blocks, [&](int64_t task) {
        const int64_t member = task / blocks, r0 = c0 + (task % blocks) * rows;
        if (r0 < c1) kernels->ensemble_backward_dz_rows(args, member, r0, std::min(c1, r0 + rows));
      });
    }
    // phases 2 and 3
    std::vector<Task> tasks = param_tasks;
    const int64_t x_rows = rows_per_task(c_pad, x_groups, true), x_blocks = (c_pad + x_rows - 1) / x_rows;
    if (need_x) {
      for (int64_t g = 0; g < x_groups; ++g)
        for (int64_t blk = 0; blk < x_blocks; ++blk)
          tasks.push_back({-1, g, blk, blk + 1, (args.x_shared ? E : 1) * dims[0] * dims[1] * x_rows / c_pad});
    }
    std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
    run_tasks(static_cast<int64_t>(tasks.size()), [&](int64_t index) {
      const Task& task = tasks[index];
      if (task.layer >= 0) {
        kernels->ensemble_backward_params(args, task.layer, task.member, task.begin, task.end, c0, c1);
      } else {
        const int64_t r0 = c0 + task.begin * x_rows;
        if (r0 < c1) kernels->ensemble_backward_grad_x_rows(args, task.member, r0, std::min(c1, r0 + x_rows));
      }
    });
  }
  Tensor grad_x = need_x ? grad_x_pad.narrow(-2, 0, B).narrow(-1, 0, D).contiguous() : at::empty({0}, x.options());
  return {grad_x, grad_weights, grad_biases};
}

// forward only (its first output); autograd goes through ensemble_mlp_forward's kernel
Tensor ensemble_mlp_composite(const Tensor& x, at::TensorList weights, at::TensorList biases,
                              c10::string_view activation) {
  static const auto forward = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("pyscorepen::ensemble_mlp_forward", "")
                                  .typed<std::tuple<Tensor, std::vector<Tensor>>(
                                      const Tensor&, at::TensorList, at::TensorList, c10::string_view)>();
  return std::get<0>(forward.call(x, weights, biases, activation));
}

}  // namespace

TORCH_LIBRARY(pyscorepen, m) {
  m.def(
      "rollout_step(Tensor obs, Tensor actions, Tensor input_mean, Tensor input_std, Tensor[] weights, "
      "Tensor[] biases, Tensor max_logvar, Tensor min_logvar, Tensor member_index, Tensor noise, "
      "Tensor[] score_weights, Tensor[] score_biases) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("score_penalty(Tensor x, Tensor[] weights, Tensor[] biases) -> Tensor");
  m.def(
      "soft_value(Tensor obs, Tensor noise, Tensor[] actor_weights, Tensor[] actor_biases, "
      "Tensor[] critic_weights, Tensor[] critic_biases, Tensor action_scale, Tensor action_offset, "
      "Tensor alpha, float log_std_min, float log_std_max) -> Tensor");
  m.def("ensemble_mlp_forward(Tensor x, Tensor[] weights, Tensor[] biases, str activation) -> (Tensor, Tensor[])");
  m.def(
      "ensemble_mlp_backward(Tensor grad_out, Tensor x, Tensor[] weights, Tensor[] saved, str activation, "
      "bool[3] output_mask) -> (Tensor, Tensor[], Tensor[])");
  m.def("ensemble_mlp(Tensor x, Tensor[] weights, Tensor[] biases, str activation) -> Tensor");
  // one whole SAC step in place (kernel: csrc/sac_update.cpp, see pyscorepen/ops/sac_update.py)
  m.def(
      "sac_update(Tensor obs, Tensor actions, Tensor rewards, Tensor next_obs, Tensor terminals, Tensor penalty, "
      "Tensor? target_penalty, Tensor target_noise, Tensor actor_noise, Tensor(a!)[] actor_weights, "
      "Tensor(b!)[] actor_biases, Tensor(c!)[] critic_weights, Tensor(d!)[] critic_biases, "
      "Tensor(e!)[] target_weights, Tensor(f!)[] target_biases, Tensor(g!) log_alpha, Tensor(h!)[] exp_avgs, "
      "Tensor(i!)[] exp_avg_sqs, Tensor(j!)[] steps, Tensor action_scale, Tensor action_offset, float gamma, "
      "float tau, float target_entropy, bool auto_alpha, float actor_lr, float critic_lr, float alpha_lr, "
      "float beta1, float beta2, float adam_eps, float weight_decay, float log_std_min, float log_std_max, "
      "bool deterministic_backup=False, float? target_min=None, Tensor? cql_obs=None, Tensor? cql_actions=None, "
      "Tensor? cql_log_density=None, Tensor? cql_push_up=None, float cql_weight=0., float cql_temperature=1.) "
      "-> Tensor");
  // one minibatch step of the dynamics ensemble's fit in place (kernel: csrc/dynamics_fit_step.cpp,
  // see pyscorepen/ops/dynamics_fit_step.py)
  m.def(
      "dynamics_fit_step(Tensor x, Tensor target, Tensor(a!)[] weights, Tensor(b!)[] biases, Tensor(c!) max_logvar, "
      "Tensor(d!) min_logvar, Tensor(e!)[] exp_avgs, Tensor(f!)[] exp_avg_sqs, Tensor(g!)[] steps, "
      "float[] weight_decays, float lr, float beta1, float beta2, float eps, float logvar_bound_coef) -> Tensor");
}

TORCH_LIBRARY_IMPL(pyscorepen, CPU, m) {
  m.impl("rollout_step", &rollout_step_cpu);
  m.impl("score_penalty", &score_penalty_cpu);
  m.impl("soft_value", &soft_value_cpu);
  m.impl("ensemble_mlp_forward", &ensemble_mlp_forward_cpu);
  m.impl("ensemble_mlp_backward", &ensemble_mlp_backward_cpu);
}

TORCH_LIBRARY_IMPL(pyscorepen, CompositeImplicitAutograd, m) { m.impl("ensemble_mlp", &ensemble_mlp_composite); }

}  // namespace pyscorepen

// ------------------------------------------------------------------ Python module
// `import pyscorepen._C` loads this library, which runs the static TORCH_LIBRARY initialisers
// above. The module itself only exposes the ISA choice (pyscorepen.ops.backend wraps it):
//   cpu_isa() -> str            the ISA the CPU ops run now ("avx512" | "avx2" | "generic")
//   cpu_isas() -> tuple[str]    the ISAs this CPU and build support, best first
//   set_cpu_isa(name) -> str    switch ("auto" = best); returns the previous one; ValueError
//                               when unsupported
//   avx512_emulated() -> bool   True in a test build whose "avx512" kernels are emulated
namespace {

PyObject* raise_value_error(const c10::Error& error) {
  PyErr_SetString(PyExc_ValueError, error.what_without_backtrace());
  return nullptr;
}

PyObject* py_cpu_isa(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(pyscorepen::kIsaNames[static_cast<int>(pyscorepen::cpu_isa())]);
  } catch (const c10::Error& error) {
    return raise_value_error(error);
  }
}

PyObject* py_cpu_isas(PyObject*, PyObject*) {
  PyObject* names = PyList_New(0);
  for (int i = 0; i < 3; ++i) {
    if (!pyscorepen::isa_supported(static_cast<pyscorepen::Isa>(i))) continue;
    PyObject* name = PyUnicode_FromString(pyscorepen::kIsaNames[i]);
    PyList_Append(names, name);
    Py_DECREF(name);
  }
  PyObject* result = PyList_AsTuple(names);
  Py_DECREF(names);
  return result;
}

PyObject* py_set_cpu_isa(PyObject*, PyObject* arg) {
  const char* want = PyUnicode_AsUTF8(arg);
  if (want == nullptr) return nullptr;  // not a str: TypeError already set
  try {
    const int isa = static_cast<int>(pyscorepen::parse_isa(want, "pyscorepen: CPU ISA "));
    int previous = pyscorepen::g_isa.load();
    if (previous < 0) {  // not chosen yet: what the environment chooses (auto if that is invalid)
      try {
        previous = static_cast<int>(pyscorepen::cpu_isa());
      } catch (const c10::Error&) {
        previous = static_cast<int>(pyscorepen::parse_isa("", ""));
      }
    }
    pyscorepen::g_isa.store(isa);
    return PyUnicode_FromString(pyscorepen::kIsaNames[previous]);
  } catch (const c10::Error& error) {
    return raise_value_error(error);
  }
}

PyObject* py_avx512_emulated(PyObject*, PyObject*) {
  if (PYSCOREPEN_AVX512_EMULATED) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
}

PyMethodDef kMethods[] = {
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "ISA the CPU ops run now: 'avx512', 'avx2' or 'generic'."},
    {"cpu_isas", py_cpu_isas, METH_NOARGS, "ISAs this CPU and build support, best first."},
    {"set_cpu_isa", py_set_cpu_isa, METH_O, "Switch the CPU ops' ISA ('auto' = best); returns the previous one."},
    {"avx512_emulated", py_avx512_emulated, METH_NOARGS,
     "True in a test build whose 'avx512' kernels run on emulated intrinsics (csrc/cpu/avx512_emulation.h)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, kMethods};
  return PyModule_Create(&module_def);
}
