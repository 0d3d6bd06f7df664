// CUDA launchers for ponder.ops.think, in the order of cuda/common.cuh: validate, then launch()
// (device guard -> torch's stream -> dispatch the dtype -> check the error). The per-key
// online-softmax update, the merge of partials and the channel score's last step come from
// ponder/think.h, which the CPU launchers use too.
//
// pruned_decode_attention is split-K decoding in two kernels:
//   1. attend_chunks: one block per (batch x KV head, tile of up to kRows query rows, chunk of
//      keys). The block's query rows (the G query heads of the KV head times the S queries, so
//      K and V are never expanded for GQA) sit in shared memory, pre-scaled to base 2. Each key
//      row is read once, by a subgroup of `lanes` lanes, each lane holding 8 consecutive channels
//      (16-byte loads where the rows are 16-byte aligned); a subgroup runs one online softmax over
//      its keys, then the subgroups are merged, in a fixed order, into the chunk's partial
//      (max, sum, unnormalised output) in the workspace.
//   2. merge_chunks: one block per query row merges the chunks' partials in chunk order and
//      writes out (dtype) and lse (float32).
// The chunk length is chosen by the caller from the shapes alone (ponder/ops/think.py), so the
// results do not depend on the GPU.
#include <algorithm>
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/ops.h"
#include "ponder/think.h"

namespace ponder {
namespace cuda {
namespace {

constexpr int kThreads = 128;   // 4 warps per block
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 8;        // query rows per block (a GQA group of up to 8 with S = 1)
constexpr int64_t kMaxDim = 256;  // D and Dv: 8 channels per lane, at most 32 lanes per key
constexpr int kMergeThreads = 128;

struct AttnArgs {
  int64_t hkv, s_len, lp, lr, dim, kept, dv;
  int64_t kp_sb, kp_sh, kp_sl, kr_sb, kr_sh, kr_sl, v_sb, v_sh, v_sl;
  int64_t rows;        // query rows per KV head: (Hq / Hkv) * S
  int64_t tiles;       // ceil(rows / kRows)
  int64_t chunk_keys;  // keys per chunk
  int64_t chunks;      // ceil((Lp + Lr) / chunk_keys), at least 1
  int lanes;           // lanes per key: a power of two with 8 * lanes >= max(D, Dv)
  bool kp_vec, kr_vec, v_vec;
  float qscale;        // scale * log2(e): scores in base 2
};

// The merge of a partial (m2, l2, acc2) into (m, l, acc): partials that saw no key (m = -inf)
// are skipped, never multiplied (their acc may hold 0 * NaN from a masked NaN value).
__device__ __forceinline__ void merge_into(float& m, float& l, float* acc, float m2, float l2,
                                           const float* acc2, int n) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    l = l2;
    for (int e = 0; e < n; ++e) acc[e] = acc2[e];
    return;
  }
  const float mx = m > m2 ? m : m2;
  const float w1 = think::merge_weight(m, mx), w2 = think::merge_weight(m2, mx);
  l = w1 * l + w2 * l2;
  for (int e = 0; e < n; ++e) acc[e] = w1 * acc[e] + w2 * acc2[e];
  m = mx;
}

// At least 3 blocks (12 warps) per SM, at most 168 registers a thread: decoding is a stream over
// K and V that needs many loads in flight. (Unbounded, the compiler used 228 registers: 2 blocks
// per SM; 4 blocks spilled the accumulators. Untuned: no GPU has run it yet.)
template <class T>
__global__ void __launch_bounds__(kThreads, 3)
attend_chunks(AttnArgs a, const T* __restrict__ q, const T* __restrict__ kp,
              const int64_t* __restrict__ idx, const T* __restrict__ kr, const T* __restrict__ v,
              const int64_t* __restrict__ starts, const int64_t* __restrict__ lengths,
              float* __restrict__ part_m, float* __restrict__ part_l,
              float* __restrict__ part_acc) {
  extern __shared__ float smem[];
  const int64_t block = blockIdx.x;
  const int64_t c = block % a.chunks;
  const int64_t tile = (block / a.chunks) % a.tiles;
  const int64_t bh = block / a.chunks / a.tiles;
  const int64_t b = bh / a.hkv, h = bh % a.hkv;
  const int64_t r0 = tile * kRows;
  const int nr = static_cast<int>(a.rows - r0 < kRows ? a.rows - r0 : kRows);
  const int64_t length = a.lp + a.lr;
  // The row's key window. Python checked 0 <= starts <= lengths <= L; the clamps only keep every
  // read in bounds whatever the values.
  int64_t start = starts != nullptr ? starts[b] : 0;
  start = start < 0 ? 0 : (start > length ? length : start);
  int64_t end = lengths != nullptr ? lengths[b] : length;
  end = end < start ? start : (end > length ? length : end);
  int64_t row_end[kRows];
  int64_t last = start;  // one past the last key any row of this tile sees
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t s = (r0 + r) % a.s_len;
    const int64_t e = end - a.s_len + s + 1;
    row_end[r] = r < nr ? (e < 0 ? 0 : (e > end ? end : e)) : 0;
    last = row_end[r] > last ? row_end[r] : last;
  }
  const int64_t c_end = (c + 1) * a.chunk_keys;
  const int64_t lo = c * a.chunk_keys > start ? c * a.chunk_keys : start;
  int64_t hi = c_end < length ? c_end : length;
  hi = hi < last ? hi : last;
  const int64_t p0 = (bh * a.chunks + c) * a.rows + r0;  // this tile's first partial
  if (lo >= hi) {  // nothing visible in this chunk: an empty partial (the merge skips it)
    if (threadIdx.x < nr) {
      part_m[p0 + threadIdx.x] = -INFINITY;
      part_l[p0 + threadIdx.x] = 0.0f;
    }
    return;
  }

  // The tile's query rows in shared memory, scaled, zero-padded to W = 8 * lanes channels: qk
  // gathers the kept channels (for the pruned keys), qf is the full row (for the recent keys).
  const int width = 8 * a.lanes;
  float* qk = smem;
  float* qf = smem + kRows * width;
  const T* qh = q + (bh * a.rows + r0) * a.dim;
  const int64_t* ih = idx + bh * a.kept;
  for (int i = threadIdx.x; i < kRows * width; i += kThreads) {
    const int r = i / width, d = i % width;
    float full = 0.0f, kept = 0.0f;
    if (r < nr && d < a.dim) full = load(qh[r * a.dim + d]) * a.qscale;
    if (r < nr && d < a.kept) {
      const int64_t ch = ih[d];
      // Python checked every channel index; one outside [0, D) reads nothing and poisons the row.
      kept = ch >= 0 && ch < a.dim ? load(qh[r * a.dim + ch]) * a.qscale : NAN;
    }
    qf[i] = full;
    qk[i] = kept;
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int per_warp = 32 / a.lanes;  // keys a warp reads at once
  const int sub = lane / a.lanes;     // this lane's key within the warp's group
  const int64_t c0 = int64_t(lane % a.lanes) * 8;  // this lane's first channel
  const T* kpb = kp + b * a.kp_sb + h * a.kp_sh;
  const T* krb = kr + b * a.kr_sb + h * a.kr_sh;
  const T* vb = v + b * a.v_sb + h * a.v_sh;
  auto fetch = [&](int64_t j, float kf[8], float vf[8]) {
    if (j < a.lp) {
      load8(kpb + j * a.kp_sl, c0, a.kept, a.kp_vec, kf);
    } else {
      load8(krb + (j - a.lp) * a.kr_sl, c0, a.dim, a.kr_vec, kf);
    }
    load8(vb + j * a.v_sl, c0, a.dv, a.v_vec, vf);
  };

  float m[kRows], l[kRows], acc[kRows][8];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[r][e] = 0.0f;
  }
  // Warp steps: every lane of a warp runs the same number of steps (the shuffles need the whole
  // warp); a lane whose key is past the chunk reads nothing and updates nothing.
  const int64_t step = int64_t(kWarps) * per_warp;
  int64_t j = lo + int64_t(warp) * per_warp + sub;
  float kc[8], vc[8];
  if (j < hi) {
    fetch(j, kc, vc);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) kc[e] = vc[e] = 0.0f;
  }
  for (int64_t jb = lo + int64_t(warp) * per_warp; jb < hi; jb += step, j += step) {
    const bool valid = j < hi;
    // The next key's rows are requested before this key's arithmetic (two keys in flight).
    float kn[8], vn[8];
    if (j + step < hi) {
      fetch(j + step, kn, vn);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) kn[e] = vn[e] = 0.0f;
    }
    const float* qs = j < a.lp ? qk : qf;
    float score[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float dot = 0.0f;
#pragma unroll
      for (int e = 0; e < 8; ++e) dot += qs[r * width + c0 + e] * kc[e];
      score[r] = dot;
    }
    for (int off = a.lanes / 2; off > 0; off /= 2) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) score[r] += __shfl_xor_sync(0xffffffffu, score[r], off);
    }
    if (valid) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float s = (r < nr && j < row_end[r]) ? score[r] : -INFINITY;  // j >= start: lo >= start
        float p;
        const float alpha = think::online_update(m[r], l[r], s, p);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][e] = acc[r][e] * alpha + p * vc[e];
      }
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      kc[e] = kn[e];
      vc[e] = vn[e];
    }
  }

  // Merge the subgroups of each warp (butterfly over the key groups: the same order everywhere).
  for (int off = a.lanes; off < 32; off *= 2) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[r], off);
      const float l2 = __shfl_xor_sync(0xffffffffu, l[r], off);
      float acc2[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc2[e] = __shfl_xor_sync(0xffffffffu, acc[r][e], off);
      merge_into(m[r], l[r], acc[r], m2, l2, acc2, 8);
    }
  }
  // Then the warps, through shared memory (the query rows are no longer needed).
  __syncthreads();
  const int stride = 2 + width;  // per (warp, row): m, l, then W outputs
  if (lane < a.lanes) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float* slot = smem + (warp * kRows + r) * stride;
      if (lane == 0) {
        slot[0] = m[r];
        slot[1] = l[r];
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) slot[2 + c0 + e] = acc[r][e];
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < int64_t(nr) * a.dv; i += kThreads) {
    const int r = static_cast<int>(i / a.dv);
    const int64_t d = i % a.dv;
    float mm = -INFINITY, ll = 0.0f, out = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      const float* slot = smem + (w * kRows + r) * stride;
      merge_into(mm, ll, &out, slot[0], slot[1], slot + 2 + d, 1);
    }
    const int64_t p = p0 + r;
    part_acc[p * a.dv + d] = out;
    if (d == 0) {
      part_m[p] = mm;
      part_l[p] = ll;
    }
  }
}

// One block per query row: merge the chunks' partials in chunk order (deterministic), normalise.
template <class T>
__global__ void __launch_bounds__(kMergeThreads)
merge_chunks(int64_t rows, int64_t chunks, int64_t dv, const float* __restrict__ part_m,
             const float* __restrict__ part_l, const float* __restrict__ part_acc,
             T* __restrict__ out, float* __restrict__ lse) {
  const int64_t row = blockIdx.x;  // = bh * rows + r, the flat index of out's row too
  const int64_t bh = row / rows, r = row % rows;
  float mx = -INFINITY;
  for (int64_t c = 0; c < chunks; ++c) {
    const float mc = part_m[(bh * chunks + c) * rows + r];
    mx = mc > mx ? mc : mx;
  }
  float total = 0.0f;
  if (mx != -INFINITY) {
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t p = (bh * chunks + c) * rows + r;
      if (part_m[p] == -INFINITY) continue;
      total += think::merge_weight(part_m[p], mx) * part_l[p];
    }
  }
  // (A NaN total passes: NaN inputs give a NaN output, as in torch.)
  const bool seen = total != 0.0f;
  const float inv = seen ? 1.0f / total : 0.0f;
  for (int64_t d = threadIdx.x; d < dv; d += blockDim.x) {
    float o = 0.0f;
    if (seen) {
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t p = (bh * chunks + c) * rows + r;
        if (part_m[p] == -INFINITY) continue;
        o += think::merge_weight(part_m[p], mx) * part_acc[p * dv + d];
      }
    }
    store(out[row * dv + d], o * inv);  // no visible key: zeros
  }
  if (threadIdx.x == 0) lse[row] = seen ? think::lse_natural(mx, total) : -INFINITY;
}

// score[b, h, j] from sums of squares in double over the keys and the group's query rows:
// blocks (B * Hkv, ceil(D / 32)), threads (32 channels, 8 rows of keys).
template <class T>
__global__ void channel_scores_kernel(float* __restrict__ out, const T* __restrict__ qw,
                                      const T* __restrict__ k, int64_t group_rows,
                                      int64_t length, int64_t dim) {
  __shared__ double part[8][33];
  const int64_t bh = blockIdx.x;
  const int64_t j = int64_t(blockIdx.y) * 32 + threadIdx.x;
  double ks = 0.0, qs = 0.0;
  if (j < dim) {
    const T* kh = k + bh * length * dim;
    for (int64_t t = threadIdx.y; t < length; t += 8) {
      const double x = load(kh[t * dim + j]);
      ks += x * x;
    }
    // The query rows of KV head h: heads h*G .. h*G + G - 1, W rows each, contiguous.
    const T* qh = qw + bh * group_rows * dim;
    for (int64_t w = threadIdx.y; w < group_rows; w += 8) {
      const double x = load(qh[w * dim + j]);
      qs += x * x;
    }
  }
  part[threadIdx.y][threadIdx.x] = ks;
  __syncthreads();
  if (threadIdx.y == 0) {
    for (int y = 1; y < 8; ++y) ks += part[y][threadIdx.x];
  }
  __syncthreads();
  part[threadIdx.y][threadIdx.x] = qs;
  __syncthreads();
  if (threadIdx.y == 0 && j < dim) {
    for (int y = 1; y < 8; ++y) qs += part[y][threadIdx.x];
    out[bh * dim + j] = think::channel_score(qs, group_rows, ks, length);
  }
}

int lanes_for(int64_t width) {
  int lanes = 1;
  while (8 * lanes < width) lanes *= 2;
  return lanes;
}

}  // namespace

void think_pruned_decode_attention(
    uintptr_t out, int64_t out_numel, uintptr_t lse, int64_t lse_numel, uintptr_t q,
    int64_t q_numel, uintptr_t k_pruned, int64_t k_pruned_numel, uintptr_t idx, int64_t idx_numel,
    uintptr_t k_recent, int64_t k_recent_numel, uintptr_t v, int64_t v_numel, uintptr_t starts,
    int64_t starts_numel, uintptr_t lengths, int64_t lengths_numel, uintptr_t workspace,
    int64_t workspace_numel, int64_t batch, int64_t hq, int64_t hkv, int64_t s_len, int64_t lp,
    int64_t lr, int64_t dim, int64_t kept, int64_t dv, int64_t kp_sb, int64_t kp_sh,
    int64_t kp_sl, int64_t kr_sb, int64_t kr_sh, int64_t kr_sl, int64_t v_sb, int64_t v_sh,
    int64_t v_sl, int dtype, double scale, int64_t chunk_keys, int device, uintptr_t stream) {
  const char* op = "think_pruned_decode_attention";
  // This kernel's own limits first, then the op's checks (shared with the CPU launcher).
  PONDER_CHECK(dim <= kMaxDim && dv <= kMaxDim,
               op << ": the CUDA kernel handles head dims up to " << kMaxDim << ", got D = "
                  << dim << ", Dv = " << dv << "; use backend='triton'");
  PONDER_CHECK(chunk_keys >= 1, op << ": chunk_keys must be >= 1, got " << chunk_keys);
  think::check_pruned_decode_attention(
      op, out, out_numel, lse, lse_numel, q, q_numel, k_pruned, k_pruned_numel, idx, idx_numel,
      k_recent, k_recent_numel, v, v_numel, starts, starts_numel, lengths, lengths_numel, batch,
      hq, hkv, s_len, lp, lr, dim, kept, dv, kp_sb, kp_sh, kp_sl, kr_sb, kr_sh, kr_sl, v_sb, v_sh,
      v_sl);
  const int64_t length = lp + lr;
  const int64_t rows = (hq / hkv) * s_len;  // fits: q's check multiplied hq and s_len
  const int64_t chunks = length > 0 ? (length - 1) / chunk_keys + 1 : 1;
  // Partials: m and l [B, Hkv, chunks, rows], then acc [B, Hkv, chunks, rows, Dv].
  check_buffer(op, {"workspace", workspace, workspace_numel}, {batch, hkv, chunks, rows, dv + 2});
  const int64_t heads = batch * hkv;
  const int64_t tiles = (rows + kRows - 1) / kRows;
  const int64_t work = batch * hq * s_len * dv;  // no output element: nothing to launch
  if (work > 0) {
    // One block per (head, tile, chunk) and per output row: the grid's x dimension.
    PONDER_CHECK(double(heads) * double(tiles) * double(chunks) < 2147483647.0 &&
                     heads * rows < 2147483647,
                 op << ": too many (head, chunk) blocks for one launch: B * Hkv = " << heads
                    << ", chunks = " << chunks << ", query rows per head = " << rows);
  }
  launch<false>(op, device, stream, dtype, work, [&](auto tag, cudaStream_t s) {
    using T = decltype(tag);
    AttnArgs a{hkv, s_len, lp, lr, dim, kept, dv, kp_sb, kp_sh, kp_sl, kr_sb, kr_sh, kr_sl,
               v_sb, v_sh, v_sl, rows, tiles, chunk_keys, chunks,
               lanes_for(dim > dv ? dim : dv),
               aligned16(k_pruned, sizeof(T), {kp_sb, kp_sh, kp_sl}),
               aligned16(k_recent, sizeof(T), {kr_sb, kr_sh, kr_sl}),
               aligned16(v, sizeof(T), {v_sb, v_sh, v_sl}),
               static_cast<float>(scale) * think::kLog2e};
    float* ws = reinterpret_cast<float*>(workspace);
    const int64_t parts = heads * chunks * rows;
    float* part_m = ws;
    float* part_l = ws + parts;
    float* part_acc = ws + 2 * parts;
    const int width = 8 * a.lanes;
    const size_t shared = sizeof(float) * size_t(std::max(2 * kRows * width,
                                                          kWarps * kRows * (2 + width)));
    attend_chunks<T><<<static_cast<unsigned>(heads * tiles * chunks), kThreads, shared, s>>>(
        a, reinterpret_cast<const T*>(q), reinterpret_cast<const T*>(k_pruned),
        reinterpret_cast<const int64_t*>(idx), reinterpret_cast<const T*>(k_recent),
        reinterpret_cast<const T*>(v), reinterpret_cast<const int64_t*>(starts),
        reinterpret_cast<const int64_t*>(lengths), part_m, part_l, part_acc);
    check_launch(op);
    merge_chunks<T><<<static_cast<unsigned>(heads * rows), kMergeThreads, 0, s>>>(
        rows, chunks, dv, part_m, part_l, part_acc, reinterpret_cast<T*>(out),
        reinterpret_cast<float*>(lse));
  });
}

void think_channel_scores(uintptr_t out, int64_t out_numel, uintptr_t q_window,
                          int64_t q_window_numel, uintptr_t k, int64_t k_numel, int64_t batch,
                          int64_t hq, int64_t hkv, int64_t window, int64_t length, int64_t dim,
                          int dtype, int device, uintptr_t stream) {
  const char* op = "think_channel_scores";
  think::check_channel_scores(op, out, out_numel, q_window, q_window_numel, k, k_numel, batch, hq,
                              hkv, window, length, dim);
  const int64_t heads = batch * hkv;  // fits: out's check multiplied them
  const int64_t tiles = (dim + 31) / 32;
  if (heads > 0 && dim > 0) {
    PONDER_CHECK(heads < 2147483647 && tiles <= 65535,
                 op << ": B * Hkv = " << heads << " and D = " << dim << " exceed one launch");
  }
  launch<false>(op, device, stream, dtype, heads * dim, [&](auto tag, cudaStream_t s) {
    using T = decltype(tag);
    channel_scores_kernel<T><<<dim3(static_cast<unsigned>(heads), static_cast<unsigned>(tiles)),
                               dim3(32, 8), 0, s>>>(
        reinterpret_cast<float*>(out), reinterpret_cast<const T*>(q_window),
        reinterpret_cast<const T*>(k), (hq / hkv) * window, length, dim);
  });
}

}  // namespace cuda
}  // namespace ponder
