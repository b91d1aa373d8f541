// Contiguous transposes of float matrices in 16 x 16 tiles, for the weight layouts the kernels
// need (W^T for the backward's dz chain, nn.Linear [out, in] <-> [in, out]). ATen's strided copy of
// w.transpose(...) walks one side with a large stride: 108 us for [2, 256, 256] vs ~11 us for a
// plain copy (1 thread, this machine); the tiled loop keeps both sides in cache lines.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace pyscorepen {

// dst [cols, rows] = src [rows, cols]^T (both row-major).
inline void transpose_tiles(const float* src, int64_t rows, int64_t cols, float* dst) {
  constexpr int64_t kTile = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += kTile)
    for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
      const int64_t i1 = std::min(rows, i0 + kTile), j1 = std::min(cols, j0 + kTile);
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = i0; i < i1; ++i) dst[j * rows + i] = src[i * cols + j];
    }
}

// The last two dimensions of a float [..., r, c] tensor swapped, contiguous: [..., c, r].
inline at::Tensor transposed_last2(const at::Tensor& w) {
  const at::Tensor src = w.contiguous();
  const int64_t rows = src.size(-2), cols = src.size(-1), batch = rows * cols == 0 ? 0 : src.numel() / (rows * cols);
  std::vector<int64_t> shape(src.sizes().begin(), src.sizes().end());
  std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
  at::Tensor out = at::empty(shape, src.options());
  const float* s = src.data_ptr<float>();
  float* d = out.data_ptr<float>();
  for (int64_t m = 0; m < batch; ++m) transpose_tiles(s + m * rows * cols, rows, cols, d + m * rows * cols);
  return out;
}

}  // namespace pyscorepen
