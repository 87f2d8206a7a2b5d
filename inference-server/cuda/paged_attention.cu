// Attention of a whole step over the paged KV memory: one launch per layer
// for every row of the batch (see src/model/paged_attention.rs, whose CPU
// implementation is the reference this kernel follows).
//
// Grid: (rows, query heads); block: WARPS warps. Row r is token r of the
// step: sequence row_seq[r] at position row_pos[r]. It attends over its
// sequence's positions first..=pos, read through the sequence's block
// table: position p is at slot table[p / block_tokens] * block_tokens +
// p % block_tokens of the layer's [slots, kv_heads * head_dim] f16 keys and
// values. Each warp takes every WARPS-th position and keeps an online
// softmax (running max, sum and weighted values, each lane head_dim / 32
// components); the warps' partial results are merged at the end, as
// flash-decoding merges its splits.

#include <cuda_fp16.h>
#include <stdint.h>

#define WARPS 4
#define MAX_HEAD_DIM 256
#define PER_LANE (MAX_HEAD_DIM / 32)

extern "C" __global__ void paged_attention(
    float* __restrict__ out,               // [rows, heads * head_dim]
    const float* __restrict__ q,           // [rows, heads * head_dim]
    const __half* __restrict__ keys,       // [slots, kv_heads * head_dim]
    const __half* __restrict__ values,     // [slots, kv_heads * head_dim]
    const uint32_t* __restrict__ tables,   // [sequences, max_blocks]
    const uint32_t* __restrict__ row_seq,  // [rows]
    const uint32_t* __restrict__ row_pos,  // [rows]
    uint32_t max_blocks, uint32_t heads, uint32_t kv_heads, uint32_t head_dim,
    uint32_t block_tokens, uint32_t window, float scale) {
  const uint32_t row = blockIdx.x;
  const uint32_t head = blockIdx.y;
  const uint32_t lane = threadIdx.x % 32;
  const uint32_t warp = threadIdx.x / 32;
  const uint32_t kv_head = head / (heads / kv_heads);
  const size_t kv_width = (size_t)kv_heads * head_dim;
  const uint32_t pos = row_pos[row];
  const uint32_t first = (window != 0 && pos + 1 > window) ? pos + 1 - window : 0;
  const uint32_t* table = tables + (size_t)row_seq[row] * max_blocks;
  const float* query = q + ((size_t)row * heads + head) * head_dim;

  float qv[PER_LANE];
  float acc[PER_LANE];
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const uint32_t d = lane + 32 * i;
    qv[i] = d < head_dim ? query[d] : 0.f;
    acc[i] = 0.f;
  }
  float run_max = -INFINITY;
  float sum = 0.f;
  for (uint32_t p = first + warp; p <= pos; p += WARPS) {
    const size_t slot = (size_t)table[p / block_tokens] * block_tokens + p % block_tokens;
    const __half* key = keys + slot * kv_width + (size_t)kv_head * head_dim;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const uint32_t d = lane + 32 * i;
      if (d < head_dim) dot += qv[i] * __half2float(key[d]);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    }
    const float score = dot * scale;
    const float next = fmaxf(run_max, score);
    const float rescale = expf(run_max - next);  // 0 for the first position
    const float weight = expf(score - next);
    sum = sum * rescale + weight;
    const __half* value = values + slot * kv_width + (size_t)kv_head * head_dim;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const uint32_t d = lane + 32 * i;
      if (d < head_dim) acc[i] = acc[i] * rescale + weight * __half2float(value[d]);
    }
    run_max = next;
  }

  __shared__ float warp_max[WARPS];
  __shared__ float warp_sum[WARPS];
  __shared__ float warp_acc[WARPS][MAX_HEAD_DIM];
  if (lane == 0) {
    warp_max[warp] = run_max;
    warp_sum[warp] = sum;
  }
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const uint32_t d = lane + 32 * i;
    if (d < head_dim) warp_acc[warp][d] = acc[i];
  }
  __syncthreads();
  if (warp != 0) return;
  float total_max = -INFINITY;
  for (int w = 0; w < WARPS; ++w) total_max = fmaxf(total_max, warp_max[w]);
  float total = 0.f;
  float merged[PER_LANE];
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) merged[i] = 0.f;
  for (int w = 0; w < WARPS; ++w) {
    // A warp that had no position (fewer positions than warps) adds nothing.
    if (warp_max[w] == -INFINITY) continue;
    const float rescale = expf(warp_max[w] - total_max);
    total += warp_sum[w] * rescale;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const uint32_t d = lane + 32 * i;
      if (d < head_dim) merged[i] += warp_acc[w][d] * rescale;
    }
  }
  float* o = out + ((size_t)row * heads + head) * head_dim;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const uint32_t d = lane + 32 * i;
    if (d < head_dim) o[d] = merged[i] / total;
  }
}
