// AVX-512F intrinsics without an AVX-512 CPU, for testing only: included by
// csrc/cpu/fused_mlp_avx512.cpp instead of <immintrin.h> in a build with
// -DPYSCOREPEN_AVX512_EMULATED=1 (setup.py: PYSCOREPEN_AVX512_EMULATION=1; needs SIMDe's headers,
// Debian's libsimde-dev). The Avx512 kernels then compile from the same source and run on any
// x86-64 CPU with AVX2, so their 16-wide tiles, masked tails and slabs are tested against the
// references on every machine (tests/test_avx512_emulated.py), not only where AVX-512 exists.
// Such a build never makes AVX-512 the automatic ISA (csrc/pyscorepen.cpp); its speed means
// nothing.
//
// SIMDe (https://github.com/simd-everywhere/simde) maps the _mm512_* names onto portable vector
// code. The intrinsics the kernels use that the Debian release (0.7.4) lacks are defined below,
// lane by lane, with the semantics of Intel's reference for the inputs the kernels give them.
#pragma once

// SIMDe's 64-byte vectors are passed by value without AVX-512 registers: an ABI note, not a fault
#pragma GCC diagnostic ignored "-Wpsabi"
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include <cmath>
#include <cstdint>

// names SIMDe 0.7.4 does not alias
typedef simde__mmask16 __mmask16;
#ifndef _MM_FROUND_NO_EXC
#define _MM_FROUND_NO_EXC SIMDE_MM_FROUND_NO_EXC
#endif
#ifndef _MM_MANT_NORM_1_2
#define _MM_MANT_NORM_1_2 0
#endif
#ifndef _MM_MANT_SIGN_src
#define _MM_MANT_SIGN_src 0
#endif

namespace pyscorepen::cpu::avx512_emulation {

struct Lanes {
  float v[16];
};

inline Lanes lanes(simde__m512 x) {
  Lanes out;
  simde_mm512_storeu_ps(out.v, x);
  return out;
}

inline simde__m512 vector(const Lanes& x) { return simde_mm512_loadu_ps(x.v); }

// floor(log2 |x|) as a float: getexp (0 -> -inf, inf -> inf, NaN -> NaN, denormals exact)
inline simde__m512 getexp(simde__m512 x) {
  Lanes l = lanes(x);
  for (float& f : l.v) f = std::logb(f);
  return vector(l);
}

// x / 2^floor(log2 |x|), in [1, 2) with the sign of x: the only interval and sign control emulated
// (any other fails to compile here instead of testing the wrong semantics)
template <int kInterval, int kSign>
inline simde__m512 getmant(simde__m512 x) {
  static_assert(kInterval == _MM_MANT_NORM_1_2 && kSign == _MM_MANT_SIGN_src,
                "avx512_emulation.h emulates getmant for _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src only");
  Lanes l = lanes(x);
  for (float& f : l.v)
    if (std::isfinite(f) && f != 0.0f) f = std::scalbn(f, -std::ilogb(f));
  return vector(l);
}

// 1 / x, exactly rounded (the hardware's rcp14 is within 2^-14; the kernels refine it by Newton)
inline simde__m512 rcp14(simde__m512 x) { return simde_mm512_div_ps(simde_mm512_set1_ps(1.0f), x); }

// The sum in the order of GCC's _mm512_reduce_add_ps: halves, then quarters, eighths, pairs.
inline float reduce_add(simde__m512 x) {
  Lanes l = lanes(x);
  for (int width = 8; width >= 1; width /= 2)
    for (int i = 0; i < width; ++i) l.v[i] += l.v[i + width];
  return l.v[0];
}

// Masked load and store touch only the lanes the mask selects, like the hardware's (which does not
// fault on the others): the kernels' tails rely on it at the ends of their buffers.
inline simde__m512 maskz_loadu(simde__mmask16 mask, const float* p) {
  Lanes l;
  for (int i = 0; i < 16; ++i) l.v[i] = (mask >> i) & 1 ? p[i] : 0.0f;
  return vector(l);
}

inline void mask_storeu(float* p, simde__mmask16 mask, simde__m512 x) {
  const Lanes l = lanes(x);
  for (int i = 0; i < 16; ++i)
    if ((mask >> i) & 1) p[i] = l.v[i];
}

}  // namespace pyscorepen::cpu::avx512_emulation

#define _mm512_getexp_ps(x) ::pyscorepen::cpu::avx512_emulation::getexp(x)
#define _mm512_getmant_ps(x, interval, sign) ::pyscorepen::cpu::avx512_emulation::getmant<(interval), (sign)>(x)
#define _mm512_rcp14_ps(x) ::pyscorepen::cpu::avx512_emulation::rcp14(x)
#define _mm512_reduce_add_ps(x) ::pyscorepen::cpu::avx512_emulation::reduce_add(x)
#define _mm512_maskz_loadu_ps(mask, p) ::pyscorepen::cpu::avx512_emulation::maskz_loadu(mask, p)
#define _mm512_mask_storeu_ps(p, mask, x) ::pyscorepen::cpu::avx512_emulation::mask_storeu(p, mask, x)
#define _mm512_cvtss_f32(x) ::pyscorepen::cpu::avx512_emulation::lanes(x).v[0]
