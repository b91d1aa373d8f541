// AVX-512F instantiation of the fused-MLP kernels (csrc/cpu/fused_mlp_impl.h): rollout step,
// score MLP, soft value of a tanh-Gaussian actor under a Q ensemble, ensemble-MLP training.
//
// This translation unit is compiled with baseline flags; the AVX-512 code is enabled by the
// `#pragma GCC target` below and only ever called after cpu_has_avx512() returned true
// (runtime dispatch in csrc/pyscorepen.cpp), so the extension still loads and runs on CPUs
// without AVX-512. Everything after the pragma has internal linkage except avx512_kernels(),
// so no AVX-512 code can be merged into baseline code.
//
// Tiles (32 zmm registers): column blocks of up to 4 vectors (64 columns); a block of NV
// vectors runs MR = 6 / 8 / 12 / 12 rows (NV = 4 / 3 / 2 / 1): MR * NV <= 24 accumulators.
// Masked loads / stores cost the same as plain ones, so the last vector is always masked.
//
// Off x86-64 this file only defines avx512_kernels() returning nullptr.
#include "fused_mlp.h"

#if PYSCOREPEN_X86_KERNELS
#include <cstdint>

#if PYSCOREPEN_AVX512_EMULATED
// A test build: the same kernels on SIMDe's portable _mm512_* (csrc/cpu/avx512_emulation.h),
// compiled for AVX2 + FMA.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "avx512_emulation.h"
#else
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
#endif
// GCC 12 warns on the `__m512 __Y = __Y;` idiom inside its own masked-intrinsic headers
// (as "used uninitialized" once the epilogue is a template parameter).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace pyscorepen::cpu {
namespace {

struct Avx512 {
  using Vec = __m512;
  using Mask = __mmask16;
  static constexpr int kWidth = 16;
  static constexpr int kMaxVectors = 4;
  // Weight-gradient slab (rows) and k-loop unroll (accumulate_k), as on the AVX2 path
  // (fused_mlp_avx2.cpp, measured on a Zen 3): 128 rows and 4 since session 18. Measured on an AMD
  // EPYC Zen 4 (family 25 model 17; 512-bit ops on 256-bit units), one thread, thread CPU time,
  // python benches/cpu_policy.py --isas avx512, each build in its own process, builds alternating,
  // medians of 4 rounds; cpp GFLOP/s, 256 / 1 (before) -> 128 / 4:
  //   ensemble_mlp SiLU dynamics 7 x 4x200, B = 64: 53 -> 60, 256: 73 -> 77, 1024: 81 -> 86;
  //   ReLU critics 2 x 2x256, B = 32: 44 -> 53, 256: 76 -> 89, 3840: 87 -> 90;
  //   dynamics_fit_step B = 64: 51 -> 62, 256: 73 -> 78, 512: 78 -> 83;
  //   rollout_step 256: 85 -> 88; score_penalty 256: 96 -> 98; soft_value 256: 100 -> 105;
  //   sac_update 256: 87 -> 92, 4096: 99 -> 104.
  // An earlier 3-round run of all four builds put 128 / 1 and 256 / 4 in between; 64 / 4 read the
  // same as 128 / 4 within noise (4 rounds: 0-3 % either way, SiLU at B = 32 50 -> 60). Whole 2-thread
  // steps (benches/targets.py) could not tell the builds apart on that VM (probe 104-200 GFLOP/s
  // within minutes). Not measured on a Zen 5 (full-width AVX-512, 48 KB L1) or an Intel CPU.
  // PYSCOREPEN_AVX512_GRAD_SLAB / _UNROLL_K override them in experiment builds (CFLAGS=-D...).
#ifdef PYSCOREPEN_AVX512_GRAD_SLAB
  static constexpr int64_t kGradSlab = PYSCOREPEN_AVX512_GRAD_SLAB;
#else
  static constexpr int64_t kGradSlab = 128;
#endif
#ifdef PYSCOREPEN_AVX512_UNROLL_K
  static constexpr int kUnrollK = PYSCOREPEN_AVX512_UNROLL_K;
#else
  static constexpr int kUnrollK = 4;
#endif
  static constexpr bool kFreeMask = true;
  template <int NV>
  static constexpr int rows() { return NV == 4 ? 6 : NV == 3 ? 8 : 12; }

  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec set1(float x) { return _mm512_set1_ps(x); }
  static Vec loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static Vec load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(Mask m, float* p, Vec v) { _mm512_mask_storeu_ps(p, m, v); }
  static Mask tail(int64_t valid) {
    return valid >= 16 ? static_cast<Mask>(0xFFFF) : static_cast<Mask>((1u << valid) - 1u);
  }
  static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static Vec sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
  static Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  static Vec div(Vec a, Vec b) { return _mm512_div_ps(a, b); }
  static Vec min(Vec a, Vec b) { return _mm512_min_ps(a, b); }
  static Vec max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
  static Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec fnmadd(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a, b, c); }
  static Vec abs(Vec x) { return _mm512_abs_ps(x); }
  static Vec or_sign(Vec magnitude, Vec x) {
    const __m512i sign_bit = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    return _mm512_castsi512_ps(
        _mm512_or_si512(_mm512_castps_si512(magnitude), _mm512_and_si512(_mm512_castps_si512(x), sign_bit)));
  }
  static Vec round(Vec x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static Vec ldexp(Vec p, Vec n) { return _mm512_scalef_ps(p, n); }
  static void split(Vec u, Vec* exponent, Vec* mantissa) {
    *exponent = _mm512_getexp_ps(u);                                    // floor(log2 u)
    *mantissa = _mm512_getmant_ps(u, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // [1, 2)
  }
  static Vec rcp(Vec x) { return _mm512_rcp14_ps(x); }
  static Mask gt(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static Mask lt(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static Mask eq(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static Vec select(Mask m, Vec if_true, Vec if_false) { return _mm512_mask_blend_ps(m, if_false, if_true); }
  static float reduce_add(Vec v) { return _mm512_reduce_add_ps(v); }
  static float first(Vec v) { return _mm512_cvtss_f32(v); }
};

#include "fused_mlp_impl.h"

}  // namespace

const Kernels* avx512_kernels() { return kernel_table<Avx512>("avx512"); }

}  // namespace pyscorepen::cpu

#pragma GCC pop_options

#else  // not x86-64

namespace pyscorepen::cpu {
const Kernels* avx512_kernels() { return nullptr; }
}  // namespace pyscorepen::cpu

#endif  // PYSCOREPEN_X86_KERNELS
