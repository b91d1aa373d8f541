// Contiguous transposes of float matrices in 16 x 16 tiles, for the weight layouts the kernels
// need (W^T for the backward's dz chain, nn.Linear [out, in] <-> [in, out]). ATen's strided copy of
// w.transpose(...) walks one side with a large stride: 108 us for [2, 256, 256] vs ~11 us for a
// plain copy (1 thread, this machine); the tiled loop keeps both sides in cache lines.
#pragma once
#include <ATen/ATen.h>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace pyscorepen {

// dst [cols, rows] = src [rows, cols]^T (both row-major). Inside each 16 x 16 tile, whole 4 x 4
// blocks go through SSE registers (4 loads, 8 shuffles, 4 stores: part of the x86-64 baseline, so
// no ISA dispatch), the ragged edges element by element; other CPUs take the element loop.
// Measured on the dynamics fit's backward (7 x [200, 200] per layer, AMD EPYC Zen 5, 1 thread):
// the element loop was 8-12 % of the backward's time (perf), the 4 x 4 blocks ~4x faster.
// `ld_dst`: distance between dst's rows (default rows, contiguous).
inline void transpose_tiles(const float* src, int64_t rows, int64_t cols, float* dst, int64_t ld_dst = -1) {
  constexpr int64_t kTile = 16;
  if (ld_dst < 0) ld_dst = rows;
  for (int64_t i0 = 0; i0 < rows; i0 += kTile)
    for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
      const int64_t i1 = std::min(rows, i0 + kTile), j1 = std::min(cols, j0 + kTile);
      int64_t i4 = i0, j4 = j0;   // end of the whole 4 x 4 blocks
#if defined(__SSE2__)
      i4 = i0 + (i1 - i0) / 4 * 4;
      j4 = j0 + (j1 - j0) / 4 * 4;
      for (int64_t i = i0; i < i4; i += 4)
        for (int64_t j = j0; j < j4; j += 4) {
          __m128 r0 = _mm_loadu_ps(src + i * cols + j), r1 = _mm_loadu_ps(src + (i + 1) * cols + j);
          __m128 r2 = _mm_loadu_ps(src + (i + 2) * cols + j), r3 = _mm_loadu_ps(src + (i + 3) * cols + j);
          _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
          _mm_storeu_ps(dst + j * ld_dst + i, r0);
          _mm_storeu_ps(dst + (j + 1) * ld_dst + i, r1);
          _mm_storeu_ps(dst + (j + 2) * ld_dst + i, r2);
          _mm_storeu_ps(dst + (j + 3) * ld_dst + i, r3);
        }
#endif
      // the rest of the tile: rows [i4, i1) of every column, columns [j4, j1) of the block rows
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = (j < j4 ? i4 : i0); i < i1; ++i) dst[j * ld_dst + i] = src[i * cols + j];
    }
}

// The last two dimensions of a float [..., r, c] tensor swapped into `out` (contiguous, [..., c, r]).
inline void transpose_last2_into(const at::Tensor& w, float* out) {
  const at::Tensor src = w.contiguous();
  const int64_t rows = src.size(-2), cols = src.size(-1), batch = rows * cols == 0 ? 0 : src.numel() / (rows * cols);
  const float* s = src.data_ptr<float>();
  for (int64_t m = 0; m < batch; ++m) transpose_tiles(s + m * rows * cols, rows, cols, out + m * rows * cols);
}

// The last two dimensions of a float [..., r, c] tensor swapped, contiguous: [..., c, r].
inline at::Tensor transposed_last2(const at::Tensor& w) {
  std::vector<int64_t> shape(w.sizes().begin(), w.sizes().end());
  std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
  at::Tensor out = at::empty(shape, w.options());
  transpose_last2_into(w, out.data_ptr<float>());
  return out;
}

}  // namespace pyscorepen
