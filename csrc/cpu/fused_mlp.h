// Plain-data interface between the ATen-facing op wrappers (csrc/pyscorepen.cpp)
// and the ISA-specific compute kernels (csrc/cpu/fused_mlp_impl.h, instantiated by
// csrc/cpu/fused_mlp_avx512.cpp and csrc/cpu/fused_mlp_avx2.cpp).
//
// Everything here is raw pointers + sizes so that the ISA translation units
// never include ATen/std headers under their `#pragma GCC target` (no ODR mixing
// of AVX-512 / AVX2 and baseline code in COMDAT sections).
#pragma once
#include <cstdint>

// 1 where the x86-64 SIMD kernels are compiled (GCC / clang on x86-64: `#pragma GCC target`,
// <immintrin.h>, __builtin_cpu_supports); 0 elsewhere (e.g. aarch64), where only the
// generic ATen path of each op exists. -DPYSCOREPEN_X86_KERNELS=0 builds that way on x86-64 too.
#ifndef PYSCOREPEN_X86_KERNELS
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define PYSCOREPEN_X86_KERNELS 1
#else
#define PYSCOREPEN_X86_KERNELS 0
#endif
#endif
// 1: a test build whose AVX-512 kernels run on emulated intrinsics (csrc/cpu/avx512_emulation.h)
#ifndef PYSCOREPEN_AVX512_EMULATED
#define PYSCOREPEN_AVX512_EMULATED 0
#endif

namespace pyscorepen::cpu {

constexpr int kMaxLayers = 16;

// Activation fused into a dense layer's epilogue.
enum class Activation : int { kNone, kSilu, kRelu };

// One MLP, possibly an ensemble: member e of layer l has weight
// w[l] + e * dims[l] * dims[l + 1]  ([in_l, out_l], row-major) and bias
// b[l] + e * dims[l + 1]  ([out_l]). Hidden layers apply `hidden`, the last layer is linear.
struct MlpDesc {
  int n_layers = 0;                  // 0: no network
  int64_t dims[kMaxLayers + 1] = {}; // dims[0] = in, dims[n_layers] = out
  const float* w[kMaxLayers] = {};
  const float* b[kMaxLayers] = {};
  int64_t ld_w[kMaxLayers] = {};     // leading dimension of W_l: [E, dims[l], ld_w[l]] (0: dims[l + 1])
  Activation hidden = Activation::kSilu;  // dynamics ensemble / score net: SiLU; actor / critics: ReLU
};

struct RolloutArgs {
  int64_t batch = 0;      // B
  int64_t obs_dim = 0;    // S
  int64_t act_dim = 0;    // A
  int64_t members = 0;    // E
  const float* obs = nullptr;          // [B, S]
  const float* actions = nullptr;      // [B, A]
  const float* input_mean = nullptr;   // [S + A]
  const float* input_std = nullptr;    // [S + A]
  MlpDesc ensemble;                    // E members, out = 2 (S + 1)
  const float* max_logvar = nullptr;   // [S + 1]
  const float* min_logvar = nullptr;   // [S + 1]
  const int64_t* member_index = nullptr;  // [B]
  const float* noise = nullptr;        // [B, S + 1]
  MlpDesc score;                       // 1 member, [S + A] -> [S + A]; may be empty
  float* next_obs = nullptr;           // [B, S]
  float* rewards = nullptr;            // [B]
  float* mopo_penalty = nullptr;       // [B]
  float* score_penalty = nullptr;      // [B]
};

struct ScoreArgs {
  int64_t batch = 0;             // B
  const float* x = nullptr;      // [B, D]
  MlpDesc mlp;                   // 1 member
  float* out = nullptr;          // [B]
};

// Soft state value of a tanh-Gaussian actor under a Q ensemble (SAC Eq. 3, clipped double Q):
// out = min_k Q_k(s, a) - alpha log pi(a|s), a = scale tanh(mu + exp(log_std) eps) + offset.
struct SoftValueArgs {
  int64_t batch = 0;      // B
  int64_t obs_dim = 0;    // S
  int64_t act_dim = 0;    // A
  int64_t critics = 0;    // N
  const float* obs = nullptr;            // [B, S]
  const float* noise = nullptr;          // [B, A] eps ~ N(0, I)
  MlpDesc actor;                         // 1 member, ReLU, S -> ... -> 2A (mu | log_std)
  MlpDesc critic;                        // N members, ReLU, S + A -> ... -> 1
  const float* action_scale = nullptr;   // [A]
  const float* action_offset = nullptr;  // [A]
  float alpha = 0.0f;                    // entropy temperature
  float log_std_min = 0.0f, log_std_max = 0.0f;
  float* out = nullptr;                  // [B]
};

// Training of an ensemble MLP (pyscorepen/ops/ensemble_mlp.py): forward keeping the hidden
// activations, and the backward in three phases (dz chain per row block, weight/bias gradients
// per column block, input gradient per row block). Every activation buffer is [E, batch_pad,
// ld[l]] with batch_pad the batch rounded up to kRowPad and ld[l] = dims[l + 1] rounded up to 16,
// skewed by 16 more where that is a multiple of 128 (padded_cols in csrc/pyscorepen.cpp; pad
// columns are written as zeros). The kernels compute and read rows [0, batch_rows) only: the batch
// rounded up to 4 (dot_column's row group), whose extra rows hold the values of zero input rows /
// zero gradients. Rows [batch_rows, batch_pad) are neither read nor written (at B = 256 they were
// 8 of 264 rows of every pass, and a second 8-row slab of the weight gradient).
struct EnsembleTrainArgs {
  int64_t members = 0;                  // E
  int64_t batch_pad = 0;                // rows of every buffer, a multiple of kRowPad
  int64_t batch_rows = 0;               // rows computed: the batch rounded up to 4, <= batch_pad
  MlpDesc mlp;                          // E members; hidden = ReLU or SiLU
  const float* x = nullptr;             // [B_pad, ld_x] shared, or [E, B_pad, ld_x]
  int64_t ld_x = 0;
  bool x_shared = true;
  int64_t ld[kMaxLayers] = {};          // leading dimension of layer l's output buffers
  float* h[kMaxLayers] = {};            // saved h_l = act(z_l), l < L - 1
  float* z[kMaxLayers] = {};            // saved silu'(z_l) (SiLU only), l < L - 1
  float* out = nullptr;                 // [E, B_pad, ld[L - 1]] forward output
  // backward
  const float* wt[kMaxLayers] = {};     // W_l^T per member: [E, dims[l + 1], ld_wt[l]]
  int64_t ld_wt[kMaxLayers] = {};       // dims[l], skewed by 16 where it is a multiple of 128
  float* dz[kMaxLayers] = {};           // dz_l [E, B_pad, ld[l]]; dz[L - 1] = padded grad_out (input)
  float* grad_x = nullptr;              // [B_pad, ld_gx] shared, or [E, B_pad, ld_gx]; nullptr: not needed
  int64_t ld_gx = 0;
  float* grad_w[kMaxLayers] = {};       // [E, dims[l], dims[l + 1]]; nullptr: not needed
  float* grad_b[kMaxLayers] = {};       // [E, dims[l + 1]]
};
// Gaussian negative log-likelihood of an ensemble's (mean | raw log-variance) outputs with the
// learned soft log-variance bounds, and its gradient (pyscorepen/ops/dynamics_fit_step.py):
//   lv = min + softplus(max - softplus(max - raw) - min),  term = (mean - y)^2 exp(-lv) + lv.
// Rows are the E * B (member, batch) rows flattened; `scale` multiplies every term's gradient
// (1 / (B * O): the mean over a member's rows and outputs).
struct GaussianNllArgs {
  int64_t outputs = 0;                // O
  const float* out = nullptr;         // [rows, 2O] mean | raw log-variance
  const float* target = nullptr;      // [rows, O]
  const float* max_logvar = nullptr;  // [O]
  const float* min_logvar = nullptr;  // [O]
  float scale = 0.0f;
  float* grad_out = nullptr;          // [rows, 2O] out: scale * dterm/d(mean | raw)
};

// Rows of a chunk are padded to a multiple of this (lcm of the micro-kernel
// row tiles), so micro-kernels never need a row tail.
constexpr int64_t kRowPad = 24;

// Rows of one chunk of ensemble_mlp_backward (csrc/pyscorepen.cpp): above it, the three phases run
// chunk by chunk, so that a chunk's dz buffers and saved activations are still in cache when the
// weight gradient reads them. A multiple of kRowPad and of every ISA's kGradSlab (384 = lcm(24, 128)).
#ifndef PYSCOREPEN_BACKWARD_CHUNK_ROWS
#define PYSCOREPEN_BACKWARD_CHUNK_ROWS 384
#endif
constexpr int64_t kBackwardChunkRows = PYSCOREPEN_BACKWARD_CHUNK_ROWS;
static_assert(kBackwardChunkRows % kRowPad == 0, "backward chunks start at multiples of kRowPad");

// Scratch layout of one chunk (in floats; every block starts 64-byte aligned):
// x [m_pad, ld_x] | h0 [m_pad, ld_h] | h1 [m_pad, ld_h] | y [ld_y].
struct ChunkLayout {
  int64_t m_pad = 0;  // rows rounded up to kRowPad
  int64_t ld_x = 0;   // input width rounded up to 16
  int64_t ld_h = 0;   // widest layer output rounded up to 16
  int64_t ld_y = 0;   // rollout: S + 1 (one row's sample); soft value: rows (log pi per row); rounded up to 16
  int64_t off_h0 = 0, off_h1 = 0, off_y = 0, total = 0;
};
ChunkLayout rollout_layout(const RolloutArgs& args, int64_t rows);
ChunkLayout score_layout(const ScoreArgs& args, int64_t rows);
// x holds cat(s, a) ([m_pad, S + A]: the actor reads its first S columns, the critics all of them);
// h0/h1 are as wide as the widest actor or critic layer.
ChunkLayout soft_value_layout(const SoftValueArgs& args, int64_t rows);

// The compute kernels of one ISA. Row ranges [row_begin, row_end) of the inference ops take
// scratch holding <op>_layout(args, row_end - row_begin).total floats, 64-byte aligned; the
// ensemble-training ranges start at multiples of kRowPad and end there or at batch_rows.
struct Kernels {
  const char* name;  // "avx512" | "avx2"
  void (*rollout_rows)(const RolloutArgs& args, int64_t row_begin, int64_t row_end, float* scratch);
  void (*score_rows)(const ScoreArgs& args, int64_t row_begin, int64_t row_end, float* scratch);
  void (*soft_value_rows)(const SoftValueArgs& args, int64_t row_begin, int64_t row_end, float* scratch);
  // Ensemble MLP training: forward of `member` on the rows.
  void (*ensemble_forward_rows)(const EnsembleTrainArgs& args, int64_t member, int64_t row_begin, int64_t row_end);
  // Phase 1: dz_{L-2} .. dz_0 of `member` on the rows, from dz_{L-1}.
  void (*ensemble_backward_dz_rows)(const EnsembleTrainArgs& args, int64_t member, int64_t row_begin,
                                    int64_t row_end);
  // Phase 2: grad_w[layer][member] and grad_b[layer][member] for the column blocks [block_begin,
  // block_end), summed over the rows [row_begin, row_end) (the blocks of a slab of rows are done
  // before the next slab). row_begin == 0 starts the sums, a later range adds to them: ranges that
  // start at multiples of kBackwardChunkRows and run in order give the bits of one pass over all rows.
  void (*ensemble_backward_params)(const EnsembleTrainArgs& args, int layer, int64_t member, int64_t block_begin,
                                   int64_t block_end, int64_t row_begin, int64_t row_end);
  // Phase 3: grad_x on the rows (shared x: sum over members; else member `member` only).
  void (*ensemble_backward_grad_x_rows)(const EnsembleTrainArgs& args, int64_t member, int64_t row_begin,
                                        int64_t row_end);
  // Column blocks of a layer with n outputs in this ISA's micro-kernels (the phase-2 task unit).
  int64_t (*column_blocks)(int64_t n);
  // Gaussian NLL on rows [row_begin, row_end): writes grad_out there, stores the rows' sums of
  // scale * dterm/dmax_logvar and scale * dterm/dmin_logvar in grad_max / grad_min [O], returns
  // the rows' sum of the (unscaled) terms.
  float (*gaussian_nll_rows)(const GaussianNllArgs& args, int64_t row_begin, int64_t row_end, float* grad_max,
                             float* grad_min);
};

// True when the CPU (and OS) support the kernels (always false off x86-64).
bool cpu_has_avx512();  // AVX-512F
bool cpu_has_avx2();    // AVX2 and FMA

// The kernel tables; nullptr where not compiled (off x86-64). Call only when cpu_has_<isa>().
const Kernels* avx512_kernels();
const Kernels* avx2_kernels();

}  // namespace pyscorepen::cpu

namespace pyscorepen {
// The kernel table of the ISA the CPU ops run now (PYSCOREPEN_CPU_ISA / set_cpu_isa);
// nullptr: the generic ATen path. Defined in csrc/pyscorepen.cpp.
const cpu::Kernels* active_kernels();
}  // namespace pyscorepen
