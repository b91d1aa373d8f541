// AVX2 + FMA instantiation of the fused-MLP kernels (csrc/cpu/fused_mlp_impl.h), for x86-64
// CPUs without AVX-512 (AMD Zen 1-3, most Intel client CPUs). Same design as the AVX-512
// file: baseline compile flags, `#pragma GCC target("avx2,fma")`, internal linkage for all
// code except avx2_kernels(), called only after cpu_has_avx2() returned true.
//
// Tiles (16 ymm registers): column blocks of up to 2 vectors (16 columns); a block of NV
// vectors runs MR = 6 / 12 rows (NV = 2 / 1): 12 accumulators + NV weight vectors + 1
// broadcast <= 15 registers (the 6 x 16 shape of the usual AVX2 sgemm kernels). Masked
// loads / stores (vmaskmovps) cost extra uops, so a block whose last vector is full runs an
// unmasked copy of the tile.
//
// Off x86-64 this file only defines avx2_kernels() returning nullptr.
#include "fused_mlp.h"

#if PYSCOREPEN_X86_KERNELS
#include <immintrin.h>

#include <cstdint>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace pyscorepen::cpu {
namespace {

struct Avx2 {
  using Vec = __m256;
  using Mask = __m256;  // all-ones / all-zeros lanes
  static constexpr int kWidth = 8;
  static constexpr int kMaxVectors = 2;
  // Weight-gradient slab (rows): a 16-column dz panel and the h lines of a 6-row tile are 2 x 16 KB
  // at 256 rows, all of the 32 KB L1; at 128 rows, 16 KB. Backward alone, paired in one process
  // (AMD EPYC Zen 3, 30 rounds), 128 / 256 rows: dynamics 7 x 4x200 SiLU 0.95 (2 threads) and
  // 0.97 (1), critics 2 x 256 ReLU at B = 256 0.96 / 0.94, at B = 3 840 0.97 / 0.96, actor 0.94;
  // 96 and 64 rows read the same within noise.
  static constexpr int64_t kGradSlab = 128;
  // The GEMM tiles' k loop unrolled 4 times (accumulate_k): 48 FMAs and 32 loads per iteration, no
  // spills. Paired in one process (AMD EPYC Zen 3, 20 rounds, 1 thread), plain / unrolled:
  // soft_value 1.12x (256 rows) and 1.03x (12 150), rollout_step 1.08x (256) and 1.04x (4 096),
  // score_penalty 1.08x (4 096) and 1.04x (50k), ensemble_mlp ReLU critics 1.04x and SiLU dynamics
  // 1.06x (B = 256, forward + backward); whole 2-thread steps: fit 1.04x, SAC 1.03x, MOBILE 1.09x,
  // COMBO 1.05x (an experiment build switching the unroll per round). An unroll written out by
  // hand (4 calls of the step per iteration) spilled registers and read 0.92-0.96x: the pragma is
  // what is measured.
  static constexpr int kUnrollK = 4;
  static constexpr bool kFreeMask = false;
  template <int NV>
  static constexpr int rows() { return NV == 2 ? 6 : 12; }

  static Vec zero() { return _mm256_setzero_ps(); }
  static Vec set1(float x) { return _mm256_set1_ps(x); }
  static Vec loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec load(Mask m, const float* p) { return _mm256_maskload_ps(p, _mm256_castps_si256(m)); }
  static void store(Mask m, float* p, Vec v) { _mm256_maskstore_ps(p, _mm256_castps_si256(m), v); }
  static Mask tail(int64_t valid) {
    const int count = valid >= 8 ? 8 : static_cast<int>(valid);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  }
  static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static Vec sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  static Vec mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
  static Vec div(Vec a, Vec b) { return _mm256_div_ps(a, b); }
  static Vec min(Vec a, Vec b) { return _mm256_min_ps(a, b); }
  static Vec max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
  static Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec fnmadd(Vec a, Vec b, Vec c) { return _mm256_fnmadd_ps(a, b, c); }
  static Vec abs(Vec x) { return _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF))); }
  static Vec or_sign(Vec magnitude, Vec x) {
    return _mm256_or_ps(magnitude, _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)))));
  }
  static Vec round(Vec x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p 2^n for integral n in [-126, 127]: the biased exponent n + 127 shifted into place
  static Vec ldexp(Vec p, Vec n) {
    const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
  }
  // u = m 2^e for a positive normal u: e from the exponent bits, m = the mantissa with exponent 0
  static void split(Vec u, Vec* exponent, Vec* mantissa) {
    const __m256i bits = _mm256_castps_si256(u);
    *exponent = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)));
    *mantissa = _mm256_castsi256_ps(
        _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)), _mm256_set1_epi32(0x3F800000)));
  }
  static Vec rcp(Vec x) { return _mm256_rcp_ps(x); }
  static Mask gt(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static Mask lt(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static Mask eq(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static Vec select(Mask m, Vec if_true, Vec if_false) { return _mm256_blendv_ps(if_false, if_true, m); }
  static float reduce_add(Vec v) {
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    return _mm_cvtss_f32(_mm_add_ss(sum, _mm_movehdup_ps(sum)));
  }
  static float first(Vec v) { return _mm256_cvtss_f32(v); }
};

#include "fused_mlp_impl.h"

}  // namespace

const Kernels* avx2_kernels() { return kernel_table<Avx2>("avx2"); }

}  // namespace pyscorepen::cpu

#pragma GCC pop_options

#else  // not x86-64

namespace pyscorepen::cpu {
const Kernels* avx2_kernels() { return nullptr; }
}  // namespace pyscorepen::cpu

#endif  // PYSCOREPEN_X86_KERNELS
