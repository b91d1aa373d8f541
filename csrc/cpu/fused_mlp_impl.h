// ISA-independent body of the fused-MLP CPU kernels, written once over a vector-traits
// struct `V` and instantiated by one translation unit per ISA:
//   csrc/cpu/fused_mlp_avx512.cpp  V = Avx512 (16 lanes, __mmask16 masks, 32 registers)
//   csrc/cpu/fused_mlp_avx2.cpp    V = Avx2   (8 lanes, vector masks, 16 registers)
//
// Include it only after the ISA's `#pragma GCC target` and the traits struct, inside
// `namespace pyscorepen::cpu`: everything here has internal linkage (anonymous namespace),
// so no code compiled for one ISA can be merged into another ISA's (or baseline) code.
// No std headers: only <cstdint> types and the traits' intrinsics.
//
// The traits struct `V` provides (Vec = vector of V::kWidth floats, Mask = lane predicate):
//   kWidth, kMaxVectors (widest column block in vectors), rows<NV>() (row tile of a block of
//   NV vectors: MR * NV accumulators + NV weight vectors + 1 broadcast fit the registers),
//   kFreeMask (a masked load/store costs the same as a plain one: no separate full-width code),
//   zero set1 loadu storeu load(mask, p) (masked-off lanes read as 0, never touched)
//   store(mask, p, v), tail(valid) (first min(valid, kWidth) lanes), add sub mul div min max,
//   fmadd(a, b, c) = a b + c, fnmadd(a, b, c) = c - a b, abs, or_sign(magnitude, x) (magnitude
//   with the sign bit of x), round (to nearest), ldexp(p, n) (p 2^n, n integral in [-126, 127]),
//   split(u, &e, &m) (u = m 2^e, m in [1, 2), u > 0 finite normal), rcp (~12+ bit 1 / x),
//   gt / lt / eq -> Mask, select(mask, if_true, if_false), reduce_add, first (lane 0).
//
// GEMM: a register-blocked broadcast-A / vector-B micro-kernel working directly on the
// row-major [in, out] weights (no packing): an MR x (kWidth * NV) tile of the output lives in
// accumulators initialised with the bias, K is walked fully, and the activation epilogue
// (none / SiLU / ReLU, a template parameter) is applied in registers before the store.
// The column blocks of a layer are balanced (e.g. 200 = 13 AVX-512 vectors -> 4+3+3+3) and
// chunk rows are padded to kRowPad, so neither a row nor a vector tail loop is needed (the
// last vector of a block is masked when the layer width is not a multiple of kWidth). A layer
// with a single output (a critic's Q head) is a dot product per row instead.

namespace {

// ---------------------------------------------------------------- vector math
template <bool B>
struct Bool {
  static constexpr bool value = B;
};

// exp(x), Cephes expf polynomial (rel. error ~1e-7), 2^n applied with ldexp.
template <class V>
inline typename V::Vec vexp(typename V::Vec x) {
  x = V::min(V::max(x, V::set1(-87.3f)), V::set1(88.3f));
  auto n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  auto r = V::fnmadd(n, V::set1(0.693359375f), x);
  r = V::fnmadd(n, V::set1(-2.12194440e-4f), r);
  auto p = V::set1(1.9875691500e-4f);
  p = V::fmadd(p, r, V::set1(1.3981999507e-3f));
  p = V::fmadd(p, r, V::set1(8.3334519073e-3f));
  p = V::fmadd(p, r, V::set1(4.1665795894e-2f));
  p = V::fmadd(p, r, V::set1(1.6666665459e-1f));
  p = V::fmadd(p, r, V::set1(5.0000001201e-1f));
  p = V::fmadd(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
  return V::ldexp(p, n);
}

// log(u) for finite normal u > 0, Cephes logf polynomial on the mantissa in [sqrt(.5), sqrt(2)).
template <class V>
inline typename V::Vec vlog(typename V::Vec u) {
  typename V::Vec e, m;
  V::split(u, &e, &m);  // u = m 2^e, m in [1, 2)
  auto big = V::gt(m, V::set1(1.41421356f));
  m = V::select(big, V::mul(m, V::set1(0.5f)), m);
  e = V::select(big, V::add(e, V::set1(1.0f)), e);
  auto x = V::sub(m, V::set1(1.0f));
  auto z = V::mul(x, x);
  auto y = V::set1(7.0376836292e-2f);
  y = V::fmadd(y, x, V::set1(-1.1514610310e-1f));
  y = V::fmadd(y, x, V::set1(1.1676998740e-1f));
  y = V::fmadd(y, x, V::set1(-1.2420140846e-1f));
  y = V::fmadd(y, x, V::set1(1.4249322787e-1f));
  y = V::fmadd(y, x, V::set1(-1.6668057665e-1f));
  y = V::fmadd(y, x, V::set1(2.0000714765e-1f));
  y = V::fmadd(y, x, V::set1(-2.4999993993e-1f));
  y = V::fmadd(y, x, V::set1(3.3333331174e-1f));
  y = V::mul(V::mul(y, x), z);
  y = V::fmadd(e, V::set1(-2.12194440e-4f), y);
  y = V::fnmadd(z, V::set1(0.5f), y);
  return V::fmadd(e, V::set1(0.693359375f), V::add(x, y));
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(t) = log(1 + t) * t / ((1 + t) - 1).
template <class V>
inline typename V::Vec vsoftplus(typename V::Vec x) {
  auto t = vexp<V>(V::sub(V::zero(), V::abs(x)));  // (0, 1]
  auto u = V::add(t, V::set1(1.0f));
  auto d = V::sub(u, V::set1(1.0f));
  auto tiny = V::eq(d, V::zero());
  auto l1p = V::mul(vlog<V>(u), V::div(t, V::select(tiny, t, d)));
  l1p = V::select(tiny, t, l1p);
  return V::add(V::max(x, V::zero()), l1p);
}

// 1 / (1 + exp(-x)); 1 / d by the approximate reciprocal + one Newton step (rel. error ~1e-7,
// cheaper than a division in a GEMM epilogue).
template <class V>
inline typename V::Vec vsigmoid(typename V::Vec x) {
  auto denom = V::add(vexp<V>(V::sub(V::zero(), x)), V::set1(1.0f));
  auto inv = V::rcp(denom);
  return V::mul(inv, V::fnmadd(denom, inv, V::set1(2.0f)));
}

// silu(x) = x * sigmoid(x)
template <class V>
inline typename V::Vec vsilu(typename V::Vec x) {
  return V::mul(x, vsigmoid<V>(x));
}

// tanh(x), Cephes tanhf: odd polynomial for |x| < 0.625, else 1 - 2 / (exp(2|x|) + 1) with the
// sign of x (rel. error ~1e-7; large |x| round to exactly +-1, vexp saturates instead of overflowing).
template <class V>
inline typename V::Vec vtanh(typename V::Vec x) {
  auto ax = V::abs(x);
  auto z = V::mul(x, x);
  auto p = V::set1(-5.70498872745e-3f);
  p = V::fmadd(p, z, V::set1(2.06390887954e-2f));
  p = V::fmadd(p, z, V::set1(-5.37397155531e-2f));
  p = V::fmadd(p, z, V::set1(1.33314422036e-1f));
  p = V::fmadd(p, z, V::set1(-3.33332819422e-1f));
  auto small = V::fmadd(V::mul(p, z), x, x);
  auto s = V::add(vexp<V>(V::add(ax, ax)), V::set1(1.0f));
  auto big = V::or_sign(V::sub(V::set1(1.0f), V::div(V::set1(2.0f), s)), x);  // sign(x) tanh(|x|)
  return V::select(V::lt(ax, V::set1(0.625f)), small, big);
}

enum class Act { kNone, kSilu, kRelu };  // compile-time twin of cpu::Activation

template <class V, Act ACT>
inline typename V::Vec activate(typename V::Vec x) {
  if constexpr (ACT == Act::kSilu) return vsilu<V>(x);
  if constexpr (ACT == Act::kRelu) return V::max(x, V::zero());
  return x;
}

// Last vector of a block: masked (TAIL) or plain.
template <class V, bool TAIL>
inline typename V::Vec load_last(typename V::Mask mask, const float* p) {
  if constexpr (TAIL) return V::load(mask, p);
  return V::loadu(p);
}
template <class V, bool TAIL>
inline void store_last(typename V::Mask mask, float* p, typename V::Vec v) {
  if constexpr (TAIL)
    V::store(mask, p, v);
  else
    V::storeu(p, v);
}

// fn(Bool<tail>{}): the masked code when the last vector is partial (or masks are free), else
// the plain one.
template <class V, class Fn>
inline void with_tail(bool tail, Fn fn) {
  if constexpr (V::kFreeMask) {
    fn(Bool<true>{});
  } else {
    if (tail)
      fn(Bool<true>{});
    else
      fn(Bool<false>{});
  }
}

// Balanced column blocks of a layer with n outputs: n_blocks blocks of `base` or `base + 1`
// vectors (the first `extra` ones one vector wider).
struct Blocks {
  int64_t n_vec, n_blocks, base, extra;
};
template <class V>
inline Blocks column_split(int64_t n) {
  Blocks s;
  s.n_vec = (n + V::kWidth - 1) / V::kWidth;
  s.n_blocks = (s.n_vec + V::kMaxVectors - 1) / V::kMaxVectors;
  s.base = s.n_vec / s.n_blocks;
  s.extra = s.n_vec % s.n_blocks;
  return s;
}

template <class V>
int64_t column_blocks(int64_t n) {
  return n <= 1 ? 1 : column_split<V>(n).n_blocks;
}

// ---------------------------------------------------------------- GEMM tiles
// acc[MR][NV] += A[MR, k_dim] @ W[k_dim, W NV]: A row-major (a[r * lda + k]) or, with TRANS_A,
// column-major (a[k * lda + r]); W's last vector is loaded with `mask` when TAIL. The compiler
// unrolls the k loop V::kUnrollK times (the same FMAs in the same order per accumulator, so the
// result does not depend on it); the ISA structs say what was measured.
template <class V, int MR, int NV, bool TRANS_A, bool TAIL>
inline void accumulate_k(typename V::Vec (&acc)[MR][NV], const float* __restrict a, int64_t lda, int64_t k_dim,
                         const float* __restrict w, int64_t ldw, typename V::Mask mask) {
  constexpr int W = V::kWidth;
  const auto step = [&](int64_t k) {
    const float* wk = w + k * ldw;
    typename V::Vec wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) wv[v] = v == NV - 1 ? load_last<V, TAIL>(mask, wk + W * v) : V::loadu(wk + W * v);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      auto av = V::set1(TRANS_A ? a[k * lda + r] : a[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(av, wv[v], acc[r][v]);
    }
  };
  if constexpr (V::kUnrollK == 4) {
#pragma GCC unroll 4
    for (int64_t k = 0; k < k_dim; ++k) step(k);
  } else {
    static_assert(V::kUnrollK == 1, "kUnrollK: 1 or 4");
    for (int64_t k = 0; k < k_dim; ++k) step(k);
  }
}

// C[MR, W NV] = act(A[MR, K] @ W[K, W NV] + bias); the last vector uses `mask` when TAIL.
template <class V, int MR, int NV, Act ACT, bool TAIL>
inline void micro_tile(const float* __restrict a, int64_t lda, int64_t k_dim, const float* __restrict w,
                       int64_t ldw, const float* __restrict bias, float* __restrict c, int64_t ldc,
                       typename V::Mask mask) {
  constexpr int W = V::kWidth;
  typename V::Vec acc[MR][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    auto bv = v == NV - 1 ? load_last<V, TAIL>(mask, bias + W * v) : V::loadu(bias + W * v);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) acc[r][v] = bv;
  }
  accumulate_k<V, MR, NV, false, TAIL>(acc, a, lda, k_dim, w, ldw, mask);
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      auto out = activate<V, ACT>(acc[r][v]);
      if (v == NV - 1)
        store_last<V, TAIL>(mask, c + r * ldc + W * v, out);
      else
        V::storeu(c + r * ldc + W * v, out);
    }
  }
}

template <class V, int NV, Act ACT>
inline void column_block(const float* a, int64_t lda, int64_t rows, int64_t k_dim, const float* w, int64_t ldw,
                         const float* bias, float* c, int64_t ldc, typename V::Mask mask, bool tail) {
  constexpr int MR = V::template rows<NV>();
  static_assert(kRowPad % MR == 0, "row tile must divide the row padding");
  with_tail<V>(tail, [&](auto tail_tag) {
    for (int64_t i = 0; i < rows; i += MR)
      micro_tile<V, MR, NV, ACT, decltype(tail_tag)::value>(a + i * lda, lda, k_dim, w, ldw, bias, c + i * ldc, ldc,
                                                            mask);
  });
}

// C[rows, 1] = act(A[rows, k] @ w[k] + bias[0]): one dot product per row, 4 rows at a time
// (a full column tile would spend all but one lane on nothing, e.g. a critic's Q head).
template <class V, Act ACT>
void dot_column(const float* a, int64_t lda, int64_t rows, int64_t k_dim, const float* w, const float* bias,
                float* c, int64_t ldc) {
  constexpr int kRows = 4;
  static_assert(kRowPad % kRows == 0, "row group must divide the row padding");
  for (int64_t i = 0; i < rows; i += kRows) {
    typename V::Vec acc[kRows];
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) acc[r] = V::zero();
    for (int64_t k = 0; k < k_dim; k += V::kWidth) {
      auto m = V::tail(k_dim - k);
      auto wv = V::load(m, w + k);
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) acc[r] = V::fmadd(V::load(m, a + (i + r) * lda + k), wv, acc[r]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      c[(i + r) * ldc] = V::first(activate<V, ACT>(V::set1(V::reduce_add(acc[r]) + bias[0])));
    }
  }
}

// Calls block(nv_tag, col, cols, mask, tail) for the balanced column blocks of a layer with n
// outputs whose index is in [block_begin, block_end); nv_tag is Bool-like with ::value = NV.
template <int N>
struct Int {
  static constexpr int value = N;
};
template <class V, class Fn>
inline void for_column_blocks(int64_t n, int64_t block_begin, int64_t block_end, Fn block) {
  const Blocks s = column_split<V>(n);
  int64_t col = 0;
  for (int64_t blk = 0; blk < s.n_blocks && blk < block_end; ++blk) {
    const int64_t nv = s.base + (blk < s.extra ? 1 : 0);
    const int64_t cols = nv * V::kWidth < n - col ? nv * V::kWidth : n - col;
    if (blk >= block_begin) {
      const int64_t last = cols - (nv - 1) * V::kWidth;
      const auto mask = V::tail(last);
      const bool tail = last != V::kWidth;
      switch (nv) {
        case 4: if constexpr (V::kMaxVectors >= 4) block(Int<4>{}, col, cols, mask, tail); break;
        case 3: if constexpr (V::kMaxVectors >= 3) block(Int<3>{}, col, cols, mask, tail); break;
        case 2: if constexpr (V::kMaxVectors >= 2) block(Int<2>{}, col, cols, mask, tail); break;
        default: block(Int<1>{}, col, cols, mask, tail); break;
      }
    }
    col += cols;
  }
}

// C[rows, n] = act(A[rows, k] @ W[k, n] + bias), rows a multiple of kRowPad.
// Loop order: column block outer (its W panel, <= k * W * kMaxVectors * 4 B, stays in L1/L2),
// row tiles inner (A streams from L2).
template <class V, Act ACT>
void dense_layer(const float* a, int64_t lda, int64_t rows, int64_t k_dim, const float* w, int64_t ldw, int64_t n,
                 const float* bias, float* c, int64_t ldc) {
  if (n == 1) {
    dot_column<V, ACT>(a, lda, rows, k_dim, w, bias, c, ldc);
    return;
  }
  for_column_blocks<V>(n, 0, INT64_MAX, [&](auto nv_tag, int64_t col, int64_t, typename V::Mask mask, bool tail) {
    column_block<V, decltype(nv_tag)::value, ACT>(a, lda, rows, k_dim, w + col, ldw, bias + col, c + col, ldc, mask,
                                                  tail);
  });
}

template <class V>
void dense_layer(const float* a, int64_t lda, int64_t rows, int64_t k_dim, const float* w, int64_t ldw, int64_t n,
                 const float* bias, float* c, int64_t ldc, Activation act) {
  switch (act) {
    case Activation::kSilu: dense_layer<V, Act::kSilu>(a, lda, rows, k_dim, w, ldw, n, bias, c, ldc); break;
    case Activation::kRelu: dense_layer<V, Act::kRelu>(a, lda, rows, k_dim, w, ldw, n, bias, c, ldc); break;
    default: dense_layer<V, Act::kNone>(a, lda, rows, k_dim, w, ldw, n, bias, c, ldc); break;
  }
}

// Runs member `member` of `mlp` on x [rows, ld_x] (its first dims[0] columns); returns the
// buffer holding the output (h0 or h1, ping-pong, [rows, ld_h]; x itself when there are no
// layers) and its leading dimension in *ld_out. Hidden layers apply mlp.hidden.
template <class V>
const float* run_mlp(const MlpDesc& mlp, int64_t member, const float* x, int64_t ld_x, int64_t rows, float* h0,
                     float* h1, int64_t ld_h, int64_t* ld_out) {
  const float* in = x;
  int64_t ld_in = ld_x;
  float* out = h0;
  for (int l = 0; l < mlp.n_layers; ++l) {
    const int64_t k_dim = mlp.dims[l], n = mlp.dims[l + 1], ld_w = mlp.ld_w[l] ? mlp.ld_w[l] : n;
    const float* w = mlp.w[l] + member * k_dim * ld_w;  // [k, n] (row stride ld_w)
    const float* b = mlp.b[l] + member * n;             // [n]
    dense_layer<V>(in, ld_in, rows, k_dim, w, ld_w, n, b, out, ld_h,
                   l + 1 != mlp.n_layers ? mlp.hidden : Activation::kNone);
    in = out;
    ld_in = ld_h;
    out = out == h0 ? h1 : h0;
  }
  *ld_out = ld_in;
  return in;
}

// sum_j y[j]^2 over the first n entries of a row.
template <class V>
inline float row_sumsq(const float* y, int64_t n) {
  auto acc = V::zero();
  for (int64_t j = 0; j < n; j += V::kWidth) {
    auto v = V::load(V::tail(n - j), y + j);
    acc = V::fmadd(v, v, acc);
  }
  return V::reduce_add(acc);
}

// Tanh-Gaussian head of one row (SAC, Haarnoja et al. 2018, App. C). From the actor output
// out = [mu | log_std] ([2A]) and eps ([A]): log_std clamped to [lo, hi], u = mu + exp(log_std) eps,
// writes a = scale tanh(u) + offset to action ([A]) and returns the log density in [-1, 1]^A
//   log pi = sum_j [ -eps_j^2 / 2 - log_std_j - log(2 pi) / 2 - 2 (log 2 - u_j - softplus(-2 u_j)) ].
template <class V>
inline float tanh_gaussian_head(const float* out, const float* eps, int64_t A, const float* scale,
                                const float* offset, typename V::Vec lo, typename V::Vec hi, float* action) {
  const auto half_log_2pi = V::set1(0.918938533204672742f);
  const auto log_2 = V::set1(0.693147180559945309f);
  float log_pi = 0.0f;
  for (int64_t j = 0; j < A; j += V::kWidth) {
    auto m = V::tail(A - j);
    auto mu = V::load(m, out + j);
    auto log_std = V::load(m, out + A + j);
    auto e = V::load(m, eps + j);
    log_std = V::min(hi, V::max(lo, log_std));  // NaN (second operand) propagates
    auto u = V::fmadd(vexp<V>(log_std), e, mu);
    auto a = V::fmadd(vtanh<V>(u), V::load(m, scale + j), V::load(m, offset + j));
    V::store(m, action + j, a);
    // neg_gauss = -log N(u; mu, std) = eps^2 / 2 + log_std + log(2 pi) / 2; squash = log 2 - u - softplus(-2 u)
    auto neg_gauss = V::fmadd(V::mul(e, e), V::set1(0.5f), V::add(log_std, half_log_2pi));
    auto squash = V::sub(V::sub(log_2, u), vsoftplus<V>(V::mul(u, V::set1(-2.0f))));
    auto term = V::fnmadd(V::set1(2.0f), squash, V::sub(V::zero(), neg_gauss));
    log_pi += V::reduce_add(V::select(m, term, V::zero()));
  }
  return log_pi;
}

// ------------------------------------------------------------------ rollout
template <class V>
void rollout_rows(const RolloutArgs& args, int64_t row_begin, int64_t row_end, float* scratch) {
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
    const float* out = run_mlp<V>(args.ensemble, e, x, lay.ld_x, lay.m_pad, h0, h1, lay.ld_h, &ld_out);  // [m_pad, 2Y]
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t row = row_begin + i;
      const float* mean = out + i * ld_out;    // [Y]
      const float* logvar = mean + Y;          // [Y]
      const bool sampled = args.member_index[row] == e;
      const float* noise = args.noise + row * Y;
      auto sumsq = V::zero();
      for (int64_t j = 0; j < Y; j += V::kWidth) {
        auto m = V::tail(Y - j);
        auto hi = V::load(m, args.max_logvar + j);
        auto lo = V::load(m, args.min_logvar + j);
        auto lv = V::load(m, logvar + j);
        lv = V::sub(hi, vsoftplus<V>(V::sub(hi, lv)));
        lv = V::add(lo, vsoftplus<V>(V::sub(lv, lo)));
        auto sd = V::select(m, vexp<V>(V::mul(lv, V::set1(0.5f))), V::zero());
        sumsq = V::fmadd(sd, sd, sumsq);
        if (sampled) V::store(m, y + j, V::fmadd(sd, V::load(m, noise + j), V::load(m, mean + j)));
      }
      const float norm = _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(V::reduce_add(sumsq))));
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
    const float* out = run_mlp<V>(args.score, 0, x, lay.ld_x, lay.m_pad, h0, h1, lay.ld_h, &ld_out);  // [m_pad, D]
    const int64_t n = args.score.dims[args.score.n_layers];
    for (int64_t i = 0; i < rows; ++i) args.score_penalty[row_begin + i] = row_sumsq<V>(out + i * ld_out, n);
  } else {
    for (int64_t i = 0; i < rows; ++i) args.score_penalty[row_begin + i] = 0.0f;
  }
}

// ------------------------------------------------------------ score penalty
template <class V>
void score_rows(const ScoreArgs& args, int64_t row_begin, int64_t row_end, float* scratch) {
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
  const float* out = run_mlp<V>(args.mlp, 0, x, lay.ld_x, lay.m_pad, h0, h1, lay.ld_h, &ld_out);  // [m_pad, out]
  const int64_t n = args.mlp.dims[args.mlp.n_layers];
  for (int64_t i = 0; i < rows; ++i) args.out[row_begin + i] = row_sumsq<V>(out + i * ld_out, n);
}

// --------------------------------------------------------------- soft value
template <class V>
void soft_value_rows(const SoftValueArgs& args, int64_t row_begin, int64_t row_end, float* scratch) {
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
  const float* head = run_mlp<V>(args.actor, 0, x, lay.ld_x, lay.m_pad, h0, h1, lay.ld_h, &ld_out);
  const auto lo = V::set1(args.log_std_min), hi = V::set1(args.log_std_max);
  for (int64_t i = 0; i < rows; ++i)
    log_pi[i] = tanh_gaussian_head<V>(head + i * ld_out, args.noise + (row_begin + i) * A, A, args.action_scale,
                                      args.action_offset, lo, hi, x + i * lay.ld_x + S);

  // Critics on cat(s, a), one member at a time, with a running min over members (clipped
  // double Q, Fujimoto et al. 2018). NaN propagates as in torch.amin.
  for (int64_t k = 0; k < args.critics; ++k) {
    const float* q = run_mlp<V>(args.critic, k, x, lay.ld_x, lay.m_pad, h0, h1, lay.ld_h, &ld_out);  // [m_pad, 1]
    for (int64_t i = 0; i < rows; ++i) {
      const float v = q[i * ld_out];
      if (k == 0 || v < out[i] || v != v) out[i] = v;
    }
  }
  // V(s) = min_k Q_k(s, a) - alpha log pi(a|s)  (SAC Eq. 3)
  for (int64_t i = 0; i < rows; ++i) out[i] -= args.alpha * log_pi[i];
}

// ------------------------------------------------------ ensemble MLP training
// Epilogue of a training GEMM tile: forward activations (SiLU may also store z), or the
// activation derivative of the backward (dz = dh * act'(.), `aux` = saved h (ReLU) or z (SiLU)).
enum class Epi { kNone, kSilu, kRelu, kReluGrad, kSiluGrad };
// Accumulator start: the bias (forward), zero, or the current C (sum over members).
enum class Init { kBias, kZero, kLoad };

// C[MR, W NV] = epi(init + A[MR, K] @ W[K, W NV]); A is row-major (a[r * lda + k]) or, with
// TRANS_A, column-major (a[k * lda + r]: the weight gradient h^T dz reads h [batch, in] this
// way). W's last vector is loaded with `load_mask` (when TAIL), C's last vector stored with
// `store_mask` (full in a padded buffer: the masked-off lanes are exact zeros there). `pre`
// (SiLU forward: receives silu'(z)) and `aux` (gradient epilogues: saved h for ReLU, silu'(z)
// for SiLU) are laid out like C.
template <class V, int MR, int NV, Epi EPI, Init INIT, bool TRANS_A, bool TAIL>
inline void train_tile(const float* __restrict a, int64_t lda, int64_t k_dim, const float* __restrict w,
                       int64_t ldw, const float* __restrict bias, float* __restrict c, int64_t ldc,
                       float* __restrict pre, const float* __restrict aux, typename V::Mask load_mask,
                       typename V::Mask store_mask) {
  constexpr int W = V::kWidth;
  typename V::Vec acc[MR][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      if constexpr (INIT == Init::kBias)
        acc[r][v] = v == NV - 1 ? load_last<V, TAIL>(load_mask, bias + W * v) : V::loadu(bias + W * v);
      else if constexpr (INIT == Init::kLoad)
        acc[r][v] = v == NV - 1 ? load_last<V, TAIL>(store_mask, c + r * ldc + W * v) : V::loadu(c + r * ldc + W * v);
      else
        acc[r][v] = V::zero();
    }
  }
  if constexpr (EPI == Epi::kReluGrad || EPI == Epi::kSiluGrad) {
    // The epilogue reads the tile's saved activations, written by the forward long before and
    // out of cache at thousands of rows: request them now, so the k loop hides the miss (perf,
    // B = 3 840 critics: the epilogue was 31 % of the dz chain tiles' time, 16 % with this).
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
      for (int col = 0; col < NV * W; col += 16) __builtin_prefetch(aux + r * ldc + col, 0, 3);
  }
  accumulate_k<V, MR, NV, TRANS_A, TAIL>(acc, a, lda, k_dim, w, ldw, load_mask);
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const bool last = v == NV - 1;
      const int64_t at = r * ldc + W * v;
      auto out = acc[r][v];
      if constexpr (EPI == Epi::kSilu) {
        // h = z s and, for the backward, silu'(z) = s (1 + z (1 - s)), s = sigmoid(z)
        auto s = vsigmoid<V>(out);
        if (pre != nullptr) {
          auto grad = V::mul(s, V::fmadd(out, V::sub(V::set1(1.0f), s), V::set1(1.0f)));
          if (last)
            store_last<V, TAIL>(store_mask, pre + at, grad);
          else
            V::storeu(pre + at, grad);
        }
        out = V::mul(out, s);
      } else if constexpr (EPI == Epi::kRelu) {
        out = V::max(out, V::zero());
      } else if constexpr (EPI == Epi::kReluGrad) {
        auto h = last ? load_last<V, TAIL>(store_mask, aux + at) : V::loadu(aux + at);
        out = V::select(V::gt(h, V::zero()), out, V::zero());
      } else if constexpr (EPI == Epi::kSiluGrad) {
        out = V::mul(out, last ? load_last<V, TAIL>(store_mask, aux + at) : V::loadu(aux + at));  // silu'(z)
      }
      if (last)
        store_last<V, TAIL>(store_mask, c + at, out);
      else
        V::storeu(c + at, out);
    }
  }
}

// Row-tail dispatch: a tile of exactly `rem` (< MR) rows.
template <class V, int R, int NV, Epi EPI, Init INIT, bool TRANS_A, bool TAIL>
inline void train_tail(int64_t rem, const float* a, int64_t lda, int64_t k_dim, const float* w, int64_t ldw,
                       const float* bias, float* c, int64_t ldc, float* pre, const float* aux,
                       typename V::Mask load_mask, typename V::Mask store_mask) {
  if constexpr (R > 0) {
    if (rem == R)
      train_tile<V, R, NV, EPI, INIT, TRANS_A, TAIL>(a, lda, k_dim, w, ldw, bias, c, ldc, pre, aux, load_mask,
                                                     store_mask);
    else
      train_tail<V, R - 1, NV, EPI, INIT, TRANS_A, TAIL>(rem, a, lda, k_dim, w, ldw, bias, c, ldc, pre, aux,
                                                         load_mask, store_mask);
  }
}

template <class V, int NV, Epi EPI, Init INIT, bool TRANS_A, bool TAIL>
void train_column_block(const float* a, int64_t lda, int64_t rows, int64_t k_dim, const float* w, int64_t ldw,
                        const float* bias, float* c, int64_t ldc, float* pre, const float* aux,
                        typename V::Mask load_mask, typename V::Mask store_mask) {
  constexpr int MR = V::template rows<NV>();
  int64_t i = 0;
  for (; i + MR <= rows; i += MR) {
    const float* ai = TRANS_A ? a + i : a + i * lda;
    train_tile<V, MR, NV, EPI, INIT, TRANS_A, TAIL>(ai, lda, k_dim, w, ldw, bias, c + i * ldc, ldc,
                                                    pre ? pre + i * ldc : nullptr, aux ? aux + i * ldc : nullptr,
                                                    load_mask, store_mask);
  }
  if (i < rows) {
    const float* ai = TRANS_A ? a + i : a + i * lda;
    train_tail<V, MR - 1, NV, EPI, INIT, TRANS_A, TAIL>(rows - i, ai, lda, k_dim, w, ldw, bias, c + i * ldc, ldc,
                                                        pre ? pre + i * ldc : nullptr, aux ? aux + i * ldc : nullptr,
                                                        load_mask, store_mask);
  }
}

// C[rows, n] = epi(init + A @ W) for the column blocks [block_begin, block_end) (balanced blocks
// of at most kMaxVectors vectors, as dense_layer). `padded_store`: C's rows are ldc wide (a
// multiple of 16 columns) and get zeros past n.
template <class V, Epi EPI, Init INIT, bool TRANS_A>
void train_layer(const float* a, int64_t lda, int64_t rows, int64_t k_dim, const float* w, int64_t ldw, int64_t n,
                 const float* bias, float* c, int64_t ldc, float* pre, const float* aux, bool padded_store,
                 int64_t block_begin, int64_t block_end) {
  for_column_blocks<V>(n, block_begin, block_end,
                       [&](auto nv_tag, int64_t col, int64_t, typename V::Mask load_mask, bool tail) {
    // a padded store writes the whole last vector (zeros past n come out of zero-loaded lanes)
    const auto store_mask = padded_store ? V::tail(V::kWidth) : load_mask;
    // Full blocks take the unmasked tile even where masks are free (AVX-512): there the masked
    // load of the last W vector in every k step sat right before the hottest stall of the
    // weight-gradient tiles, and the backward at B = 3 840 took ~9 % less time without it
    // (with the prefetch above; paired same-process A/B, benches/README.md, session 10).
    auto run = [&](auto tail_tag) {
      train_column_block<V, decltype(nv_tag)::value, EPI, INIT, TRANS_A, decltype(tail_tag)::value>(
          a, lda, rows, k_dim, w + col, ldw, bias ? bias + col : nullptr, c + col, ldc, pre ? pre + col : nullptr,
          aux ? aux + col : nullptr, load_mask, store_mask);
    };
    if (tail)
      run(Bool<true>{});
    else
      run(Bool<false>{});
  });
  // Columns between the last vector and the buffer's leading dimension (the 16-column padding on
  // 8-lane ISAs, and the skew of padded_cols in csrc/pyscorepen.cpp): zeros. Both ends are
  // multiples of kWidth.
  const int64_t written = column_split<V>(n).n_vec * V::kWidth;
  if (padded_store && written < ldc && block_end >= column_split<V>(n).n_blocks) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = written; j < ldc; j += V::kWidth) {
        V::storeu(c + r * ldc + j, V::zero());
        if (pre != nullptr) V::storeu(pre + r * ldc + j, V::zero());
      }
  }
}

inline const float* member_x(const EnsembleTrainArgs& args, int64_t member) {
  return args.x_shared ? args.x : args.x + member * args.batch_pad * args.ld_x;
}

template <class V>
void ensemble_forward_rows(const EnsembleTrainArgs& args, int64_t member, int64_t row_begin, int64_t row_end) {
  const MlpDesc& mlp = args.mlp;
  const int64_t rows = row_end - row_begin, B = args.batch_pad;
  const float* in = member_x(args, member) + row_begin * args.ld_x;
  int64_t ld_in = args.ld_x;
  for (int l = 0; l < mlp.n_layers; ++l) {
    const int64_t k_dim = mlp.dims[l], n = mlp.dims[l + 1], ld = args.ld[l];
    const int64_t ld_w = mlp.ld_w[l] ? mlp.ld_w[l] : n;
    const float* w = mlp.w[l] + member * k_dim * ld_w;   // [k, n]
    const float* b = mlp.b[l] + member * n;              // [n]
    const int64_t offset = (member * B + row_begin) * ld;
    if (l + 1 == mlp.n_layers) {
      float* c = args.out + offset;
      if (n == 1)
        dot_column<V, Act::kNone>(in, ld_in, rows, k_dim, w, b, c, ld);
      else
        train_layer<V, Epi::kNone, Init::kBias, false>(in, ld_in, rows, k_dim, w, ld_w, n, b, c, ld, nullptr,
                                                       nullptr, true, 0, INT64_MAX);
      break;
    }
    float* c = args.h[l] + offset;
    if (mlp.hidden == Activation::kSilu)
      train_layer<V, Epi::kSilu, Init::kBias, false>(in, ld_in, rows, k_dim, w, ld_w, n, b, c, ld,
                                                     args.z[l] + offset, nullptr, true, 0, INT64_MAX);
    else
      train_layer<V, Epi::kRelu, Init::kBias, false>(in, ld_in, rows, k_dim, w, ld_w, n, b, c, ld, nullptr, nullptr,
                                                     true, 0, INT64_MAX);
    in = c;
    ld_in = ld;
  }
}

template <class V>
void ensemble_backward_dz_rows(const EnsembleTrainArgs& args, int64_t member, int64_t row_begin, int64_t row_end) {
  const MlpDesc& mlp = args.mlp;
  const int64_t rows = row_end - row_begin, B = args.batch_pad;
  for (int l = mlp.n_layers - 1; l >= 1; --l) {
    // dz_{l-1} = (dz_l W_l^T) * act'(z_{l-1}):  [rows, n_l] x [n_l, n_{l-1}]
    const int64_t k_dim = mlp.dims[l + 1], n = mlp.dims[l];
    const float* a = args.dz[l] + (member * B + row_begin) * args.ld[l];
    const int64_t ld_wt = args.ld_wt[l];
    const float* wt = args.wt[l] + member * k_dim * ld_wt;             // [n_l, n_{l-1}]
    const int64_t offset = (member * B + row_begin) * args.ld[l - 1];
    float* c = args.dz[l - 1] + offset;
    if (mlp.hidden == Activation::kSilu)
      train_layer<V, Epi::kSiluGrad, Init::kZero, false>(a, args.ld[l], rows, k_dim, wt, ld_wt, n, nullptr, c,
                                                         args.ld[l - 1], nullptr, args.z[l - 1] + offset, true, 0,
                                                         INT64_MAX);
    else
      train_layer<V, Epi::kReluGrad, Init::kZero, false>(a, args.ld[l], rows, k_dim, wt, ld_wt, n, nullptr, c,
                                                         args.ld[l - 1], nullptr, args.h[l - 1] + offset, true, 0,
                                                         INT64_MAX);
  }
}

template <class V>
void ensemble_backward_params(const EnsembleTrainArgs& args, int layer, int64_t member, int64_t block_begin,
                              int64_t block_end, int64_t row_begin, int64_t row_end) {
  constexpr int W = V::kWidth;
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
  // Everything below walks the batch in slabs of V::kGradSlab rows: a slab of h and of dz (<= 256 KB
  // at 256 columns) stays in L2 while the passes over it (row tiles of h^T, column vectors) re-read
  // it, and a column block's dz panel plus the h lines of a row tile stay in L1 across the row
  // tiles (the ISA structs say what was measured). The accumulators go through grad_w between
  // slabs: the same additions in the same order, so the slab size does not change the result.
  // Only the computed rows: the others of the buffers are not written (EnsembleTrainArgs).
  constexpr int64_t kSlab = V::kGradSlab;
  static_assert(kBackwardChunkRows % kSlab == 0, "row ranges must start at whole slabs");
  // the slabs of [row_begin, row_end); the one at row 0 starts the sums, later ones add to them
  if (n == 1) {
    // single output (a critic's Q head): grad_w[k] = sum_b h[b, k] dz[b], vectorized over k; the
    // running sums go through gw between slabs (the same additions, in the same order, as one pass)
    for (int64_t b0 = row_begin; b0 < row_end && gw != nullptr; b0 += kSlab) {
      const int64_t b1 = row_end - b0 < kSlab ? row_end : b0 + kSlab;
      for (int64_t k = 0; k < k_in; k += 4 * W) {
        typename V::Vec acc[4];
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          const int64_t kk = k + W * v;
          acc[v] = b0 == 0 || kk >= k_in ? V::zero() : V::load(V::tail(k_in - kk), gw + kk);
        }
        for (int64_t b = b0; b < b1; ++b) {
          const auto d = V::set1(dz[b * ld]);
#pragma GCC unroll 4
          for (int v = 0; v < 4; ++v) {
            const int64_t kk = k + W * v;
            if (kk < k_in) acc[v] = V::fmadd(d, V::load(V::tail(k_in - kk), h + b * ld_h + kk), acc[v]);
          }
        }
        for (int v = 0; v < 4; ++v) {
          const int64_t kk = k + W * v;
          if (kk < k_in) V::store(V::tail(k_in - kk), gw + kk, acc[v]);
        }
      }
    }
    if (gb != nullptr) {
      float sum = row_begin == 0 ? 0.0f : gb[0];
      for (int64_t b = row_begin; b < row_end; ++b) sum += dz[b * ld];
      gb[0] = sum;
    }
    return;
  }
  // grad_w = h^T dz: [k_in, B_pad] x [B_pad, n], summed over the slabs (one pass over all B rows
  // per row tile of h^T streamed ~1 MB per tile from L3 at B = 3840: 4x slower). Slab outer, the
  // task's column blocks inner: each slab of h is read from memory once for all of them (block
  // outer read all of h once per block, 4x per 256-wide layer). grad_b = the sum of dz's rows,
  // per slab while it is in L2 (a pass per column vector over all B rows strode through memory).
  for (int64_t b0 = row_begin; b0 < row_end; b0 += kSlab) {
    const int64_t rows = row_end - b0 < kSlab ? row_end - b0 : kSlab;
    if (gw != nullptr) {
      if (b0 == 0)
        train_layer<V, Epi::kNone, Init::kZero, true>(h, ld_h, k_in, rows, dz, ld, n, nullptr, gw, n, nullptr,
                                                      nullptr, false, block_begin, block_end);
      else
        train_layer<V, Epi::kNone, Init::kLoad, true>(h + b0 * ld_h, ld_h, k_in, rows, dz + b0 * ld, ld, n, nullptr,
                                                      gw, n, nullptr, nullptr, false, block_begin, block_end);
    }
    if (gb != nullptr) {
      for_column_blocks<V>(n, block_begin, block_end, [&](auto nv_tag, int64_t col, int64_t cols, typename V::Mask,
                                                          bool) {
        constexpr int NV = decltype(nv_tag)::value;
        typename V::Mask masks[NV];
        typename V::Vec acc[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          masks[v] = V::tail(cols - W * v);
          acc[v] = b0 == 0 ? V::zero() : V::load(masks[v], gb + col + W * v);
        }
        for (int64_t b = b0; b < b0 + rows; ++b) {
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[v] = V::add(acc[v], V::load(masks[v], dz + b * ld + col + W * v));
        }
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) V::store(masks[v], gb + col + W * v, acc[v]);
      });
    }
  }
}

template <class V>
void ensemble_backward_grad_x_rows(const EnsembleTrainArgs& args, int64_t member, int64_t row_begin,
                                   int64_t row_end) {
  const MlpDesc& mlp = args.mlp;
  const int64_t rows = row_end - row_begin, B = args.batch_pad, k_dim = mlp.dims[1], n = mlp.dims[0];
  const int64_t first = args.x_shared ? 0 : member, last = args.x_shared ? args.members : member + 1;
  float* c = args.grad_x + ((args.x_shared ? 0 : member * B) + row_begin) * args.ld_gx;
  for (int64_t e = first; e < last; ++e) {
    const float* a = args.dz[0] + (e * B + row_begin) * args.ld[0];
    const float* wt = args.wt[0] + e * k_dim * args.ld_wt[0];   // [n_1, in]
    if (e == first)
      train_layer<V, Epi::kNone, Init::kZero, false>(a, args.ld[0], rows, k_dim, wt, args.ld_wt[0], n, nullptr, c,
                                                     args.ld_gx, nullptr, nullptr, true, 0, INT64_MAX);
    else
      train_layer<V, Epi::kNone, Init::kLoad, false>(a, args.ld[0], rows, k_dim, wt, args.ld_wt[0], n, nullptr, c,
                                                     args.ld_gx, nullptr, nullptr, true, 0, INT64_MAX);
  }
}

// ------------------------------------------------------- Gaussian NLL (dynamics fit)
// Per element (o < O) of a row, with u = max - raw, l1 = max - softplus(u), v = l1 - min,
// lv = min + softplus(v), r = mean - y, q = r^2 exp(-lv):
//   term = q + lv;   g_lv = scale (1 - q);   dmean = scale 2 r exp(-lv);
//   draw = g_lv sigmoid(v) sigmoid(u);   dmax = g_lv sigmoid(v) (1 - sigmoid(u));   dmin = g_lv (1 - sigmoid(v))
// (softplus' = sigmoid). Column vectors outer, rows inner: the max / min sums stay in registers.
template <class V>
float gaussian_nll_rows(const GaussianNllArgs& args, int64_t row_begin, int64_t row_end, float* grad_max,
                        float* grad_min) {
  constexpr int W = V::kWidth;
  const int64_t O = args.outputs;
  const auto scale = V::set1(args.scale), one = V::set1(1.0f), two_scale = V::set1(2.0f * args.scale);
  float total = 0.0f;
  for (int64_t j = 0; j < O; j += W) {
    const auto m = V::tail(O - j);
    const auto hi = V::load(m, args.max_logvar + j), lo = V::load(m, args.min_logvar + j);
    auto terms = V::zero(), dmax = V::zero(), dmin = V::zero();
    for (int64_t r = row_begin; r < row_end; ++r) {
      const float* out = args.out + r * 2 * O;
      float* grad = args.grad_out + r * 2 * O;
      const auto mean = V::load(m, out + j), raw = V::load(m, out + O + j);
      const auto u = V::sub(hi, raw);
      const auto v = V::sub(V::sub(hi, vsoftplus<V>(u)), lo);
      const auto lv = V::add(lo, vsoftplus<V>(v));
      const auto inv_var = vexp<V>(V::sub(V::zero(), lv));
      const auto diff = V::sub(mean, V::load(m, args.target + r * O + j));
      const auto q = V::mul(V::mul(diff, diff), inv_var);
      terms = V::add(terms, V::select(m, V::add(q, lv), V::zero()));
      const auto g_lv = V::mul(scale, V::sub(one, q));
      const auto g_l1 = V::mul(g_lv, vsigmoid<V>(v));
      const auto s_u = vsigmoid<V>(u);
      V::store(m, grad + j, V::mul(two_scale, V::mul(diff, inv_var)));
      V::store(m, grad + O + j, V::mul(g_l1, s_u));
      dmax = V::add(dmax, V::fnmadd(g_l1, s_u, g_l1));   // g_l1 (1 - s_u)
      dmin = V::add(dmin, V::sub(g_lv, g_l1));           // g_lv (1 - sigmoid(v))
    }
    V::store(m, grad_max + j, dmax);
    V::store(m, grad_min + j, dmin);
    total += V::reduce_add(terms);
  }
  return total;
}

// The entry points of one ISA (see Kernels in fused_mlp.h).
template <class V>
const Kernels* kernel_table(const char* name) {
  static const Kernels table = {name,
                                &rollout_rows<V>,
                                &score_rows<V>,
                                &soft_value_rows<V>,
                                &ensemble_forward_rows<V>,
                                &ensemble_backward_dz_rows<V>,
                                &ensemble_backward_params<V>,
                                &ensemble_backward_grad_x_rows<V>,
                                &column_blocks<V>,
                                &gaussian_nll_rows<V>};
  return &table;
}

}  // namespace
