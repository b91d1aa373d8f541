// Baseline-ISA helpers shared by the op wrappers and the SIMD kernels.
#include "fused_mlp.h"

namespace pyscorepen::cpu {
namespace {
int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

int64_t widest_output(const MlpDesc& mlp) {
  int64_t widest = 0;
  for (int l = 0; l < mlp.n_layers; ++l) widest = mlp.dims[l + 1] > widest ? mlp.dims[l + 1] : widest;
  return widest;
}

ChunkLayout make_layout(int64_t rows, int64_t in_dim, int64_t widest, int64_t head_dim) {
  ChunkLayout layout;
  layout.m_pad = round_up(rows > 0 ? rows : 1, kRowPad);
  layout.ld_x = round_up(in_dim, 16);
  layout.ld_h = round_up(widest > 0 ? widest : 1, 16);
  layout.ld_y = round_up(head_dim > 0 ? head_dim : 1, 16);
  layout.off_h0 = layout.m_pad * layout.ld_x;
  layout.off_h1 = layout.off_h0 + layout.m_pad * layout.ld_h;
  layout.off_y = layout.off_h1 + layout.m_pad * layout.ld_h;
  layout.total = layout.off_y + layout.ld_y;
  return layout;
}
}  // namespace

ChunkLayout rollout_layout(const RolloutArgs& args, int64_t rows) {
  int64_t widest = widest_output(args.ensemble);
  int64_t score_widest = widest_output(args.score);
  return make_layout(rows, args.obs_dim + args.act_dim, widest > score_widest ? widest : score_widest,
                     args.obs_dim + 1);
}

ChunkLayout score_layout(const ScoreArgs& args, int64_t rows) {
  return make_layout(rows, args.mlp.dims[0], widest_output(args.mlp), 0);
}

ChunkLayout soft_value_layout(const SoftValueArgs& args, int64_t rows) {
  int64_t widest = widest_output(args.actor);
  int64_t critic_widest = widest_output(args.critic);
  return make_layout(rows, args.obs_dim + args.act_dim, widest > critic_widest ? widest : critic_widest, rows);
}

bool cpu_has_avx512() {
#if PYSCOREPEN_X86_KERNELS
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if PYSCOREPEN_X86_KERNELS
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace pyscorepen::cpu
