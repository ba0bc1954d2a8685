// chinwag's CPU kernels for weight-only quantized linear layers (AVX-512), built by
// bot/inference/kernels.py.
//
// Decoding reads every weight once per step, so these kernels stream the weights once (with
// software prefetch: torch's own `_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu` read them
// well below the memory's bandwidth) and keep the activations, a few rows, in L1. They take and
// return float32, so no conversion surrounds a layer. Where the caller asks for bf16 (`bf16`) and
// the CPU has AVX512-BF16 they multiply in bf16 (the activations rounded to bf16, as torch's kernels
// do; the weights' values are exact in bf16): vdpbf16ps does twice the products of an FMA, and
// beyond one row these kernels are bound by the products, not the memory. Elsewhere they multiply
// in float32. Nothing here is chosen once for the process: each call says how it multiplies.
//
// Every kernel computes each row of its output with the same sequence of operations whatever the
// number of rows, so a reply's logits do not depend on which other replies share its batch.
//
// linear(x, weight, scales, bias): x float32 [M, K]; bias float32 [N] or None; returns float32
//   [M, N]. The weight's dtype says how it is stored:
//   - int8 [N, K], row-major, with scales bf16 [N] (one per output channel);
//   - uint8 in torch's CPU int4 layout ([N / 64, K, 32]: per block of 64 output channels and per
//     input, 32 bytes whose low nibbles hold channels 0-31 and high nibbles channels 32-63), with
//     scales bf16 [K / 32, N, 2] (scale and zero per group of 32 inputs; a weight is
//     (q - 8) * scale + zero);
//   - 4-D, int8 or uint8: the same weights laid out for int8 activations (AVX512-VNNI; see there and
//     bot/inference/quantize.py's `vnni_pack_int8` / `vnni_pack_int4`).
// decode_layer(...): a whole Llama/Qwen2 decoder layer for one new token per row (see below).

#include "simd.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

using namespace simd;

// Loops over the rows and vectors of accumulators are unrolled before GCC's scalar replacement, so
// the accumulators live in registers (otherwise every step stores them to the stack).
#define UNROLL _Pragma("GCC unroll 16")

// n values left uninitialized, for buffers every use writes before it reads (std::vector zeroes its
// values, a measurable part of a decode step).
template <typename T>
class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(size_t n) { resize(n); }
  void resize(size_t n) { values_ = std::make_unique_for_overwrite<T[]>(n); }
  T* data() { return values_.get(); }
  const T* data() const { return values_.get(); }
  T& operator[](size_t i) { return values_[i]; }

 private:
  std::unique_ptr<T[]> values_;
};

constexpr int64_t kRows = kRegisterRows / 2;  // rows of x computed together (their accumulators stay in registers)
constexpr int64_t kGroup = 32;   // int4: inputs per scale/zero pair
constexpr int64_t kBlock = 64;   // int4: output channels per packed block
// int8: prefetch the weights of the channels this far ahead (the hardware prefetcher alone falls
// behind on these short, interleaved streams; a prefetch past the end is harmless).
constexpr int64_t kAhead = 16;


// int8: C output channels at a time (4, or 1 for the last few), each a dot product along K. With
// `BF16` (see int4 below) x comes as bf16 [R, K] and 32 weights at a time become bf16 exactly (|w| <=
// 127): one vdpbf16ps then does a row's 32 products, against two FMAs.
template <int R, int C, bool BF16>
inline void int8_channels(const void* xv, int64_t K, const int8_t* w0, const uint16_t* scales,
                          const float* bias, float* y, int64_t N, int64_t n) {
  vf acc[R][C];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int c = 0; c < C; ++c) acc[r][c] = vzero();
  if constexpr (BF16) {
#if defined(CHINWAG_AVX512)
    const uint16_t* x = static_cast<const uint16_t*>(xv);
    for (int64_t k = 0; k < K; k += 32) {
      if ((k & 63) == 0) {
        UNROLL for (int c = 0; c < C; ++c) CHINWAG_PREFETCH((w0 + (c + kAhead) * K + k));
      }
      __m512bh wv[C];
      UNROLL for (int c = 0; c < C; ++c) {
        const int8_t* p = w0 + c * K + k;
        vf lo = vfloat(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
        vf hi = vfloat(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + 16))));
        wv[c] = _mm512_cvtne2ps_pbh(hi, lo);  // inputs k..k+15 in the low half
      }
      UNROLL for (int r = 0; r < R; ++r) {
        __m512bh xr = (__m512bh)_mm512_loadu_si512((const void*)(x + r * K + k));
        UNROLL for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], wv[c], xr);
      }
    }
#endif
  } else {
    const float* x = static_cast<const float*>(xv);
    for (int64_t k = 0; k < K; k += 16) {
      if ((k & 63) == 0) {
        UNROLL for (int c = 0; c < C; ++c) CHINWAG_PREFETCH((w0 + (c + kAhead) * K + k));
      }
      vf wv[C];
      UNROLL for (int c = 0; c < C; ++c)
        wv[c] = vfloat(vload_s8(w0 + c * K + k));
      UNROLL for (int r = 0; r < R; ++r) {
        vf xr = vload(x + r * K + k);
        UNROLL for (int c = 0; c < C; ++c) acc[r][c] = vfmadd(wv[c], xr, acc[r][c]);
      }
    }
  }
  UNROLL for (int c = 0; c < C; ++c) {
    float s;
    uint32_t bits = uint32_t(scales[n + c]) << 16;
    std::memcpy(&s, &bits, 4);
    float b = bias ? bias[n + c] : 0.f;
    UNROLL for (int r = 0; r < R; ++r) y[r * N + n + c] = vsum(acc[r][c]) * s + b;
  }
}

template <int R, bool BF16>
void int8_rows(const void* x, int64_t K, const int8_t* w, const uint16_t* scales, const float* bias,
               float* y, int64_t N, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) int8_channels<R, 4, BF16>(x, K, w + n * K, scales, bias, y, N, n);
  for (; n < n1; ++n) int8_channels<R, 1, BF16>(x, K, w + n * K, scales, bias, y, N, n);
}

// int4: one block of 64 output channels (4 vectors of 16) at a time; within a group of 32 inputs
// the products q * x are summed, then scaled: sum(w x) = scale * sum(q x) + (zero - 8 scale) * sum(x).
//
// On CPUs with AVX512-BF16 (`BF16`), x comes rounded to bf16, in pairs of inputs (k, k + 1) per
// 32-bit word, and one vdpbf16ps does two inputs' products per lane: twice the work of an FMA, which
// bounds these kernels beyond one row. The weights become bf16 pairs without a conversion: 128 + q
// is the bf16 0x4300 | q, so sum((128 + q) x) is accumulated and 128 sum(x) taken off with the zero
// points: sum(w x) = scale * sum((128 + q) x) + (zero - 136 scale) * sum(x).
template <int R, bool BF16>
void int4_rows(const void* xv, const float* xsum, int64_t K, const uint8_t* w, const uint32_t* sz,
               const float* bias, float* y, int64_t N, int64_t b0, int64_t b1) {
  const float* x = static_cast<const float*>(xv);
  [[maybe_unused]] const uint32_t* xb = static_cast<const uint32_t*>(xv);
  const vi low = viset(0xF);
  const vi high_half = viset(int32_t(0xFFFF0000u));
  const vf shift = vset(BF16 ? 136.f : 8.f);
  const int64_t groups = K / kGroup;
  for (int64_t b = b0; b < b1; ++b) {
    vf total[R][4];
    UNROLL for (int r = 0; r < R; ++r)
      UNROLL for (int c = 0; c < 4; ++c) total[r][c] = vzero();
    const uint8_t* wb = w + b * K * (kBlock / 2);
    for (int64_t g = 0; g < groups; ++g) {
      vf acc[R][4];
      UNROLL for (int r = 0; r < R; ++r)
        UNROLL for (int c = 0; c < 4; ++c) acc[r][c] = vzero();
      if constexpr (BF16) {
#if defined(CHINWAG_AVX512)
        const __m512i nibbles = _mm512_set1_epi32(0x000F000F);
        const __m512i base = _mm512_set1_epi32(0x43004300);  // bf16 128.0 in both halves
        for (int64_t k = g * kGroup; k < (g + 1) * kGroup; k += 2) {
          const uint8_t* p = wb + k * (kBlock / 2);
          // Per lane: input k's byte in the low half, input k + 1's in the high half.
          __m512i c0 = _mm512_or_si512(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p)),
                                       _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + 32))), 16));
          __m512i c1 = _mm512_or_si512(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + 16))),
                                       _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + 48))), 16));
          // (v & nibbles) | base: ternary logic 0xEA is (A & B) | C.
          __m512bh q[4] = {
              (__m512bh)_mm512_ternarylogic_epi32(c0, nibbles, base, 0xEA),                          // 0-15
              (__m512bh)_mm512_ternarylogic_epi32(c1, nibbles, base, 0xEA),                          // 16-31
              (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi32(c0, 4), nibbles, base, 0xEA),    // 32-47
              (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi32(c1, 4), nibbles, base, 0xEA),    // 48-63
          };
          UNROLL for (int r = 0; r < R; ++r) {
            __m512bh pair = (__m512bh)_mm512_set1_epi32(int32_t(xb[r * (K / 2) + k / 2]));
            UNROLL for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], q[c], pair);
          }
        }
#endif
      } else {
        for (int64_t k = g * kGroup; k < (g + 1) * kGroup; ++k) {
          const uint8_t* p = wb + k * (kBlock / 2);
          const vi v0 = vload_u8(p);
          const vi v1 = vload_u8(p + 16);
          vf q[4] = {
              vfloat(viand(v0, low)),   // channels 0-15
              vfloat(viand(v1, low)),   // 16-31
              vfloat(vishr<4>(v0)),     // 32-47
              vfloat(vishr<4>(v1)),     // 48-63
          };
          UNROLL for (int r = 0; r < R; ++r) {
            vf xr = vset(x[r * K + k]);
            UNROLL for (int c = 0; c < 4; ++c) acc[r][c] = vfmadd(q[c], xr, acc[r][c]);
          }
        }
      }
      // Each 32-bit word is one channel's (scale, zero) pair of bf16: scale in the low half.
      const uint32_t* s = sz + g * N + b * kBlock;
      UNROLL for (int c = 0; c < 4; ++c) {
        const vi pair = viload(s + c * 16);
        const vf scale = vbits_as_float(vishl<16>(pair));
        const vf zero = vbits_as_float(viand(pair, high_half));
        vf offset = vfnmadd(shift, scale, zero);  // zero - 8 (or 136) * scale
        UNROLL for (int r = 0; r < R; ++r) {
          total[r][c] = vfmadd(scale, acc[r][c], total[r][c]);
          total[r][c] = vfmadd(offset, vset(xsum[r * groups + g]), total[r][c]);
        }
      }
    }
    UNROLL for (int c = 0; c < 4; ++c) {
      const int64_t n = b * kBlock + c * 16;
      vf bv = bias ? vload(bias + n) : vzero();
      UNROLL for (int r = 0; r < R; ++r) vstore(y + r * N + n, vadd(total[r][c], bv));
    }
  }
}

// Whether this CPU multiplies in bf16 (AVX512-BF16). The kernels that can take `bf16` multiply so
// only where it does; the choice is each call's (each loaded model's), never this library's.
#if defined(CHINWAG_AVX512)
bool has_bf16() { return __builtin_cpu_supports("avx512bf16"); }
#else
bool has_bf16() { return false; }
#endif

inline uint32_t to_bf16(float f) {  // round to nearest even
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;
}

inline float from_bf16(uint32_t h) {
  const uint32_t bits = h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Calls f(start, std::integral_constant<int, n>{}) for consecutive blocks of `total` items, Max at a
// time and then the rest (n is the block's size), so each size has its own unrolled code.
template <int N, typename F>
void block_of(int64_t n, int64_t start, const F& f) {
  if constexpr (N > 1) {
    if (n < N) return block_of<N - 1>(n, start, f);
  }
  f(start, std::integral_constant<int, N>{});
}

template <int Max, typename F>
void in_blocks(int64_t total, const F& f) {
  for (int64_t start = 0; start < total; start += Max) block_of<Max>(std::min<int64_t>(Max, total - start), start, f);
}

// ---- Rounded activations by int8 or int4 weights (AVX512-VNNI) -------------------------------------
//
// vpdpbusd adds 4 products of unsigned by signed bytes per 32-bit lane: 64 products per instruction,
// twice vdpbf16ps, and the weights need no conversion. The activations are rounded with one scale
// per group of inputs (max |x| of the group's), as llama.cpp's Q8_0 does:
// - to 16 bits (prompts; `model.kernels = "int16"`): two bytes per input, each multiplied by the
//   weights with its own vpdpbusd, so as many products per instruction as vdpbf16ps but no weight
//   conversion, and far closer to the exact product than bf16 activations (8 significant bits)
//   are. Beyond one row the products bound the time, and these are faster than bf16's. int8
//   weights take one activation scale per 128 inputs (`kWideGroup`): a group's sums are converted
//   to float a quarter as often as per 32.
// - to int8 (the decode step's, by default): half the products again. A scale per group of 32
//   (`kI8Group`) loses the full model's top token far less often than one per row.
// The weights are laid out per block of 16 output channels and per group, in 64-byte words whose
// bytes 4c..4c+3 hold channel c's weights for 4 consecutive inputs (so a lane is a channel and a
// row's 4 inputs are one broadcast 32-bit word):
// - int8 (`kChar` [N / 16, K / 32, 8, 64]): word j of a group holds inputs 4j..4j+3, as stored
//   (signed); the kernel flips their sign bits, so it multiplies w + 128 (unsigned) by x and takes
//   128 sum(q) off each group's sum (exact in int32). Scales: the int8 layer's own, bf16 [N].
// - int4 (`kByte` [N / 16, K / G, G / 8, 64], groups of G = 32 or 64 inputs): word j holds inputs
//   8j..8j+3 in its low nibbles and 8j+4..8j+7 in its high ones; a weight is (q - 8) * scale + zero,
//   with scales and zeros bf16 [N / 16, K / G, 2, 16] (per block and group: 16 scales, 16 zeros).

constexpr int64_t kVnniRows = kRegisterRows;  // rows per pass over a block's weights (their sums stay in registers)
constexpr int64_t kI8Group = 32;   // int8 weights: inputs per activation scale
constexpr int64_t kWideGroup = 128;  // the same, 16-bit activations
// Bytes of the weights prefetched ahead of those being multiplied (a thread's blocks are contiguous).
constexpr int64_t kVnniAhead = 2048;

// Whether the integer dot products of the layouts below run here: AVX-512 needs AVX512-VNNI; AVX2
// (vpmaddubsw) and NEON (sdot, or widening multiplies) always do them.
#if defined(CHINWAG_AVX512)
bool has_vnni() { return __builtin_cpu_supports("avx512vnni"); }
#else
bool has_vnni() { return true; }
#endif

// Rows of x [M, K] rounded in groups of `group` inputs, each group with its own scale, to int8
// (`wide` false: q = round(x / scale), |q| <= 127) or to 16 bits (`wide`: |q| <= kWideTop, stored as
// two int8 halves, q = 256 hi + lo with lo in [-128, 127] and hi in [-127, 127], each multiplied by
// the weights with its own vpdpbusd). Out: xq [M, K] (wide: [M, 2K], a row's hi bytes then its lo
// bytes), each group's scale xs [M, K / group], exact sum xsum [M, K / group] and -128 times the
// sum of its rounded values, offset [M, K / group] (see `vnni_int8`). A row's values do not depend on
// the others.
constexpr float kWideTop = 32639.f;  // the largest |q| whose hi half is at most 127

void quantize_rows(const float* x, int64_t M, int64_t K, int64_t group, bool wide, int8_t* xq, float* xs,
                   float* xsum, int32_t* offset) {
  const int64_t G = K / group;
  const float top = wide ? kWideTop : 127.f;
  const vi half = viset(128), byte = viset(255);
  for (int64_t m = 0; m < M; ++m) {
    int8_t* hi = xq + m * (wide ? 2 * K : K);
    int8_t* lo = hi + K;
    for (int64_t g = 0; g < G; ++g) {
      const float* p = x + m * K + g * group;
      vf most = vzero(), sum = vzero();
      for (int64_t i = 0; i < group; i += 16) {
        const vf v = vload(p + i);
        most = vmax(most, vabs(v));
        sum = vadd(sum, v);
      }
      const float largest = vmaxall(most);
      const float scale = largest / top;
      const vf inverse = vset(largest > 0.f ? top / largest : 0.f);
      vi count = vizero();
      for (int64_t i = 0; i < group; i += 16) {
        vi q = vint(vmul(vload(p + i), inverse));  // to nearest
        q = vimax(vimin(q, viset(int32_t(top))), viset(-int32_t(top)));
        if (wide) {
          const vi l = visub(viand(viadd(q, half), byte), half);
          vstore_s8(lo + g * group + i, l);
          vstore_s8(hi + g * group + i, visar<8>(visub(q, l)));
        } else {
          vstore_s8(hi + g * group + i, q);
        }
        count = viadd(count, q);
      }
      xs[m * G + g] = scale;
      xsum[m * G + g] = vsum(sum);
      offset[m * G + g] = -128 * visum(count);
    }
  }
}

inline int32_t word(const int8_t* p) {
  int32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

// R rows of block b's 16 output channels, int4 weights in groups of 8 J inputs; `Wide`: 16-bit
// activations (two halves, see `quantize_rows`).
template <int R, int J, bool Wide>
CHINWAG_DOT_TARGET void vnni_int4(const int8_t* xq, const float* xs, const float* xsum, int64_t K, const uint8_t* w,
                                  const uint16_t* sz, const float* bias, float* y, int64_t N, int64_t b) {
  const int64_t G = K / (8 * J), S = Wide ? 2 * K : K;
  vf out[R];
  UNROLL for (int r = 0; r < R; ++r) out[r] = vzero();
  const uint8_t* wb = w + b * G * J * 64;
  const uint16_t* sb = sz + b * G * 32;
  const vf eight = vset(8.f);
  for (int64_t g = 0; g < G; ++g) {
    vi acc[R], lo[R];
    UNROLL for (int r = 0; r < R; ++r) acc[r] = lo[r] = vizero();
    CHINWAG_PREFETCH((const char*)(sb + g * 32) + kVnniAhead / 8);
    // Words in runs whose products' sums stay short (`vsdot_u4`: all J where the sums are int32).
    constexpr int Run = std::min(J, kShortSums / 2);
    UNROLL for (int j0 = 0; j0 < J; j0 += Run) {
      vs short_acc[R], short_lo[R];
      UNROLL for (int r = 0; r < R; ++r) short_acc[r] = short_lo[r] = vszero();
      UNROLL for (int j = j0; j < j0 + Run; ++j) {
        CHINWAG_PREFETCH((wb + (g * J + j) * 64 + kVnniAhead));
        const vb v = vbload(wb + (g * J + j) * 64);
        const vb low = vblow_nibbles(v);    // inputs 8j .. 8j+3
        const vb high = vbhigh_nibbles(v);  // inputs 8j+4 .. 8j+7
        const int64_t k = (g * J + j) * 8;
        UNROLL for (int r = 0; r < R; ++r) {
          short_acc[r] = vsdot_u4(short_acc[r], low, word(xq + r * S + k));
          short_acc[r] = vsdot_u4(short_acc[r], high, word(xq + r * S + k + 4));
          if constexpr (Wide) {
            short_lo[r] = vsdot_u4(short_lo[r], low, word(xq + r * S + K + k));
            short_lo[r] = vsdot_u4(short_lo[r], high, word(xq + r * S + K + k + 4));
          }
        }
      }
      UNROLL for (int r = 0; r < R; ++r) {
        acc[r] = j0 == 0 ? vswiden(short_acc[r]) : viadd(acc[r], vswiden(short_acc[r]));
        if constexpr (Wide) lo[r] = j0 == 0 ? vswiden(short_lo[r]) : viadd(lo[r], vswiden(short_lo[r]));
      }
    }
    if constexpr (Wide) {
      UNROLL for (int r = 0; r < R; ++r) acc[r] = viadd(vishl<8>(acc[r]), lo[r]);
    }
    const vf scale = vload_bf16(sb + g * 32);
    const vf zero = vfnmadd(eight, scale, vload_bf16(sb + g * 32 + 16));  // zero - 8 scale
    UNROLL for (int r = 0; r < R; ++r) {
      out[r] = vfmadd(vfloat(acc[r]), vmul(scale, vset(xs[r * G + g])), out[r]);
      out[r] = vfmadd(zero, vset(xsum[r * G + g]), out[r]);
    }
  }
  const vf bv = bias ? vload(bias + b * 16) : vzero();
  UNROLL for (int r = 0; r < R; ++r) vstore(y + r * N + b * 16, vadd(out[r], bv));
}

// R rows of block b's 16 output channels, int8 weights, an activation scale per AG inputs; `Wide`:
// 16-bit activations (two halves, see `quantize_rows`; sums one at a time otherwise).
template <int R, bool Wide, int AG>
CHINWAG_DOT_TARGET void vnni_int8(const int8_t* xq, const float* xs, const int32_t* offset, int64_t K, const int8_t* w,
                                  const uint16_t* scales, const float* bias, float* y, int64_t N, int64_t b) {
  const int64_t G = K / AG, S = Wide ? 2 * K : K;
  vf out[R];
  UNROLL for (int r = 0; r < R; ++r) out[r] = vzero();
  const int8_t* wb = w + b * K * 16;
  for (int64_t g = 0; g < G; ++g) {
    vi acc[R], lo[R];
    // Where the products are of w + 128 (kDotFlips): sum((w + 128) q) - 128 sum(q) = sum(w q), so
    // the low sums start at -128 sum(q) (exact in int32: at most 127 * 32639 * 128 < 2^29 in
    // magnitude, and wrapping on the way would not change it). Elsewhere they are sum(w q) itself.
    UNROLL for (int r = 0; r < R; ++r) {
      acc[r] = vizero();
      lo[r] = kDotFlips ? viset(offset[r * G + g]) : vizero();
    }
    UNROLL for (int j = 0; j < AG / 4; ++j) {
      CHINWAG_PREFETCH((wb + (g * (AG / 4) + j) * 64 + kVnniAhead));
      const vb v = vbsigned(vbload(wb + (g * (AG / 4) + j) * 64));
      const int64_t k = g * AG + 4 * j;
      UNROLL for (int r = 0; r < R; ++r) {
        if constexpr (Wide) {
          acc[r] = vdot_s8(acc[r], v, word(xq + r * S + k));
          lo[r] = vdot_s8(lo[r], v, word(xq + r * S + K + k));
        } else {
          lo[r] = vdot_s8(lo[r], v, word(xq + r * S + k));
        }
      }
    }
    UNROLL for (int r = 0; r < R; ++r) {
      vi sum = lo[r];
      if constexpr (Wide) sum = viadd(vishl<8>(acc[r]), sum);
      out[r] = vfmadd(vfloat(sum), vset(xs[r * G + g]), out[r]);
    }
  }
  const vf scale = vload_bf16(scales + b * 16);
  const vf bv = bias ? vload(bias + b * 16) : vzero();
  UNROLL for (int r = 0; r < R; ++r) vstore(y + r * N + b * 16, vfmadd(scale, out[r], bv));
}

// The output features of a weight in the VNNI layouts above, after checking it and its scales.
int64_t vnni_features(const at::Tensor& weight, const at::Tensor& scales, int64_t K) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(3) == 64 && weight.is_contiguous() && scales.is_contiguous(),
              "VNNI weight: [N / 16, groups, words, 64], contiguous");
  const int64_t N = weight.size(0) * 16, G = weight.size(1), J = weight.size(2);
  if (weight.scalar_type() == at::kChar) {
    TORCH_CHECK(J == 8 && G * kI8Group == K, "int8 VNNI weight: [N / 16, K / 32, 8, 64]");
    TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && scales.numel() == N, "int8 scales: bf16 [N]");
  } else {
    TORCH_CHECK(weight.scalar_type() == at::kByte && (J == 4 || J == 8) && G * J * 8 == K,
                "int4 VNNI weight: uint8 [N / 16, K / G, G / 8, 64], G 32 or 64");
    TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && scales.numel() == N * G * 2,
                "int4 VNNI scales and zeros: bf16 [N / 16, K / G, 2, 16]");
  }
  return N;
}

// Rows of x rounded for the VNNI kernel (`quantize_rows`): their bytes, and per group of inputs its
// scale, exact sum and -128 times the sum of its rounded values.
struct Rounded {
  int64_t group = 0;
  bool wide = false;
  Scratch<int8_t> q;
  Scratch<float> scale, sum;
  Scratch<int32_t> offset;
};

// Inputs per activation scale for a VNNI weight whose activations are rounded to `bits`: an int4
// weight's own groups; for int8 weights 32 with int8 activations (see above) and 128 with 16 bits,
// whose error stays far below bf16's (a sum over 128 inputs still fits in int32).
int64_t vnni_group(const at::Tensor& weight, int64_t K, int64_t bits) {
  if (weight.scalar_type() != at::kChar) return 8 * weight.size(2);
  return bits == 16 && K % kWideGroup == 0 ? kWideGroup : kI8Group;
}

void round_rows(const float* x, int64_t M, int64_t K, int64_t group, bool wide, Rounded& out) {
  const int64_t G = K / group, S = wide ? 2 * K : K;
  out.group = group;
  out.wide = wide;
  out.q.resize(M * S);
  out.scale.resize(M * G);
  out.sum.resize(M * G);
  out.offset.resize(M * G);
  // Rows split between the threads once there are enough of them (each is rounded on its own).
  at::parallel_for(0, M, std::max<int64_t>(1, 32768 / K), [&](int64_t m0, int64_t m1) {
    quantize_rows(x + m0 * K, m1 - m0, K, group, wide, out.q.data() + m0 * S, out.scale.data() + m0 * G,
                  out.sum.data() + m0 * G, out.offset.data() + m0 * G);
  });
}

// One product for `vnni_products`: y [M, N] = x by the weight (checked by `vnni_features`), plus
// bias, the activations rounded to `bits`.
struct VnniProduct {
  const at::Tensor& weight;
  const at::Tensor& scales;
  const float* bias;
  float* y;
  int64_t bits;
};

// Block b (16 output channels) of a product, for every row of x.
template <bool Wide>
void vnni_block(const Rounded& x, int64_t M, int64_t K, const VnniProduct& p, int64_t N, int64_t b) {
  const int64_t G = K / x.group, S = Wide ? 2 * K : K, J = p.weight.size(2);
  const bool int8 = p.weight.scalar_type() == at::kChar;
  const void* w = p.weight.data_ptr();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(p.scales.data_ptr());
  in_blocks<kVnniRows>(M, [&](int64_t m, auto rows) {
    constexpr int R = decltype(rows)::value;
    const int8_t* xq = x.q.data() + m * S;
    const float* xs = x.scale.data() + m * G;
    float* y = p.y + m * N;
    if (int8 && Wide && x.group == kWideGroup)
      vnni_int8<R, Wide, kWideGroup>(xq, xs, x.offset.data() + m * G, K, (const int8_t*)w, sp, p.bias, y, N, b);
    else if (int8)
      vnni_int8<R, Wide, kI8Group>(xq, xs, x.offset.data() + m * G, K, (const int8_t*)w, sp, p.bias, y, N, b);
    else if (J == 4)
      vnni_int4<R, 4, Wide>(xq, xs, x.sum.data() + m * G, K, (const uint8_t*)w, sp, p.bias, y, N, b);
    else
      vnni_int4<R, 8, Wide>(xq, xs, x.sum.data() + m * G, K, (const uint8_t*)w, sp, p.bias, y, N, b);
  });
}

// Several products of the same x [M, K] by weights in VNNI layouts (a layer's queries, keys and
// values; its gate and up projections): x rounded once per kind of rounding they need, and every
// product's blocks of channels split between the threads in one parallel pass (the keys' and values'
// 8 blocks alone would keep one thread).
void vnni_products(const float* xp, int64_t M, int64_t K, const std::vector<VnniProduct>& products) {
  TORCH_CHECK(has_vnni(), "int8 activations need AVX512-VNNI on the AVX-512 path");
  std::vector<Rounded> rounded;
  std::vector<size_t> which;
  std::vector<int64_t> features, first;  // each product's channels, and its first block's index
  int64_t blocks = 0;
  for (const VnniProduct& p : products) {
    TORCH_CHECK(p.bits == 8 || p.bits == 16, "activations: 8 or 16 bits");
    features.push_back(vnni_features(p.weight, p.scales, K));
    first.push_back(blocks);
    blocks += features.back() / 16;
    const int64_t group = vnni_group(p.weight, K, p.bits);
    const bool wide = p.bits == 16;
    size_t i = 0;
    while (i < rounded.size() && (rounded[i].group != group || rounded[i].wide != wide)) ++i;
    if (i == rounded.size()) round_rows(xp, M, K, group, wide, rounded.emplace_back());
    which.push_back(i);
  }
  at::parallel_for(0, blocks, 8, [&](int64_t b0, int64_t b1) {
    size_t i = 0;
    for (int64_t b = b0; b < b1; ++b) {
      while (b >= first[i] + features[i] / 16) ++i;
      const Rounded& x = rounded[which[i]];
      if (x.wide)
        vnni_block<true>(x, M, K, products[i], features[i], b - first[i]);
      else
        vnni_block<false>(x, M, K, products[i], features[i], b - first[i]);
    }
  });
}

const float* bias_of(const std::optional<at::Tensor>& bias, int64_t N) {
  if (!bias.has_value()) return nullptr;
  TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == N, "bias: float32 [N]");
  return bias->data_ptr<float>();
}

// The output features of an int8 (kChar [N, K]), int4 (kByte, torch's layout) or VNNI (4-D) weight
// for K inputs, after checking the weight and its scales.
int64_t features(const at::Tensor& weight, const at::Tensor& scales, int64_t K) {
  if (weight.dim() == 4) return vnni_features(weight, scales, K);
  TORCH_CHECK(weight.is_contiguous() && scales.is_contiguous() && scales.scalar_type() == at::kBFloat16,
              "weight and bf16 scales, contiguous");
  if (weight.scalar_type() == at::kChar) {
    TORCH_CHECK(weight.dim() == 2 && weight.size(1) == K && K % 16 == 0, "int8 weight: [N, K], K a multiple of 16");
    TORCH_CHECK(scales.numel() == weight.size(0), "int8 scales: [N]");
    return weight.size(0);
  }
  TORCH_CHECK(weight.scalar_type() == at::kByte, "weight: int8, or uint8 in torch's CPU int4 layout");
  TORCH_CHECK(K % kGroup == 0 && weight.numel() % (K * kBlock / 2) == 0, "int4 weight: K a multiple of 32, N of 64");
  const int64_t N = weight.numel() * 2 / K;
  TORCH_CHECK(scales.numel() == (K / kGroup) * N * 2, "int4 scales_and_zeros: [K / 32, N, 2]");
  return N;
}

// y [M, N] = x [M, K] by the weight, plus bias (checked by `features`); a VNNI weight's activations
// rounded to `bits`, an int8 or int4 weight's to bf16 with `bf16` (where the CPU has AVX512-BF16).
void linear_into(const float* xp, int64_t M, int64_t K, const at::Tensor& weight, const at::Tensor& scales,
                 const float* bp, float* yp, int64_t bits, bool bf16_wanted) {
  if (weight.dim() == 4) return vnni_products(xp, M, K, {{weight, scales, bp, yp, bits}});
  const int64_t N = features(weight, scales, K);
  if (weight.scalar_type() == at::kChar) {
    const int8_t* wp = weight.data_ptr<int8_t>();
    const uint16_t* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr());
    const bool bf16 = bf16_wanted && has_bf16() && K % 32 == 0;
    std::vector<uint16_t> xb(bf16 ? M * K : 0);
    for (size_t i = 0; i < xb.size(); ++i) xb[i] = uint16_t(to_bf16(xp[i]));
    const void* xin = bf16 ? static_cast<const void*>(xb.data()) : static_cast<const void*>(xp);
    // Channels in runs of 4 split between the threads; each thread reads its own part of the
    // weight, and every run of rows reads the same few channels while they are still in L1.
    at::parallel_for(0, (N + 3) / 4, 16, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t n0 = q * 4, n1 = std::min(N, n0 + 4);
        in_blocks<kRows>(M, [&](int64_t m, auto rows) {
          constexpr int R = decltype(rows)::value;
          if (bf16)
            int8_rows<R, true>(static_cast<const uint16_t*>(xin) + m * K, K, wp, sp, bp, yp + m * N, N, n0, n1);
          else
            int8_rows<R, false>(static_cast<const float*>(xin) + m * K, K, wp, sp, bp, yp + m * N, N, n0, n1);
        });
      }
    });
    return;
  }
  const int64_t groups = K / kGroup;
  const bool bf16 = bf16_wanted && has_bf16();
  // Each row's sum over each group of inputs (as multiplied: rounded to bf16 or not), for the zero
  // points; with bf16, the rows as pairs of bf16.
  std::vector<float> xsum(M * groups);
  std::vector<uint32_t> pairs(bf16 ? M * K / 2 : 0);
  float* xs = xsum.data();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      const float* p = xp + m * K + g * kGroup;
      if (bf16) {
        float sum = 0.f;
        for (int64_t i = 0; i < kGroup; i += 2) {
          const uint32_t a = to_bf16(p[i]), b = to_bf16(p[i + 1]);
          pairs[(m * K + g * kGroup + i) / 2] = a | (b << 16);
          sum += from_bf16(a) + from_bf16(b);
        }
        xs[m * groups + g] = sum;
      } else {
        xs[m * groups + g] = vsum(vadd(vload(p), vload(p + 16)));
      }
    }
  const void* xin = bf16 ? static_cast<const void*>(pairs.data()) : static_cast<const void*>(xp);
  const int64_t row_words = bf16 ? K / 2 : K;  // 32-bit words per row of xin
  const uint8_t* wp = weight.data_ptr<uint8_t>();
  const uint32_t* sp = reinterpret_cast<const uint32_t*>(scales.data_ptr());
  at::parallel_for(0, N / kBlock, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      in_blocks<kRows>(M, [&](int64_t m, auto rows) {
        constexpr int R = decltype(rows)::value;
        const void* xm = static_cast<const uint32_t*>(xin) + m * row_words;
        if (bf16)
          int4_rows<R, true>(xm, xs + m * groups, K, wp, sp, bp, yp + m * N, N, b, b + 1);
        else
          int4_rows<R, false>(xm, xs + m * groups, K, wp, sp, bp, yp + m * N, N, b, b + 1);
      });
    }
  });
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                  const std::optional<at::Tensor>& bias, int64_t bits, bool bf16) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: float32 [M, K], contiguous");
  const int64_t M = x.size(0), K = x.size(1);
  const int64_t N = features(weight, scales, K);
  at::Tensor y = at::empty({M, N}, x.options());
  linear_into(x.data_ptr<float>(), M, K, weight, scales, bias_of(bias, N), y.data_ptr<float>(), bits, bf16);
  return y;
}

// ---- One decoder layer for one new token per row (Llama and Qwen2) ---------------------------------

// RMSNorm of each row of x [M, H] (H a multiple of 16) times its weight, into y.
void rms_norm(const float* x, int64_t M, int64_t H, const float* weight, float eps, float* y) {
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * H;
    vf acc = vzero();
    for (int64_t i = 0; i < H; i += 16) {
      vf v = vload(row + i);
      acc = vfmadd(v, v, acc);
    }
    const vf inv = vset(1.f / std::sqrt(vsum(acc) / float(H) + eps));
    for (int64_t i = 0; i < H; i += 16)
      vstore(y + m * H + i,
                       vmul(vload(weight + i), vmul(vload(row + i), inv)));
  }
}

// Rotary position embedding of `heads` heads of `dim` in each row of x [M, heads * dim], in place:
// x * cos + rotate_half(x) * sin, with cos and sin [M, dim].
void rotate(float* x, int64_t M, int64_t heads, int64_t dim, const float* cos, const float* sin) {
  const int64_t half = dim / 2;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (m * heads + h) * dim;
      const float* c = cos + m * dim;
      const float* s = sin + m * dim;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        // Which product is fused, spelled out: a compiler contracts a * c - b * s as it likes, and
        // differently for each instruction set.
        v[i] = std::fma(a, c[i], -(b * s[i]));
        v[i + half] = std::fma(b, c[i + half], a * s[i + half]);
      }
    }
}

// The scheduler's keys and values are float32, or float16 (`scheduler.kv_cache`: half the memory;
// decoding measured as fast, the conversion costing about what the halved reads save); either way
// the attention computes in float32. 16 of them at a time, to and from float32 (rounded to nearest
// even, as torch's conversion does).
inline vf vload16(const float* p) { return vload(p); }
inline vf vload16(const at::Half* p) { return vload_half(p); }
inline void vstore16(float* p, vf v) { vstore(p, v); }
inline void vstore16(at::Half* p, vf v) { vstore_half(p, v); }

template <typename T>
inline float dot(const float* a, const T* b, int64_t dim) {
  vf acc = vmul(vload(a), vload16(b));
  for (int64_t i = 16; i < dim; i += 16) acc = vfmadd(vload(a + i), vload16(b + i), acc);
  return vsum(acc);
}

// Attention of a prompt's new tokens over a cache (a follow-up turn): T new tokens' queries
// (positions fed .. fed + T - 1) over the cache's columns 0 .. fed + T - 1, each seeing the columns
// up to its own; `groups` query heads share each key head. q float32 [heads, T, dim] contiguous;
// keys, values [kv_heads, capacity, dim] (rows of dim contiguous, any stride between columns and
// heads). Returns [T, heads * dim], as the output projection takes it.
//
// A key head's columns are transposed once (tiles of 16 columns by dim); a query head's scores
// then come from FMAs of a broadcast query component by 16 columns' components, Q queries at a
// time, over the columns those queries may see; softmax per query; then the values weighted by Q
// queries' probabilities at a time.

constexpr int kAttendQueries = 6;  // queries computed together (their sums stay in registers)

template <int Q>
inline void attend_scores(const float* qh, int64_t t0, int64_t dim, const float* kg, int64_t fed, float scale,
                          float* scores, int64_t width) {
  const int64_t seen = fed + t0 + Q;
  for (int64_t tile = 0; tile * 16 < seen; ++tile) {
    vf acc[Q];
    UNROLL for (int i = 0; i < Q; ++i) acc[i] = vzero();
    const float* kd = kg + tile * dim * 16;
    for (int64_t d = 0; d < dim; ++d) {
      const vf column = vload(kd + d * 16);
      UNROLL for (int i = 0; i < Q; ++i) acc[i] = vfmadd(vset(qh[(t0 + i) * dim + d]), column, acc[i]);
    }
    UNROLL for (int i = 0; i < Q; ++i) {
      const int64_t open = std::clamp<int64_t>(fed + t0 + i + 1 - tile * 16, 0, 16);  // up to its own column
      vstore(scores + (t0 + i) * width + tile * 16, vselect(vfirst(open), vmul(acc[i], vset(scale)), vset(-INFINITY)));
    }
  }
}

template <int Q, typename T>
inline void attend_values(const float* scores, int64_t width, const float* norm, int64_t t0, int64_t fed,
                          const T* vg, int64_t vs1, int64_t dim, float* out, int64_t row_stride) {
  const int64_t seen = fed + t0 + Q;
  for (int64_t v0 = 0; v0 < dim; v0 += 64) {
    if (dim - v0 >= 64) {
      vf acc[Q][4];
      UNROLL for (int i = 0; i < Q; ++i) UNROLL for (int j = 0; j < 4; ++j) acc[i][j] = vzero();
      for (int64_t c = 0; c < seen; ++c) {
        const T* v = vg + c * vs1 + v0;
        vf value[4];
        UNROLL for (int j = 0; j < 4; ++j) value[j] = vload16(v + j * 16);
        UNROLL for (int i = 0; i < Q; ++i) {
          const vf p = vset(scores[(t0 + i) * width + c]);
          UNROLL for (int j = 0; j < 4; ++j) acc[i][j] = vfmadd(p, value[j], acc[i][j]);
        }
      }
      UNROLL for (int i = 0; i < Q; ++i) UNROLL for (int j = 0; j < 4; ++j)
        vstore(out + (t0 + i) * row_stride + v0 + j * 16, vmul(acc[i][j], vset(norm[t0 + i])));
    } else {
      for (int64_t j = v0; j < dim; j += 16) {
        vf acc[Q];
        UNROLL for (int i = 0; i < Q; ++i) acc[i] = vzero();
        for (int64_t c = 0; c < seen; ++c) {
          const vf value = vload16(vg + c * vs1 + j);
          UNROLL for (int i = 0; i < Q; ++i)
            acc[i] = vfmadd(vset(scores[(t0 + i) * width + c]), value, acc[i]);
        }
        UNROLL for (int i = 0; i < Q; ++i)
          vstore(out + (t0 + i) * row_stride + j, vmul(acc[i], vset(norm[t0 + i])));
      }
    }
  }
}

template <typename KV>
void attend_into(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int64_t fed, double scale,
                 at::Tensor& result) {
  const int64_t heads = q.size(0), T = q.size(1), dim = q.size(2);
  const int64_t kv_heads = keys.size(0), groups = heads / kv_heads, C = fed + T;
  const int64_t tiles = (C + 15) / 16, width = tiles * 16;
  const int64_t ks0 = keys.stride(0), ks1 = keys.stride(1), vs0 = values.stride(0), vs1 = values.stride(1);
  const KV* kp = keys.data_ptr<KV>();
  const KV* vp = values.data_ptr<KV>();
  const float* qp = q.data_ptr<float>();
  // Each key head's columns transposed by tiles of 16: [kv_heads][tiles][dim][16], zeros past C.
  std::vector<float> kt(kv_heads * tiles * dim * 16, 0.f);
  at::parallel_for(0, kv_heads, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t c = 0; c < C; ++c) {
        const KV* k = kp + g * ks0 + c * ks1;
        float* out = kt.data() + ((g * tiles + c / 16) * dim) * 16 + c % 16;
        for (int64_t d = 0; d < dim; ++d) out[d * 16] = float(k[d]);
      }
  });
  float* rp = result.data_ptr<float>();
  at::parallel_for(0, heads, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> scores(T * width), norm(T);
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t g = h / groups;
      const float* qh = qp + h * T * dim;
      in_blocks<kAttendQueries>(T, [&](int64_t t0, auto count) {
        attend_scores<decltype(count)::value>(qh, t0, dim, kt.data() + g * tiles * dim * 16, fed, float(scale),
                                              scores.data(), width);
      });
      // Softmax of each query's scores, as far as its block of queries computed them (the columns
      // past its own hold -inf, which become 0).
      for (int64_t t = 0; t < T; ++t) {
        float* row = scores.data() + t * width;
        const int64_t block = t - t % kAttendQueries;
        const int64_t span = (fed + std::min(T, block + kAttendQueries) + 15) / 16 * 16;
        vf top = vset(-INFINITY);
        for (int64_t c = 0; c < span; c += 16) top = vmax(top, vload(row + c));
        const vf shift = vset(vmaxall(top));
        vf total = vzero();
        for (int64_t c = 0; c < span; c += 16) {
          const vf x = vload(row + c);
          const vf p = vselect(vne(x, vset(-INFINITY)), vexp(vsub(x, shift)), vzero());
          vstore(row + c, p);
          total = vadd(total, p);
        }
        norm[t] = 1.f / vsum(total);
      }
      in_blocks<kAttendQueries>(T, [&](int64_t t0, auto count) {
        attend_values<decltype(count)::value>(scores.data(), width, norm.data(), t0, fed, vp + g * vs0, vs1, dim,
                                              rp + h * dim, heads * dim);
      });
    }
  });
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int64_t fed, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.is_contiguous(), "q: float32 [heads, T, dim]");
  const int64_t heads = q.size(0), T = q.size(1), dim = q.size(2);
  const bool half = keys.scalar_type() == at::kHalf;
  TORCH_CHECK(keys.dim() == 3 && values.dim() == 3 && (half || keys.scalar_type() == at::kFloat) &&
                  values.scalar_type() == keys.scalar_type() && keys.sizes() == values.sizes() &&
                  keys.size(2) == dim && keys.stride(2) == 1 && values.stride(2) == 1 && heads % keys.size(0) == 0,
              "keys, values: float32 or float16 [kv_heads, capacity, dim]");
  TORCH_CHECK(dim % 16 == 0 && fed >= 0 && T > 0 && fed + T <= keys.size(1),
              "dim a multiple of 16; columns in the cache");
  at::Tensor result = at::empty({T, heads * dim}, q.options());
  if (half)
    attend_into<at::Half>(q, keys, values, fed, scale, result);
  else
    attend_into<float>(q, keys, values, fed, scale, result);
  return result;
}

// Projections `which` of a layer, all of the same input x [M, K], into `outs`: in one pass when all
// of them are in VNNI layouts (`vnni_products`), else one after the other.
void products_into(const float* xp, int64_t M, int64_t K, at::TensorList weights, at::TensorList scales,
                   const float* const* bias, at::IntArrayRef bits, bool bf16, std::initializer_list<int> which,
                   std::initializer_list<float*> outs) {
  bool vnni = true;
  for (int i : which) vnni = vnni && weights[i].dim() == 4;
  auto out = outs.begin();
  if (vnni) {
    std::vector<VnniProduct> products;
    for (int i : which) products.push_back({weights[i], scales[i], bias[i], *out++, bits[i]});
    return vnni_products(xp, M, K, products);
  }
  for (int i : which) linear_into(xp, M, K, weights[i], scales[i], bias[i], *out++, bits[i], bf16);
}

// The new token's keys and values (k, v [M, kv_heads, dim]) into column `column` of the cache.
template <typename KV>
void write_column(const float* k, const float* v, KV* kp, KV* vp, int64_t s0, int64_t s1, int64_t s2, int64_t M,
                  int64_t kv_heads, int64_t dim, int64_t column) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < kv_heads; ++g)
      for (int64_t d = 0; d < dim; d += 16) {
        vstore16(kp + m * s0 + g * s1 + column * s2 + d, vload(k + (m * kv_heads + g) * dim + d));
        vstore16(vp + m * s0 + g * s1 + column * s2 + d, vload(v + (m * kv_heads + g) * dim + d));
      }
}

// decode_layer's attention: each row's new token (q [M, heads, dim]; its key and value already in
// column `column`) over the row's own columns starts[m]..column of keys, values [M, kv_heads,
// capacity, dim] (strides s0, s1, s2), into att [M, heads * dim].
//
// A row's key head at a time, with its `groups` query heads: each tile of 16 columns is read once
// for all of them (from L1 after the first; float16 converted once), not once per query head (a
// long conversation's cache is megabytes a reply and a step: read from memory once, not from L2
// for every query head). Each head's sums are the same operations in the same order as one head at
// a time.
//
// `D`: the head size when it is known at compile time (64, the default and the test model's, with
// columns D apart: the loops over it unrolled, every address an offset from one pointer; long
// conversations spent much longer in attention with it at run time), else 0.
template <typename KV, int D>
void decode_attention(const float* q, const KV* kp, const KV* vp, int64_t s0, int64_t s1, int64_t stride, int64_t M,
                      int64_t heads, int64_t groups, int64_t size, int64_t column, at::IntArrayRef starts,
                      float scale, float* att) {
  const int64_t dim = D > 0 ? D : size, s2 = D > 0 ? D : stride;
  const int64_t kv_heads = heads / groups, width = column + 16;
  at::parallel_for(0, M * kv_heads, 1, [&](int64_t t0, int64_t t1) {
    Scratch<float> p(groups * width), sums(2 * groups * dim), tile(16 * dim);
    std::vector<float> top(groups), norm(groups);
    // n columns of a key or value head from `from` on, as float32 rows `apart` floats apart: the
    // cache's own when it keeps float32, else converted into `tile`.
    auto columns = [&](const KV* from, int64_t n, int64_t& apart) -> const float* {
      if constexpr (std::is_same_v<KV, float>) {
        apart = s2;
        return from;
      } else {
        for (int64_t c = 0; c < n; ++c)
          for (int64_t d = 0; d < dim; d += 16) vstore(tile.data() + c * dim + d, vload16(from + c * s2 + d));
        apart = dim;
        return tile.data();
      }
    };
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m = t / kv_heads, g = t % kv_heads;
      const int64_t first = starts[m], count = column + 1 - first;
      const KV* kb = kp + m * s0 + g * s1 + first * s2;
      const KV* vb = vp + m * s0 + g * s1 + first * s2;
      const int64_t h0 = m * heads + g * groups;  // the group's first query head (rows of q and att)
      // Scores 16 columns at a time: each column's products summed across lanes together
      // (`sum16x16`), not one horizontal sum per column.
      std::fill(top.begin(), top.end(), -INFINITY);
      int64_t c0 = 0;
      for (; c0 + 16 <= count; c0 += 16) {
        int64_t ks;
        const float* kt = columns(kb + c0 * s2, 16, ks);
        for (int64_t h = 0; h < groups; ++h) {
          const float* qv = q + (h0 + h) * dim;
          vf part[16];
          UNROLL for (int j = 0; j < 16; ++j) part[j] = vzero();
          for (int64_t d = 0; d < dim; d += 16) {
            const vf qd = vload(qv + d);
            UNROLL for (int j = 0; j < 16; ++j) part[j] = vfmadd(qd, vload(kt + j * ks + d), part[j]);
          }
          const vf scores = vmul(vsum16x16(part), vset(scale));
          vstore(p.data() + h * width + c0, scores);
          top[h] = std::max(top[h], vmaxall(scores));
        }
      }
      for (int64_t h = 0; h < groups; ++h) {
        const float* qv = q + (h0 + h) * dim;
        float* ph = p.data() + h * width;
        for (int64_t c = c0; c < count; ++c) {
          ph[c] = dot(qv, kb + c * s2, dim) * scale;
          top[h] = std::max(top[h], ph[c]);
        }
        vf total = vzero();
        const vf shift = vset(top[h]);
        int64_t c = 0;
        for (; c + 16 <= count; c += 16) {
          vf e = vexp(vsub(vload(ph + c), shift));
          vstore(ph + c, e);
          total = vadd(total, e);
        }
        if (c < count) {
          vf e = vexp(vsub(vload_first(ph + c, count - c), shift));
          vstore_first(ph + c, count - c, e);
          total = vadd(total, vselect(vfirst(count - c), e, vzero()));
        }
        norm[h] = 1.f / vsum(total);
      }
      // The values weighted by the probabilities, 16 columns at a time for every head: 4 vectors of a
      // column at a time, and even and odd columns into their own sums (one chain of FMAs per vector
      // waited on each FMA's latency), kept in `sums` between tiles.
      float* even_sums = sums.data();
      float* odd_sums = sums.data() + groups * dim;
      std::fill(even_sums, even_sums + 2 * groups * dim, 0.f);
      for (int64_t c0 = 0; c0 < count; c0 += 16) {
        const int64_t n = std::min<int64_t>(16, count - c0);
        int64_t vs;
        const float* vt = columns(vb + c0 * s2, n, vs);
        for (int64_t h = 0; h < groups; ++h) {
          const float* ph = p.data() + h * width + c0;
          for (int64_t i = 0; i < dim; i += 64) {
            const int64_t nv = std::min<int64_t>(4, (dim - i) / 16);
            float* es = even_sums + h * dim + i;
            float* os = odd_sums + h * dim + i;
            vf even[4] = {}, odd[4] = {};  // those past nv are never used
            UNROLL for (int j = 0; j < 4; ++j) {
              if (j < nv) {
                even[j] = vload(es + 16 * j);
                odd[j] = vload(os + 16 * j);
              }
            }
            int64_t c2 = 0;
            for (; c2 + 2 <= n; c2 += 2) {
              const vf pe = vset(ph[c2]), po = vset(ph[c2 + 1]);
              const float* ve = vt + c2 * vs + i;
              UNROLL for (int j = 0; j < 4; ++j) {
                if (j < nv) {
                  even[j] = vfmadd(pe, vload(ve + 16 * j), even[j]);
                  odd[j] = vfmadd(po, vload(ve + vs + 16 * j), odd[j]);
                }
              }
            }
            if (c2 < n) {  // the last column, when their number is odd
              const vf pe = vset(ph[c2]);
              UNROLL for (int j = 0; j < 4; ++j)
                if (j < nv) even[j] = vfmadd(pe, vload(vt + c2 * vs + i + 16 * j), even[j]);
            }
            UNROLL for (int j = 0; j < 4; ++j) {
              if (j < nv) {
                vstore(es + 16 * j, even[j]);
                vstore(os + 16 * j, odd[j]);
              }
            }
          }
        }
      }
      for (int64_t h = 0; h < groups; ++h) {
        const vf scale_h = vset(norm[h]);
        float* out = att + (h0 + h) * dim;
        for (int64_t d = 0; d < dim; d += 16)
          vstore(out + d, vmul(vadd(vload(even_sums + h * dim + d),
                                                                vload(odd_sums + h * dim + d)),
                                                  scale_h));
      }
    }
  });
}

// Runs a decoder layer on x [M, hidden] (one new token per row), in place. The new keys and values
// go into column `column` of the cache [M, kv_heads, capacity, dim]; row r attends over its own
// columns starts[r]..column only (no padding enters its sums, so a row's result does not depend on
// the others). Every projection is an int8 or int4 weight (by dtype) with its scales and an
// optional bias, in the order q, k, v, o, gate, up, down; the MLP's activation is SiLU.
void decode_layer(at::Tensor& x, const at::Tensor& input_norm, const at::Tensor& post_norm, double eps,
                  at::TensorList weights, at::TensorList scales, const c10::List<std::optional<at::Tensor>>& biases,
                  at::IntArrayRef bits, bool bf16, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& keys,
                  at::Tensor& values, int64_t column, at::IntArrayRef starts, int64_t heads, int64_t kv_heads,
                  double scale) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: float32 [M, hidden]");
  TORCH_CHECK(weights.size() == 7 && scales.size() == 7 && biases.size() == 7 && bits.size() == 7, "seven projections");
  const int64_t M = x.size(0), H = x.size(1);
  const int64_t dim = keys.size(3), groups = heads / kv_heads;
  TORCH_CHECK(H % 16 == 0 && dim % 16 == 0 && heads % kv_heads == 0, "hidden and head sizes: multiples of 16");
  TORCH_CHECK((keys.scalar_type() == at::kFloat || keys.scalar_type() == at::kHalf) &&
                  values.scalar_type() == keys.scalar_type() && keys.sizes() == values.sizes() &&
                  keys.size(0) == M && keys.size(1) == kv_heads && column < keys.size(2) && keys.stride(3) == 1 &&
                  values.stride(3) == 1 && keys.strides() == values.strides(),
              "keys, values: float32 or float16 [M, kv_heads, capacity, dim]");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.numel() == M * dim && sin.numel() == M * dim,
              "cos, sin: [M, dim]");
  TORCH_CHECK(int64_t(starts.size()) == M, "a start per row");
  for (int64_t m = 0; m < M; ++m) TORCH_CHECK(starts[m] >= 0 && starts[m] <= column, "a row starts within its columns");
  TORCH_CHECK(input_norm.is_contiguous() && post_norm.is_contiguous() && input_norm.numel() == H &&
                  post_norm.numel() == H && input_norm.scalar_type() == at::kFloat,
              "norm weights: float32 [hidden]");
  std::vector<int64_t> n(7);
  const int64_t in_features[7] = {H, H, H, heads * dim, H, H, -1};
  for (int i = 0; i < 6; ++i) n[i] = features(weights[i], scales[i], in_features[i]);
  n[6] = features(weights[6], scales[6], n[4]);
  TORCH_CHECK(n[0] == heads * dim && n[1] == kv_heads * dim && n[2] == kv_heads * dim && n[3] == H && n[5] == n[4] &&
                  n[6] == H,
              "projection shapes");
  const float* bias[7];
  for (int i = 0; i < 7; ++i) bias[i] = bias_of(biases.get(i), n[i]);

  float* xp = x.data_ptr<float>();
  Scratch<float> h(M * H), q(M * n[0]), k(M * n[1]), v(M * n[2]), att(M * n[0]), o(M * H);
  Scratch<float> gate(M * n[4]), up(M * n[4]);
  // Attention.
  rms_norm(xp, M, H, input_norm.data_ptr<float>(), float(eps), h.data());
  products_into(h.data(), M, H, weights, scales, bias, bits, bf16, {0, 1, 2}, {q.data(), k.data(), v.data()});
  rotate(q.data(), M, heads, dim, cos.data_ptr<float>(), sin.data_ptr<float>());
  rotate(k.data(), M, kv_heads, dim, cos.data_ptr<float>(), sin.data_ptr<float>());
  const int64_t s0 = keys.stride(0), s1 = keys.stride(1), s2 = keys.stride(2);
  if (keys.scalar_type() == at::kHalf) {
    at::Half* kp = keys.data_ptr<at::Half>();
    at::Half* vp = values.data_ptr<at::Half>();
    write_column(k.data(), v.data(), kp, vp, s0, s1, s2, M, kv_heads, dim, column);
    auto attention = dim == 64 && s2 == 64 ? decode_attention<at::Half, 64> : decode_attention<at::Half, 0>;
    attention(q.data(), kp, vp, s0, s1, s2, M, heads, groups, dim, column, starts, float(scale), att.data());
  } else {
    float* kp = keys.data_ptr<float>();
    float* vp = values.data_ptr<float>();
    write_column(k.data(), v.data(), kp, vp, s0, s1, s2, M, kv_heads, dim, column);
    auto attention = dim == 64 && s2 == 64 ? decode_attention<float, 64> : decode_attention<float, 0>;
    attention(q.data(), kp, vp, s0, s1, s2, M, heads, groups, dim, column, starts, float(scale), att.data());
  }
  linear_into(att.data(), M, n[0], weights[3], scales[3], bias[3], o.data(), bits[3], bf16);
  for (int64_t i = 0; i < M * H; ++i) xp[i] += o[i];
  // MLP.
  rms_norm(xp, M, H, post_norm.data_ptr<float>(), float(eps), h.data());
  products_into(h.data(), M, H, weights, scales, bias, bits, bf16, {4, 5}, {gate.data(), up.data()});
  const int64_t F = M * n[4];
  // silu(gate) * up = gate / (1 + e^-gate) * up, split between the threads 1024 values at a time
  at::parallel_for(0, (F + 1023) / 1024, 8, [&](int64_t c0, int64_t c1) {
    const int64_t end = std::min(F, c1 * 1024);
    int64_t i = c0 * 1024;
    for (; i + 16 <= end; i += 16) {
      vf g = vload(gate.data() + i);
      vf e = vexp(vsub(vzero(), g));
      vstore(gate.data() + i, vmul(vdiv(g, vadd(vset(1.f), e)),
                                                      vload(up.data() + i)));
    }
    for (; i < end; ++i) gate[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
  });
  linear_into(gate.data(), M, n[4], weights[6], scales[6], bias[6], o.data(), bits[6], bf16);
  for (int64_t j = 0; j < M * H; ++j) xp[j] += o[j];
}

// ---- The output head's shortlist --------------------------------------------------------------------

// A row's `count` largest estimates (ties: the lower index first), by way of the largest of each run
// of 64: the count-th largest of those maxima is at most the count-th largest estimate, so only the
// runs whose maximum reaches it hold candidates. One pass over the row (faster than torch's topk
// over a large vocabulary).
void top_estimates(const float* row, int64_t V, int64_t count, std::vector<int64_t>& top) {
  constexpr int64_t kRun = 64;
  const int64_t runs = (V + kRun - 1) / kRun;
  std::vector<float> maxima(runs);
  for (int64_t r = 0; r < runs; ++r) {
    const int64_t start = r * kRun, n = std::min(kRun, V - start);
    float most = -INFINITY;  // NaNs left out (max_ps returns its second operand when one is NaN)
    if (n == kRun) {
      vf m = vset(-INFINITY);
      UNROLL for (int j = 0; j < 4; ++j) m = vmax(vload(row + start + 16 * j), m);
      most = vmaxall(m);
    } else {
      for (int64_t i = 0; i < n; ++i) most = row[start + i] > most ? row[start + i] : most;
    }
    maxima[r] = most;
  }
  float least = -INFINITY;  // fewer runs than candidates (a small vocabulary): every estimate
  if (count <= runs) {
    std::vector<float> order(maxima);
    std::nth_element(order.begin(), order.begin() + (count - 1), order.end(), std::greater<float>());
    least = order[count - 1];
  }
  std::vector<std::pair<float, int64_t>> candidates;
  for (int64_t r = 0; r < runs; ++r) {
    if (!(maxima[r] >= least)) continue;
    for (int64_t i = r * kRun, end = std::min(V, i + kRun); i < end; ++i)
      if (row[i] >= least) candidates.emplace_back(row[i], i);
  }
  const auto better = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  const int64_t kept = std::min<int64_t>(count, candidates.size());  // fewer only with NaN estimates
  std::partial_sort(candidates.begin(), candidates.begin() + kept, candidates.end(), better);
  top.resize(kept);
  for (int64_t i = 0; i < kept; ++i) top[i] = candidates[i].second;
}

// The output head's exact logits for its shortlist: for each row of x [R, K], the `count` largest of
// its estimates [R, V] (float32, replaced in place) become x times the weight's row [V, K] (float32,
// or bf16) of that token; every logit then gets its bias, if any.
void shortlist(at::Tensor& logits, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
               int64_t count) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: float32 [R, K], contiguous");
  const int64_t R = x.size(0), K = x.size(1);
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == R && logits.scalar_type() == at::kFloat && logits.is_contiguous(),
              "logits: float32 [R, V], contiguous");
  const int64_t V = logits.size(1);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == V && weight.size(1) == K && weight.is_contiguous() &&
                  (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16),
              "weight: float32 or bf16 [V, K], contiguous");
  TORCH_CHECK(K % 16 == 0 && count > 0 && count <= V, "K a multiple of 16, 0 < count <= V");
  const float* bp = bias_of(bias, V);
  float* lp = logits.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const bool bf16 = weight.scalar_type() == at::kBFloat16;
  at::parallel_for(0, R, 1, [&](int64_t r0, int64_t r1) {
    std::vector<int64_t> top;
    std::vector<float> exact(count);
    for (int64_t r = r0; r < r1; ++r) {
      float* row = lp + r * V;
      const float* xr = xp + r * K;
      top_estimates(row, V, count, top);
      for (size_t i = 0; i < top.size(); ++i) {
        if (bf16) {
          const uint16_t* w = reinterpret_cast<const uint16_t*>(weight.data_ptr()) + top[i] * K;
          vf acc = vzero();
          for (int64_t k = 0; k < K; k += 16) acc = vfmadd(vload(xr + k), vload_bf16(w + k), acc);
          exact[i] = vsum(acc);
        } else {
          exact[i] = dot(xr, weight.data_ptr<float>() + top[i] * K, K);
        }
      }
      if (bp)
        for (int64_t v = 0; v < V; ++v) row[v] += bp[v];
      for (size_t i = 0; i < top.size(); ++i) row[top[i]] = exact[i] + (bp ? bp[top[i]] : 0.f);
    }
  });
}

// ---- The best token of each row ------------------------------------------------------------------

// argmax(logits): float32 [R, V] -> int64 [R], as torch.argmax(logits, -1) chooses: the first index
// of the largest value, or of the first NaN if there is one. One pass per row, 16 values at a time,
// each lane keeping its first largest (faster than torch's over a large vocabulary).
at::Tensor argmax(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.stride(1) == 1 && logits.size(1) > 0,
              "logits: float32 [rows, vocab], rows contiguous");
  const int64_t R = logits.size(0), V = logits.size(1), stride = logits.stride(0);
  at::Tensor best = at::empty({R}, logits.options().dtype(at::kLong));
  const float* lp = logits.data_ptr<float>();
  int64_t* bp = best.data_ptr<int64_t>();
  at::parallel_for(0, R, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = lp + r * stride;
      vf top = vset(-INFINITY);
      vi where = viset(-1);
      vi at = viota();
      const vi step = viset(16);
      unsigned nan = 0;
      int64_t v = 0;
      for (; v + 16 <= V && !nan; v += 16, at = viadd(at, step)) {
        const vf x = vload(row + v);
        nan = vbits(vnan(x));
        const vm larger = vgt(x, top);  // strictly: the first stays
        top = vselect(larger, x, top);
        where = viselect(larger, at, where);
      }
      int64_t found = -1;
      if (nan) {
        found = v - 16 + __builtin_ctz(nan);
      } else {
        float value = -INFINITY;
        float tops[16];
        int32_t indices[16];
        vstore(tops, top);
        vistore(indices, where);
        for (int l = 0; l < 16; ++l)
          if (indices[l] >= 0 && (tops[l] > value || (tops[l] == value && (found < 0 || indices[l] < found)))) {
            value = tops[l];
            found = indices[l];
          }
        for (; v < V; ++v) {
          const float x = row[v];
          if (std::isnan(x)) {
            found = v;
            break;
          }
          if (x > value) {
            value = x;
            found = v;
          }
        }
        if (found < 0) found = 0;  // every value -inf: the first, as torch's
      }
      bp[r] = found;
    }
  });
  return best;
}

}  // namespace

// Each instruction set's library registers its own namespace (torch.ops.chinwag_avx512,
// chinwag_avx2, chinwag_neon), so a process may hold several and each model calls its own.
#if defined(CHINWAG_AVX512)
#define CHINWAG_OPS chinwag_avx512
#elif defined(CHINWAG_AVX2)
#define CHINWAG_OPS chinwag_avx2
#else
#define CHINWAG_OPS chinwag_neon
#endif
#define CHINWAG_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define CHINWAG_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

CHINWAG_LIBRARY(CHINWAG_OPS, m) {
  m.def("linear(Tensor x, Tensor weight, Tensor scales, Tensor? bias, int bits, bool bf16) -> Tensor");
  m.def(
      "decode_layer(Tensor(a!) x, Tensor input_norm, Tensor post_norm, float eps, Tensor[] weights, "
      "Tensor[] scales, Tensor?[] biases, int[] bits, bool bf16, Tensor cos, Tensor sin, Tensor(b!) keys, Tensor(c!) values, "
      "int column, int[] starts, int heads, int kv_heads, float scale) -> ()");
  m.def("has_bf16() -> bool");
  m.def("has_vnni() -> bool");
  m.def("attend(Tensor q, Tensor keys, Tensor values, int fed, float scale) -> Tensor");
  m.def("shortlist(Tensor(a!) logits, Tensor x, Tensor weight, Tensor? bias, int count) -> ()");
  m.def("argmax(Tensor logits) -> Tensor");
}

CHINWAG_LIBRARY_IMPL(CHINWAG_OPS, CPU, m) {
  m.impl("linear", &linear);
  m.impl("decode_layer", &decode_layer);
  m.impl("attend", &attend);
  m.impl("shortlist", &shortlist);
  m.impl("argmax", &argmax);
}

CHINWAG_LIBRARY_IMPL(CHINWAG_OPS, CatchAll, m) {
  m.impl("has_bf16", &has_bf16);
  m.impl("has_vnni", &has_vnni);
}
