// Contiguous transposes of float matrices in 16 x 16 tiles, for the weight layouts the kernels
// need (W^T for the backward's dz chain; nn.Linear [out, in] <-> [in, out] in sac_update). ATen's
// strided copy of w.transpose(...) walks one side with a large stride: 108 us for [2, 256, 256] vs
// ~11 us for a plain copy (1 thread, this machine); the tiled loop keeps both sides in cache lines.
#pragma once
#include <ATen/ATen.h>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <vector>

#include "run_tasks.h"

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

// One transpose of a batch: dst [cols, ld_dst] (first `rows` columns) = src [rows, cols]^T.
struct TransposeJob {
  const float* src;
  int64_t rows, cols;
  float* dst;
  int64_t ld_dst;
};

// Runs the jobs on the torch threads: each job is cut into blocks of kBlockRows source rows (whole
// 16-row tiles), which the threads claim largest first (run_tasks; the output does not depend on
// the schedule). Below kSerialFloats in all it runs on the calling thread. A whole job
// per task left the threads uneven: SAC's actor has one 256 x 256 weight next to 17- and 12-wide
// ones, and these transposes were ~3 % of a 2-thread SAC update's wall time with the other thread
// idle (perf, AMD EPYC Zen 3).
inline void transpose_jobs(const std::vector<TransposeJob>& jobs) {
  constexpr int64_t kBlockRows = 64, kSerialFloats = 16384;
  struct Block { size_t job; int64_t begin, end, cost; };
  std::vector<Block> blocks;
  int64_t total = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    for (int64_t r0 = 0; r0 < jobs[j].rows; r0 += kBlockRows) {
      const int64_t r1 = std::min(jobs[j].rows, r0 + kBlockRows);
      blocks.push_back({j, r0, r1, (r1 - r0) * jobs[j].cols});
    }
    total += jobs[j].rows * jobs[j].cols;
  }
  const auto run = [&](const Block& b) {
    const TransposeJob& job = jobs[b.job];
    transpose_tiles(job.src + b.begin * job.cols, b.end - b.begin, job.cols, job.dst + b.begin, job.ld_dst);
  };
  if (total < kSerialFloats) {
    for (const Block& b : blocks) run(b);
    return;
  }
  std::stable_sort(blocks.begin(), blocks.end(), [](const Block& a, const Block& b) { return a.cost > b.cost; });
  run_tasks(static_cast<int64_t>(blocks.size()), [&](int64_t i) { run(blocks[i]); });
}

}  // namespace pyscorepen
