// AVX-512F kernels for the fused ensemble-MLP rollout step, the score MLP and the
// soft value of a tanh-Gaussian actor under a Q ensemble.
//
// This translation unit is compiled with baseline flags; the AVX-512 code is
// enabled by the `#pragma GCC target` below and only ever called after
// cpu_has_avx512() returned true (runtime dispatch in csrc/pyscorepen.cpp), so
// the extension still loads and runs on CPUs without AVX-512. Everything after
// the pragma lives in an anonymous namespace (internal linkage) except the
// exported entry points, so no AVX-512 code can be merged into baseline code.
//
// GEMM: a register-blocked broadcast-A / vector-B micro-kernel working directly
// on the row-major [in, out] weights (no packing): an MR x (16 * NV) tile of the
// output lives in zmm accumulators initialised with the bias, K is walked
// fully, and the activation epilogue (none / SiLU / ReLU, a template parameter)
// is applied in registers before the store.
// The column blocks of a layer are balanced (e.g. 200 = 13 vectors -> 4+3+3+3)
// and chunk rows are padded to kRowPad, so neither a row nor a vector tail loop
// is needed (the last vector of a row is masked). A layer with a single output
// (a critic's Q head) is a dot product per row instead.
//
// On non-x86-64 targets this file compiles to nothing and the op uses its generic path.
#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#include "fused_mlp.h"

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
// GCC 12 warns on the `__m512 __Y = __Y;` idiom inside its own masked-intrinsic headers
// (as "used uninitialized" once the epilogue is a template parameter).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace pyscorepen::cpu {
namespace {

// ---------------------------------------------------------------- vector math
// exp(x), Cephes expf polynomial (rel. error ~1e-7), 2^n applied with scalef.
inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// log(u) for finite u > 0, Cephes logf polynomial on the mantissa in [sqrt(.5), sqrt(2)).
inline __m512 log512(__m512 u) {
  __m512 e = _mm512_getexp_ps(u);                                   // floor(log2 u)
  __m512 m = _mm512_getmant_ps(u, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // [1, 2)
  __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_ps(e, big, e, _mm512_set1_ps(1.0f));
  __m512 x = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  __m512 z = _mm512_mul_ps(x, x);
  __m512 y = _mm512_set1_ps(7.0376836292e-2f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(-1.1514610310e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.1676998740e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(-1.2420140846e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.4249322787e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(-1.6668057665e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(2.0000714765e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(-2.4999993993e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(3.3333331174e-1f));
  y = _mm512_mul_ps(_mm512_mul_ps(y, x), z);
  y = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), y);
  y = _mm512_fnmadd_ps(z, _mm512_set1_ps(0.5f), y);
  return _mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), _mm512_add_ps(x, y));
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(t) = log(1 + t) * t / ((1 + t) - 1).
inline __m512 softplus512(__m512 x) {
  __m512 t = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));  // (0, 1]
  __m512 u = _mm512_add_ps(t, _mm512_set1_ps(1.0f));
  __m512 d = _mm512_sub_ps(u, _mm512_set1_ps(1.0f));
  __mmask16 tiny = _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_EQ_OQ);
  __m512 l1p = _mm512_mul_ps(log512(u), _mm512_div_ps(t, _mm512_mask_blend_ps(tiny, d, t)));
  l1p = _mm512_mask_blend_ps(tiny, l1p, t);
  return _mm512_add_ps(_mm512_max_ps(x, _mm512_setzero_ps()), l1p);
}

// silu(x) = x * sigmoid(x) = x / (1 + exp(-x)); 1 / d by rcp14 + one Newton step
// (rel. error ~1e-7, cheaper than vdivps in the GEMM epilogue).
inline __m512 silu512(__m512 x) {
  __m512 denom = _mm512_add_ps(exp512(_mm512_sub_ps(_mm512_setzero_ps(), x)), _mm512_set1_ps(1.0f));
  __m512 inv = _mm512_rcp14_ps(denom);
  inv = _mm512_mul_ps(inv, _mm512_fnmadd_ps(denom, inv, _mm512_set1_ps(2.0f)));
  return _mm512_mul_ps(x, inv);
}

// tanh(x), Cephes tanhf: odd polynomial for |x| < 0.625, else 1 - 2 / (exp(2|x|) + 1) with the
// sign of x (rel. error ~1e-7; large |x| round to exactly +-1, exp512 saturates instead of overflowing).
inline __m512 tanh512(__m512 x) {
  const __m512i sign_bit = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  __m512 ax = _mm512_abs_ps(x);
  __m512 z = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954e-2f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531e-2f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036e-1f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422e-1f));
  __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
  __m512 s = _mm512_add_ps(exp512(_mm512_add_ps(ax, ax)), _mm512_set1_ps(1.0f));
  __m512 big = _mm512_sub_ps(_mm512_set1_ps(1.0f), _mm512_div_ps(_mm512_set1_ps(2.0f), s));  // tanh(|x|)
  big = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(big),
                                            _mm512_and_si512(_mm512_castps_si512(x), sign_bit)));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_LT_OQ), big, small);
}

enum class Act { kNone, kSilu, kRelu };  // compile-time twin of cpu::Activation

template <Act ACT>
inline __m512 activate(__m512 x) {
  if constexpr (ACT == Act::kSilu) return silu512(x);
  if constexpr (ACT == Act::kRelu) return _mm512_max_ps(x, _mm512_setzero_ps());
  return x;
}

inline __mmask16 tail_mask(int64_t valid) {
  return valid >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << valid) - 1u);
}

// ---------------------------------------------------------------- GEMM tiles
// C[MR, 16 NV] = act(A[MR, K] @ W[K, 16 NV] + bias); the last vector uses `mask`.
template <int MR, int NV, Act ACT>
inline void micro_tile(const float* __restrict a, int64_t lda, int64_t k_dim, const float* __restrict w,
                       int64_t ldw, const float* __restrict bias, float* __restrict c, int64_t ldc,
                       __mmask16 mask) {
  __m512 acc[MR][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    __m512 bv = v == NV - 1 ? _mm512_maskz_loadu_ps(mask, bias + 16 * v) : _mm512_loadu_ps(bias + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) acc[r][v] = bv;
  }
  for (int64_t k = 0; k < k_dim; ++k) {
    const float* wk = w + k * ldw;
    __m512 wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      wv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(mask, wk + 16 * v) : _mm512_loadu_ps(wk + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      __m512 av = _mm512_set1_ps(a[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, wv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m512 out = activate<ACT>(acc[r][v]);
      if (v == NV - 1)
        _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mask, out);
      else
        _mm512_storeu_ps(c + r * ldc + 16 * v, out);
    }
  }
}

template <int MR, int NV, Act ACT>
inline void column_block(const float* a, int64_t lda, int64_t rows, int64_t k_dim, const float* w, int64_t ldw,
                         const float* bias, float* c, int64_t ldc, __mmask16 mask) {
  static_assert(kRowPad % MR == 0, "row tile must divide the row padding");
  for (int64_t i = 0; i < rows; i += MR)
    micro_tile<MR, NV, ACT>(a + i * lda, lda, k_dim, w, ldw, bias, c + i * ldc, ldc, mask);
}

// C[rows, 1] = act(A[rows, k] @ w[k] + bias[0]): one dot product per row, 4 rows at a time
// (a 16-wide column tile would spend 15 of its 16 lanes on nothing, e.g. a critic's Q head).
template <Act ACT>
void dot_column(const float* a, int64_t lda, int64_t rows, int64_t k_dim, const float* w, const float* bias,
                float* c, int64_t ldc) {
  constexpr int kRows = 4;
  static_assert(kRowPad % kRows == 0, "row group must divide the row padding");
  for (int64_t i = 0; i < rows; i += kRows) {
    __m512 acc[kRows];
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < k_dim; k += 16) {
      __mmask16 m = tail_mask(k_dim - k);
      __m512 wv = _mm512_maskz_loadu_ps(m, w + k);
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r)
        acc[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + (i + r) * lda + k), wv, acc[r]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      __m512 out = activate<ACT>(_mm512_set1_ps(_mm512_reduce_add_ps(acc[r]) + bias[0]));
      c[(i + r) * ldc] = _mm512_cvtss_f32(out);
    }
  }
}

// C[rows, n] = act(A[rows, k] @ W[k, n] + bias), rows a multiple of kRowPad.
// Loop order: column block outer (its W panel, <= k * 256 B, stays in L1/L2),
// row tiles inner (A streams from L2).
template <Act ACT>
void dense_layer(const float* a, int64_t lda, int64_t rows, int64_t k_dim, const float* w, int64_t n,
                 const float* bias, float* c, int64_t ldc) {
  if (n == 1) {
    dot_column<ACT>(a, lda, rows, k_dim, w, bias, c, ldc);
    return;
  }
  int64_t n_vec = (n + 15) / 16;
  int64_t n_blocks = (n_vec + 3) / 4;
  int64_t base = n_vec / n_blocks, extra = n_vec % n_blocks;
  int64_t col = 0;
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    int64_t nv = base + (blk < extra ? 1 : 0);
    int64_t cols = nv * 16 < n - col ? nv * 16 : n - col;
    __mmask16 mask = tail_mask(cols - (nv - 1) * 16);
    const float* wb = w + col;
    const float* bb = bias + col;
    float* cb = c + col;
    switch (nv) {
      case 4: column_block<6, 4, ACT>(a, lda, rows, k_dim, wb, n, bb, cb, ldc, mask); break;
      case 3: column_block<8, 3, ACT>(a, lda, rows, k_dim, wb, n, bb, cb, ldc, mask); break;
      case 2: column_block<12, 2, ACT>(a, lda, rows, k_dim, wb, n, bb, cb, ldc, mask); break;
      default: column_block<12, 1, ACT>(a, lda, rows, k_dim, wb, n, bb, cb, ldc, mask); break;
    }
    col += cols;
  }
}

void dense_layer(const float* a, int64_t lda, int64_t rows, int64_t k_dim, const float* w, int64_t n,
                 const float* bias, float* c, int64_t ldc, Activation act) {
  switch (act) {
    case Activation::kSilu: dense_layer<Act::kSilu>(a, lda, rows, k_dim, w, n, bias, c, ldc); break;
    case Activation::kRelu: dense_layer<Act::kRelu>(a, lda, rows, k_dim, w, n, bias, c, ldc); break;
    default: dense_layer<Act::kNone>(a, lda, rows, k_dim, w, n, bias, c, ldc); break;
  }
}

// Runs member `member` of `mlp` on x [rows, ld_x] (its first dims[0] columns); returns the
// buffer holding the output (h0 or h1, ping-pong, [rows, ld_h]; x itself when there are no
// layers) and its leading dimension in *ld_out. Hidden layers apply mlp.hidden.
const float* run_mlp(const MlpDesc& mlp, int64_t member, const float* x, int64_t ld_x, int64_t rows, float* h0,
                     float* h1, int64_t ld_h, int64_t* ld_out) {
  const float* in = x;
  int64_t ld_in = ld_x;
  float* out = h0;
  for (int l = 0; l < mlp.n_layers; ++l) {
    int64_t k_dim = mlp.dims[l], n = mlp.dims[l + 1];
    const float* w = mlp.w[l] + member * k_dim * n;  // [k, n]
    const float* b = mlp.b[l] + member * n;          // [n]
    dense_layer(in, ld_in, rows, k_dim, w, n, b, out, ld_h, l + 1 != mlp.n_layers ? mlp.hidden : Activation::kNone);
    in = out;
    ld_in = ld_h;
    out = out == h0 ? h1 : h0;
  }
  *ld_out = ld_in;
  return in;
}

// sum_j y[j]^2 over the first n entries of a row.
inline float row_sumsq(const float* y, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - j), y + j);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// Tanh-Gaussian head of one row (SAC, Haarnoja et al. 2018, App. C). From the actor output
// out = [mu | log_std] ([2A]) and eps ([A]): log_std clamped to [lo, hi], u = mu + exp(log_std) eps,
// writes a = scale tanh(u) + offset to action ([A]) and returns the log density in [-1, 1]^A
//   log pi = sum_j [ -eps_j^2 / 2 - log_std_j - log(2 pi) / 2 - 2 (log 2 - u_j - softplus(-2 u_j)) ].
inline float tanh_gaussian_head(const float* out, const float* eps, int64_t A, const float* scale,
                                const float* offset, __m512 lo, __m512 hi, float* action) {
  const __m512 half_log_2pi = _mm512_set1_ps(0.918938533204672742f);
  const __m512 log_2 = _mm512_set1_ps(0.693147180559945309f);
  float log_pi = 0.0f;
  for (int64_t j = 0; j < A; j += 16) {
    __mmask16 m = tail_mask(A - j);
    __m512 mu = _mm512_maskz_loadu_ps(m, out + j);
    __m512 log_std = _mm512_maskz_loadu_ps(m, out + A + j);
    __m512 e = _mm512_maskz_loadu_ps(m, eps + j);
    log_std = _mm512_min_ps(hi, _mm512_max_ps(lo, log_std));  // NaN (second operand) propagates
    __m512 u = _mm512_fmadd_ps(exp512(log_std), e, mu);
    __m512 a = _mm512_fmadd_ps(tanh512(u), _mm512_maskz_loadu_ps(m, scale + j), _mm512_maskz_loadu_ps(m, offset + j));
    _mm512_mask_storeu_ps(action + j, m, a);
    // neg_gauss = -log N(u; mu, std) = eps^2 / 2 + log_std + log(2 pi) / 2; squash = log 2 - u - softplus(-2 u)
    __m512 neg_gauss = _mm512_fmadd_ps(_mm512_mul_ps(e, e), _mm512_set1_ps(0.5f), _mm512_add_ps(log_std, half_log_2pi));
    __m512 squash = _mm512_sub_ps(_mm512_sub_ps(log_2, u), softplus512(_mm512_mul_ps(u, _mm512_set1_ps(-2.0f))));
    __m512 term = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), squash, _mm512_sub_ps(_mm512_setzero_ps(), neg_gauss));
    log_pi += _mm512_mask_reduce_add_ps(m, term);
  }
  return log_pi;
}

}  // namespace

// ------------------------------------------------------------------ rollout
void rollout_rows_avx512(const RolloutArgs& args, int64_t row_begin, int64_t row_end, float* scratch) {
  const int64_t rows = row_end - row_begin;
  const int64_t S = args.obs_dim, A = args.act_dim, Y = S + 1;
  const ChunkLayout lay = rollout_layout(args, rows);
  float* x = scratch;                 // [m_pad, ld_x]
  float* h0 = scratch + lay.off_h0;   // [m_pad, ld_h]
  float* h1 = scratch + lay.off_h1;   // [m_pad, ld_h]
  float* y = scratch + lay.off_y;     // [ld_y] sampled (delta_s, r) of one row

  // x = ((s, a) - mean) / std, zero in the padded rows / columns.
  for (int64_t i = 0; i < lay.m_pad; ++i) {
    float* xi = x + i * lay.ld_x;
    for (int64_t j = 0; j < lay.ld_x; ++j) xi[j] = 0.0f;
    if (i >= rows) continue;
    const float* s = args.obs + (row_begin + i) * S;
    const float* act = args.actions + (row_begin + i) * A;
    for (int64_t j = 0; j < S; ++j) xi[j] = (s[j] - args.input_mean[j]) / args.input_std[j];
    for (int64_t j = 0; j < A; ++j) xi[S + j] = (act[j] - args.input_mean[S + j]) / args.input_std[S + j];
  }
  for (int64_t i = 0; i < rows; ++i) args.mopo_penalty[row_begin + i] = 0.0f;

  // Ensemble, one member at a time, with the fused Gaussian head:
  // soft-bounded logvar -> sigma -> running max_e ||sigma_e|| (MOPO Alg. 2) and
  // the reparameterised sample for rows whose member is e.
  for (int64_t e = 0; e < args.members; ++e) {
    int64_t ld_out = 0;
    const float* out = run_mlp(args.ensemble, e, x, lay.ld_x, lay.m_pad, h0, h1, lay.ld_h, &ld_out);  // [m_pad, 2Y]
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t row = row_begin + i;
      const float* mean = out + i * ld_out;    // [Y]
      const float* logvar = mean + Y;          // [Y]
      const bool sampled = args.member_index[row] == e;
      const float* noise = args.noise + row * Y;
      __m512 sumsq = _mm512_setzero_ps();
      for (int64_t j = 0; j < Y; j += 16) {
        __mmask16 m = tail_mask(Y - j);
        __m512 hi = _mm512_maskz_loadu_ps(m, args.max_logvar + j);
        __m512 lo = _mm512_maskz_loadu_ps(m, args.min_logvar + j);
        __m512 lv = _mm512_maskz_loadu_ps(m, logvar + j);
        lv = _mm512_sub_ps(hi, softplus512(_mm512_sub_ps(hi, lv)));
        lv = _mm512_add_ps(lo, softplus512(_mm512_sub_ps(lv, lo)));
        __m512 sd = _mm512_maskz_mov_ps(m, exp512(_mm512_mul_ps(lv, _mm512_set1_ps(0.5f))));
        sumsq = _mm512_fmadd_ps(sd, sd, sumsq);
        if (sampled) {
          __m512 mu = _mm512_maskz_loadu_ps(m, mean + j);
          __m512 eps = _mm512_maskz_loadu_ps(m, noise + j);
          _mm512_mask_storeu_ps(y + j, m, _mm512_fmadd_ps(sd, eps, mu));
        }
      }
      float norm = _mm512_reduce_add_ps(sumsq);
      norm = _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(norm)));
      if (norm > args.mopo_penalty[row]) args.mopo_penalty[row] = norm;
      if (sampled) {
        const float* s = args.obs + row * S;
        float* next = args.next_obs + row * S;
        for (int64_t j = 0; j < S; ++j) next[j] = s[j] + y[j];
        args.rewards[row] = y[S];
      }
    }
  }

  // Score penalty ||h(x)||^2 (ScorePen Eq. 20) on the same normalized x.
  if (args.score.n_layers > 0) {
    int64_t ld_out = 0;
    const float* out = run_mlp(args.score, 0, x, lay.ld_x, lay.m_pad, h0, h1, lay.ld_h, &ld_out);  // [m_pad, D]
    const int64_t n = args.score.dims[args.score.n_layers];
    for (int64_t i = 0; i < rows; ++i) args.score_penalty[row_begin + i] = row_sumsq(out + i * ld_out, n);
  } else {
    for (int64_t i = 0; i < rows; ++i) args.score_penalty[row_begin + i] = 0.0f;
  }
}

// ------------------------------------------------------------ score penalty
void score_rows_avx512(const ScoreArgs& args, int64_t row_begin, int64_t row_end, float* scratch) {
  const int64_t rows = row_end - row_begin;
  const int64_t D = args.mlp.dims[0];
  const ChunkLayout lay = score_layout(args, rows);
  float* x = scratch;  // [m_pad, ld_x]
  float* h0 = scratch + lay.off_h0;
  float* h1 = scratch + lay.off_h1;
  for (int64_t i = 0; i < lay.m_pad; ++i) {
    float* xi = x + i * lay.ld_x;
    for (int64_t j = 0; j < lay.ld_x; ++j) xi[j] = 0.0f;
    if (i >= rows) continue;
    const float* src = args.x + (row_begin + i) * D;
    for (int64_t j = 0; j < D; ++j) xi[j] = src[j];
  }
  int64_t ld_out = 0;
  const float* out = run_mlp(args.mlp, 0, x, lay.ld_x, lay.m_pad, h0, h1, lay.ld_h, &ld_out);  // [m_pad, out]
  const int64_t n = args.mlp.dims[args.mlp.n_layers];
  for (int64_t i = 0; i < rows; ++i) args.out[row_begin + i] = row_sumsq(out + i * ld_out, n);
}

// --------------------------------------------------------------- soft value
void soft_value_rows_avx512(const SoftValueArgs& args, int64_t row_begin, int64_t row_end, float* scratch) {
  const int64_t rows = row_end - row_begin;
  const int64_t S = args.obs_dim, A = args.act_dim;
  const ChunkLayout lay = soft_value_layout(args, rows);
  float* x = scratch;                   // [m_pad, ld_x] cat(s, a)
  float* h0 = scratch + lay.off_h0;     // [m_pad, ld_h]
  float* h1 = scratch + lay.off_h1;     // [m_pad, ld_h]
  float* log_pi = scratch + lay.off_y;  // [rows]
  float* out = args.out + row_begin;    // [rows] running min_k Q_k, then the value

  // x[:, :S] = s, zero in the padded rows / columns; the head fills x[:, S:S+A] = a.
  for (int64_t i = 0; i < lay.m_pad; ++i) {
    float* xi = x + i * lay.ld_x;
    for (int64_t j = 0; j < lay.ld_x; ++j) xi[j] = 0.0f;
    if (i >= rows) continue;
    const float* s = args.obs + (row_begin + i) * S;
    for (int64_t j = 0; j < S; ++j) xi[j] = s[j];
  }

  // Actor on s (its first layer reads the first S columns of x) -> [m_pad, 2A], then the
  // tanh-Gaussian sample and its log-density row by row.
  int64_t ld_out = 0;
  const float* head = run_mlp(args.actor, 0, x, lay.ld_x, lay.m_pad, h0, h1, lay.ld_h, &ld_out);
  const __m512 lo = _mm512_set1_ps(args.log_std_min), hi = _mm512_set1_ps(args.log_std_max);
  for (int64_t i = 0; i < rows; ++i)
    log_pi[i] = tanh_gaussian_head(head + i * ld_out, args.noise + (row_begin + i) * A, A, args.action_scale,
                                   args.action_offset, lo, hi, x + i * lay.ld_x + S);

  // Critics on cat(s, a), one member at a time, with a running min over members (clipped
  // double Q, Fujimoto et al. 2018). NaN propagates as in torch.amin.
  for (int64_t k = 0; k < args.critics; ++k) {
    const float* q = run_mlp(args.critic, k, x, lay.ld_x, lay.m_pad, h0, h1, lay.ld_h, &ld_out);  // [m_pad, 1]
    for (int64_t i = 0; i < rows; ++i) {
      const float v = q[i * ld_out];
      if (k == 0 || v < out[i] || v != v) out[i] = v;
    }
  }
  // V(s) = min_k Q_k(s, a) - alpha log pi(a|s)  (SAC Eq. 3)
  for (int64_t i = 0; i < rows; ++i) out[i] -= args.alpha * log_pi[i];
}

// ------------------------------------------------------ ensemble MLP training
namespace {

// 1 / (1 + exp(-x)) with rcp14 + one Newton step (as silu512).
inline __m512 sigmoid512(__m512 x) {
  __m512 denom = _mm512_add_ps(exp512(_mm512_sub_ps(_mm512_setzero_ps(), x)), _mm512_set1_ps(1.0f));
  __m512 inv = _mm512_rcp14_ps(denom);
  return _mm512_mul_ps(inv, _mm512_fnmadd_ps(denom, inv, _mm512_set1_ps(2.0f)));
}

// Epilogue of a training GEMM tile: forward activations (SiLU may also store z), or the
// activation derivative of the backward (dz = dh * act'(.), `aux` = saved h (ReLU) or z (SiLU)).
enum class Epi { kNone, kSilu, kRelu, kReluGrad, kSiluGrad };
// Accumulator start: the bias (forward), zero, or the current C (sum over members).
enum class Init { kBias, kZero, kLoad };

// C[MR, 16 NV] = epi(init + A[MR, K] @ W[K, 16 NV]); A is row-major (a[r * lda + k]) or, with
// TRANS_A, column-major (a[k * lda + r]: the weight gradient h^T dz reads h [batch, in] this
// way). W's last vector is loaded with `load_mask`, C's last vector stored with `store_mask`
// (full in a padded buffer: the masked-off lanes are exact zeros there). `pre` (SiLU forward:
// receives silu'(z)) and `aux` (gradient epilogues: saved h for ReLU, silu'(z) for SiLU) are
// laid out like C.
template <int MR, int NV, Epi EPI, Init INIT, bool TRANS_A>
inline void train_tile(const float* __restrict a, int64_t lda, int64_t k_dim, const float* __restrict w,
                       int64_t ldw, const float* __restrict bias, float* __restrict c, int64_t ldc,
                       float* __restrict pre, const float* __restrict aux, __mmask16 load_mask,
                       __mmask16 store_mask) {
  __m512 acc[MR][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      if constexpr (INIT == Init::kBias)
        acc[r][v] = v == NV - 1 ? _mm512_maskz_loadu_ps(load_mask, bias + 16 * v) : _mm512_loadu_ps(bias + 16 * v);
      else if constexpr (INIT == Init::kLoad)
        acc[r][v] = v == NV - 1 ? _mm512_maskz_loadu_ps(store_mask, c + r * ldc + 16 * v)
                                : _mm512_loadu_ps(c + r * ldc + 16 * v);
      else
        acc[r][v] = _mm512_setzero_ps();
    }
  }
  for (int64_t k = 0; k < k_dim; ++k) {
    const float* wk = w + k * ldw;
    __m512 wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      wv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(load_mask, wk + 16 * v) : _mm512_loadu_ps(wk + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      __m512 av = _mm512_set1_ps(TRANS_A ? a[k * lda + r] : a[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, wv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? store_mask : static_cast<__mmask16>(0xFFFF);
      const int64_t at = r * ldc + 16 * v;
      __m512 out = acc[r][v];
      if constexpr (EPI == Epi::kSilu) {
        // h = z s and, for the backward, silu'(z) = s (1 + z (1 - s)), s = sigmoid(z)
        __m512 s = sigmoid512(out);
        if (pre != nullptr)
          _mm512_mask_storeu_ps(pre + at, m, _mm512_mul_ps(s, _mm512_fmadd_ps(out, _mm512_sub_ps(_mm512_set1_ps(1.0f), s), _mm512_set1_ps(1.0f))));
        out = _mm512_mul_ps(out, s);
      } else if constexpr (EPI == Epi::kRelu) {
        out = _mm512_max_ps(out, _mm512_setzero_ps());
      } else if constexpr (EPI == Epi::kReluGrad) {
        __m512 h = _mm512_maskz_loadu_ps(m, aux + at);
        out = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h, _mm512_setzero_ps(), _CMP_GT_OQ), out);
      } else if constexpr (EPI == Epi::kSiluGrad) {
        out = _mm512_mul_ps(out, _mm512_maskz_loadu_ps(m, aux + at));   // aux = silu'(z) saved by the forward
      }
      _mm512_mask_storeu_ps(c + at, m, out);
    }
  }
}

// Row-tail dispatch: a tile of exactly `rem` (< MR) rows.
template <int R, int NV, Epi EPI, Init INIT, bool TRANS_A>
inline void train_tail(int64_t rem, const float* a, int64_t lda, int64_t k_dim, const float* w, int64_t ldw,
                       const float* bias, float* c, int64_t ldc, float* pre, const float* aux, __mmask16 load_mask,
                       __mmask16 store_mask) {
  if constexpr (R > 0) {
    if (rem == R)
      train_tile<R, NV, EPI, INIT, TRANS_A>(a, lda, k_dim, w, ldw, bias, c, ldc, pre, aux, load_mask, store_mask);
    else
      train_tail<R - 1, NV, EPI, INIT, TRANS_A>(rem, a, lda, k_dim, w, ldw, bias, c, ldc, pre, aux, load_mask,
                                                store_mask);
  }
}

template <int MR, int NV, Epi EPI, Init INIT, bool TRANS_A>
void train_column_block(const float* a, int64_t lda, int64_t rows, int64_t k_dim, const float* w, int64_t ldw,
                        const float* bias, float* c, int64_t ldc, float* pre, const float* aux,
                        __mmask16 load_mask, __mmask16 store_mask) {
  int64_t i = 0;
  for (; i + MR <= rows; i += MR) {
    const float* ai = TRANS_A ? a + i : a + i * lda;
    train_tile<MR, NV, EPI, INIT, TRANS_A>(ai, lda, k_dim, w, ldw, bias, c + i * ldc, ldc,
                                           pre ? pre + i * ldc : nullptr, aux ? aux + i * ldc : nullptr,
                                           load_mask, store_mask);
  }
  if (i < rows) {
    const float* ai = TRANS_A ? a + i : a + i * lda;
    train_tail<MR - 1, NV, EPI, INIT, TRANS_A>(rows - i, ai, lda, k_dim, w, ldw, bias, c + i * ldc, ldc,
                                               pre ? pre + i * ldc : nullptr, aux ? aux + i * ldc : nullptr,
                                               load_mask, store_mask);
  }
}

// C[rows, n] = epi(init + A @ W) for the column blocks [block_begin, block_end) (balanced blocks
// of at most 4 vectors, as dense_layer). `padded_store`: C has room up to the next multiple of
// 16 columns and gets zeros there.
template <Epi EPI, Init INIT, bool TRANS_A>
void train_layer(const float* a, int64_t lda, int64_t rows, int64_t k_dim, const float* w, int64_t ldw, int64_t n,
                 const float* bias, float* c, int64_t ldc, float* pre, const float* aux, bool padded_store,
                 int64_t block_begin, int64_t block_end) {
  const int64_t n_vec = (n + 15) / 16;
  const int64_t n_blocks = (n_vec + 3) / 4;
  const int64_t base = n_vec / n_blocks, extra = n_vec % n_blocks;
  int64_t col = 0;
  for (int64_t blk = 0; blk < n_blocks && blk < block_end; ++blk) {
    const int64_t nv = base + (blk < extra ? 1 : 0);
    const int64_t cols = nv * 16 < n - col ? nv * 16 : n - col;
    if (blk >= block_begin) {
      const __mmask16 load_mask = tail_mask(cols - (nv - 1) * 16);
      const __mmask16 store_mask = padded_store ? static_cast<__mmask16>(0xFFFF) : load_mask;
      const float* wb = w + col;
      const float* bb = bias ? bias + col : nullptr;
      float* cb = c + col;
      float* pb = pre ? pre + col : nullptr;
      const float* xb = aux ? aux + col : nullptr;
      switch (nv) {
        case 4: train_column_block<6, 4, EPI, INIT, TRANS_A>(a, lda, rows, k_dim, wb, ldw, bb, cb, ldc, pb, xb, load_mask, store_mask); break;
        case 3: train_column_block<8, 3, EPI, INIT, TRANS_A>(a, lda, rows, k_dim, wb, ldw, bb, cb, ldc, pb, xb, load_mask, store_mask); break;
        case 2: train_column_block<12, 2, EPI, INIT, TRANS_A>(a, lda, rows, k_dim, wb, ldw, bb, cb, ldc, pb, xb, load_mask, store_mask); break;
        default: train_column_block<12, 1, EPI, INIT, TRANS_A>(a, lda, rows, k_dim, wb, ldw, bb, cb, ldc, pb, xb, load_mask, store_mask); break;
      }
    }
    col += cols;
  }
}

const float* member_x(const EnsembleTrainArgs& args, int64_t member) {
  return args.x_shared ? args.x : args.x + member * args.batch_pad * args.ld_x;
}

}  // namespace

void ensemble_forward_rows_avx512(const EnsembleTrainArgs& args, int64_t member, int64_t row_begin, int64_t row_end) {
  const MlpDesc& mlp = args.mlp;
  const int64_t rows = row_end - row_begin, B = args.batch_pad;
  const float* in = member_x(args, member) + row_begin * args.ld_x;
  int64_t ld_in = args.ld_x;
  for (int l = 0; l < mlp.n_layers; ++l) {
    const int64_t k_dim = mlp.dims[l], n = mlp.dims[l + 1], ld = args.ld[l];
    const float* w = mlp.w[l] + member * k_dim * n;   // [k, n]
    const float* b = mlp.b[l] + member * n;           // [n]
    const int64_t offset = (member * B + row_begin) * ld;
    if (l + 1 == mlp.n_layers) {
      float* c = args.out + offset;
      if (n == 1)
        dot_column<Act::kNone>(in, ld_in, rows, k_dim, w, b, c, ld);
      else
        train_layer<Epi::kNone, Init::kBias, false>(in, ld_in, rows, k_dim, w, n, n, b, c, ld, nullptr, nullptr,
                                                    true, 0, INT64_MAX);
      break;
    }
    float* c = args.h[l] + offset;
    if (mlp.hidden == Activation::kSilu)
      train_layer<Epi::kSilu, Init::kBias, false>(in, ld_in, rows, k_dim, w, n, n, b, c, ld, args.z[l] + offset,
                                                  nullptr, true, 0, INT64_MAX);
    else
      train_layer<Epi::kRelu, Init::kBias, false>(in, ld_in, rows, k_dim, w, n, n, b, c, ld, nullptr, nullptr, true,
                                                  0, INT64_MAX);
    in = c;
    ld_in = ld;
  }
}

void ensemble_backward_dz_rows_avx512(const EnsembleTrainArgs& args, int64_t member, int64_t row_begin,
                                      int64_t row_end) {
  const MlpDesc& mlp = args.mlp;
  const int64_t rows = row_end - row_begin, B = args.batch_pad;
  for (int l = mlp.n_layers - 1; l >= 1; --l) {
    // dz_{l-1} = (dz_l W_l^T) * act'(z_{l-1}):  [rows, n_l] x [n_l, n_{l-1}]
    const int64_t k_dim = mlp.dims[l + 1], n = mlp.dims[l];
    const float* a = args.dz[l] + (member * B + row_begin) * args.ld[l];
    const float* wt = args.wt[l] + member * k_dim * n;                 // [n_l, n_{l-1}]
    const int64_t offset = (member * B + row_begin) * args.ld[l - 1];
    float* c = args.dz[l - 1] + offset;
    if (mlp.hidden == Activation::kSilu)
      train_layer<Epi::kSiluGrad, Init::kZero, false>(a, args.ld[l], rows, k_dim, wt, n, n, nullptr, c,
                                                      args.ld[l - 1], nullptr, args.z[l - 1] + offset, true, 0,
                                                      INT64_MAX);
    else
      train_layer<Epi::kReluGrad, Init::kZero, false>(a, args.ld[l], rows, k_dim, wt, n, n, nullptr, c,
                                                      args.ld[l - 1], nullptr, args.h[l - 1] + offset, true, 0,
                                                      INT64_MAX);
  }
}

void ensemble_backward_params_avx512(const EnsembleTrainArgs& args, int layer, int64_t member, int64_t block) {
  const MlpDesc& mlp = args.mlp;
  const int64_t B = args.batch_pad, k_in = mlp.dims[layer], n = mlp.dims[layer + 1], ld = args.ld[layer];
  const float* dz = args.dz[layer] + member * B * ld;   // [B_pad, ld]
  const float* h;                                       // [B_pad, ld_h] input of the layer
  int64_t ld_h;
  if (layer == 0) {
    h = member_x(args, member);
    ld_h = args.ld_x;
  } else {
    h = args.h[layer - 1] + member * B * args.ld[layer - 1];
    ld_h = args.ld[layer - 1];
  }
  float* gw = args.grad_w[layer] ? args.grad_w[layer] + member * k_in * n : nullptr;   // [k_in, n]
  float* gb = args.grad_b[layer] ? args.grad_b[layer] + member * n : nullptr;         // [n]
  if (n == 1) {
    // single output (a critic's Q head): grad_w[k] = sum_b h[b, k] dz[b], vectorized over k
    if (gw != nullptr) {
      for (int64_t k = 0; k < k_in; k += 64) {
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int64_t b = 0; b < B; ++b) {
          const __m512 d = _mm512_set1_ps(dz[b * ld]);
#pragma GCC unroll 4
          for (int v = 0; v < 4; ++v) {
            const int64_t kk = k + 16 * v;
            if (kk < k_in)
              acc[v] = _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(tail_mask(k_in - kk), h + b * ld_h + kk), acc[v]);
          }
        }
        for (int v = 0; v < 4; ++v) {
          const int64_t kk = k + 16 * v;
          if (kk < k_in) _mm512_mask_storeu_ps(gw + kk, tail_mask(k_in - kk), acc[v]);
        }
      }
    }
    if (gb != nullptr) {
      float sum = 0.0f;
      for (int64_t b = 0; b < B; ++b) sum += dz[b * ld];
      gb[0] = sum;
    }
    return;
  }
  if (gw != nullptr)  // grad_w = h^T dz: [k_in, B_pad] x [B_pad, n]
    train_layer<Epi::kNone, Init::kZero, true>(h, ld_h, k_in, B, dz, ld, n, nullptr, gw, n, nullptr, nullptr, false,
                                               block, block + 1);
  if (gb != nullptr) {
    // this block's columns of grad_b = sum over rows of dz
    const int64_t n_vec = (n + 15) / 16, n_blocks = (n_vec + 3) / 4;
    const int64_t base = n_vec / n_blocks, extra = n_vec % n_blocks;
    int64_t col = 0;
    for (int64_t blk = 0; blk < block; ++blk) col += 16 * (base + (blk < extra ? 1 : 0));
    const int64_t block_cols = 16 * (base + (block < extra ? 1 : 0));
    const int64_t cols = block_cols < n - col ? block_cols : n - col;
    for (int64_t j = 0; j < cols; j += 16) {
      const __mmask16 m = tail_mask(cols - j);
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
      int64_t b = 0;
      for (; b + 2 <= B; b += 2) {
        acc0 = _mm512_add_ps(acc0, _mm512_maskz_loadu_ps(m, dz + b * ld + col + j));
        acc1 = _mm512_add_ps(acc1, _mm512_maskz_loadu_ps(m, dz + (b + 1) * ld + col + j));
      }
      if (b < B) acc0 = _mm512_add_ps(acc0, _mm512_maskz_loadu_ps(m, dz + b * ld + col + j));
      _mm512_mask_storeu_ps(gb + col + j, m, _mm512_add_ps(acc0, acc1));
    }
  }
}

void ensemble_backward_grad_x_rows_avx512(const EnsembleTrainArgs& args, int64_t member, int64_t row_begin,
                                          int64_t row_end) {
  const MlpDesc& mlp = args.mlp;
  const int64_t rows = row_end - row_begin, B = args.batch_pad, k_dim = mlp.dims[1], n = mlp.dims[0];
  const int64_t first = args.x_shared ? 0 : member, last = args.x_shared ? args.members : member + 1;
  float* c = args.grad_x + ((args.x_shared ? 0 : member * B) + row_begin) * args.ld_gx;
  for (int64_t e = first; e < last; ++e) {
    const float* a = args.dz[0] + (e * B + row_begin) * args.ld[0];
    const float* wt = args.wt[0] + e * k_dim * n;   // [n_1, in]
    if (e == first)
      train_layer<Epi::kNone, Init::kZero, false>(a, args.ld[0], rows, k_dim, wt, n, n, nullptr, c, args.ld_gx,
                                                  nullptr, nullptr, true, 0, INT64_MAX);
    else
      train_layer<Epi::kNone, Init::kLoad, false>(a, args.ld[0], rows, k_dim, wt, n, n, nullptr, c, args.ld_gx,
                                                  nullptr, nullptr, true, 0, INT64_MAX);
  }
}

}  // namespace pyscorepen::cpu

#pragma GCC pop_options
#endif  // defined(__x86_64__)
