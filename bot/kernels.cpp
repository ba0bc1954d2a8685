// chinwag's CPU kernels for weight-only quantized linear layers (AVX-512), built by bot/kernels.py.
//
// Decoding reads every weight once per step, so these kernels stream the weights once and keep the
// activations (a few rows, in L1) in float32. torch's own kernels (`_weight_int8pack_mm`,
// `_weight_int4pack_mm_for_cpu`) reached 15 and 20 GB/s from memory on 2 cores where the memory
// gives 34; they also take bf16 inputs, which costs two conversions around every layer.
//
// Both kernels compute each row of the output with the same sequence of operations whatever the
// number of rows, so a reply's logits do not depend on which other replies share its batch.
//
// int8_linear(x, weight, scales, bias): x float32 [M, K]; weight int8 [N, K], row-major;
//   scales bf16 [N] (one per output channel); bias float32 [N] or None. Returns float32 [M, N].
// int4_linear(x, weight, scales_and_zeros, bias): weight uint8 in torch's CPU int4 layout
//   ([N / 64, K, 32]: per block of 64 output channels and per input, 32 bytes whose low nibbles
//   hold channels 0-31 and high nibbles channels 32-63); scales_and_zeros bf16 [K / 32, N, 2]; a
//   weight is (q - 8) * scale + zero. Returns float32 [M, N].

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>

namespace {

// Loops over the rows and vectors of accumulators are unrolled before GCC's scalar replacement, so
// the accumulators live in registers (otherwise every step stores them to the stack).
#define UNROLL _Pragma("GCC unroll 16")

constexpr int64_t kRows = 4;     // rows of x computed together (their accumulators stay in registers)
constexpr int64_t kGroup = 32;   // int4: inputs per scale/zero pair
constexpr int64_t kBlock = 64;   // int4: output channels per packed block
// int8: prefetch the weights of the channels this far ahead (the hardware prefetcher alone reached
// 15 GB/s on these short, interleaved streams; a prefetch past the end is harmless).
constexpr int64_t kAhead = 16;

inline float sum16(__m512 v) { return _mm512_reduce_add_ps(v); }

// int8: 4 output channels at a time, each a dot product along K in steps of 16.
template <int R>
void int8_rows(const float* x, int64_t K, const int8_t* w, const uint16_t* scales, const float* bias,
               float* y, int64_t N, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    __m512 acc[R][4];
    UNROLL for (int r = 0; r < R; ++r)
      UNROLL for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
    const int8_t* w0 = w + n * K;
    for (int64_t k = 0; k < K; k += 16) {
      if ((k & 63) == 0) {
        UNROLL for (int c = 0; c < 4; ++c) _mm_prefetch((const char*)(w0 + (c + kAhead) * K + k), _MM_HINT_T0);
      }
      __m512 wv[4];
      UNROLL for (int c = 0; c < 4; ++c)
        wv[c] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(w0 + c * K + k))));
      UNROLL for (int r = 0; r < R; ++r) {
        __m512 xv = _mm512_loadu_ps(x + r * K + k);
        UNROLL for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_fmadd_ps(wv[c], xv, acc[r][c]);
      }
    }
    UNROLL for (int c = 0; c < 4; ++c) {
      float s;
      uint32_t bits = uint32_t(scales[n + c]) << 16;
      std::memcpy(&s, &bits, 4);
      float b = bias ? bias[n + c] : 0.f;
      UNROLL for (int r = 0; r < R; ++r) y[r * N + n + c] = sum16(acc[r][c]) * s + b;
    }
  }
  for (; n < n1; ++n) {
    __m512 acc[R];
    UNROLL for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const int8_t* w0 = w + n * K;
    for (int64_t k = 0; k < K; k += 16) {
      __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(w0 + k))));
      UNROLL for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + r * K + k), acc[r]);
    }
    float s;
    uint32_t bits = uint32_t(scales[n]) << 16;
    std::memcpy(&s, &bits, 4);
    float b = bias ? bias[n] : 0.f;
    UNROLL for (int r = 0; r < R; ++r) y[r * N + n] = sum16(acc[r]) * s + b;
  }
}

// int4: one block of 64 output channels (4 vectors of 16) at a time; within a group of 32 inputs
// the products q * x are summed, then scaled: sum(w x) = scale * sum(q x) + (zero - 8 scale) * sum(x).
template <int R>
void int4_rows(const float* x, const float* xsum, int64_t K, const uint8_t* w, const uint32_t* sz,
               const float* bias, float* y, int64_t N, int64_t b0, int64_t b1) {
  const __m512i low = _mm512_set1_epi32(0xF);
  const __m512i high_half = _mm512_set1_epi32(int32_t(0xFFFF0000u));
  const __m512 eight = _mm512_set1_ps(8.f);
  const int64_t groups = K / kGroup;
  for (int64_t b = b0; b < b1; ++b) {
    __m512 total[R][4];
    UNROLL for (int r = 0; r < R; ++r)
      UNROLL for (int c = 0; c < 4; ++c) total[r][c] = _mm512_setzero_ps();
    const uint8_t* wb = w + b * K * (kBlock / 2);
    for (int64_t g = 0; g < groups; ++g) {
      __m512 acc[R][4];
      UNROLL for (int r = 0; r < R; ++r)
        UNROLL for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
      for (int64_t k = g * kGroup; k < (g + 1) * kGroup; ++k) {
        const uint8_t* p = wb + k * (kBlock / 2);
        __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
        __m512i v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + 16)));
        __m512 q[4] = {
            _mm512_cvtepi32_ps(_mm512_and_si512(v0, low)),   // channels 0-15
            _mm512_cvtepi32_ps(_mm512_and_si512(v1, low)),   // 16-31
            _mm512_cvtepi32_ps(_mm512_srli_epi32(v0, 4)),    // 32-47
            _mm512_cvtepi32_ps(_mm512_srli_epi32(v1, 4)),    // 48-63
        };
        UNROLL for (int r = 0; r < R; ++r) {
          __m512 xv = _mm512_set1_ps(x[r * K + k]);
          UNROLL for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_fmadd_ps(q[c], xv, acc[r][c]);
        }
      }
      // Each 32-bit word is one channel's (scale, zero) pair of bf16: scale in the low half.
      const uint32_t* s = sz + g * N + b * kBlock;
      UNROLL for (int c = 0; c < 4; ++c) {
        __m512i pair = _mm512_loadu_si512((const void*)(s + c * 16));
        __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
        __m512 zero = _mm512_castsi512_ps(_mm512_and_si512(pair, high_half));
        __m512 offset = _mm512_fnmadd_ps(eight, scale, zero);  // zero - 8 * scale
        UNROLL for (int r = 0; r < R; ++r) {
          total[r][c] = _mm512_fmadd_ps(scale, acc[r][c], total[r][c]);
          total[r][c] = _mm512_fmadd_ps(offset, _mm512_set1_ps(xsum[r * groups + g]), total[r][c]);
        }
      }
    }
    UNROLL for (int c = 0; c < 4; ++c) {
      const int64_t n = b * kBlock + c * 16;
      __m512 bv = bias ? _mm512_loadu_ps(bias + n) : _mm512_setzero_ps();
      UNROLL for (int r = 0; r < R; ++r) _mm512_storeu_ps(y + r * N + n, _mm512_add_ps(total[r][c], bv));
    }
  }
}

template <typename F>
void by_rows(int64_t M, const F& f) {
  for (int64_t m = 0; m < M; m += kRows) {
    switch (std::min(kRows, M - m)) {
      case 4: f(m, std::integral_constant<int, 4>{}); break;
      case 3: f(m, std::integral_constant<int, 3>{}); break;
      case 2: f(m, std::integral_constant<int, 2>{}); break;
      default: f(m, std::integral_constant<int, 1>{}); break;
    }
  }
}

const float* bias_of(const std::optional<at::Tensor>& bias, int64_t N) {
  if (!bias.has_value()) return nullptr;
  TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == N, "bias: float32 [N]");
  return bias->data_ptr<float>();
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: float32 [M, K], contiguous");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.is_contiguous(), "weight: int8 [N, K]");
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  TORCH_CHECK(weight.size(1) == K && K % 16 == 0, "weight: [N, K] with K a multiple of 16");
  TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && scales.is_contiguous() && scales.numel() == N, "scales: bf16 [N]");
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* wp = weight.data_ptr<int8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  const float* bp = bias_of(bias, N);
  float* yp = y.data_ptr<float>();
  // Channels in runs of 4 split between the threads; each thread reads its own part of the weight.
  // Every run of rows reads the same few channels while they are still in L1.
  at::parallel_for(0, (N + 3) / 4, 16, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n0 = q * 4, n1 = std::min(N, n0 + 4);
      by_rows(M, [&](int64_t m, auto rows) {
        int8_rows<decltype(rows)::value>(xp + m * K, K, wp, sp, bp, yp + m * N, N, n0, n1);
      });
    }
  });
  return y;
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales_and_zeros,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: float32 [M, K], contiguous");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % kGroup == 0, "K must be a multiple of 32");
  TORCH_CHECK(weight.scalar_type() == at::kByte && weight.is_contiguous() && weight.numel() % (K * kBlock / 2) == 0,
              "weight: uint8, torch's CPU int4 layout");
  const int64_t N = weight.numel() * 2 / K;
  TORCH_CHECK(N % kBlock == 0, "N must be a multiple of 64");
  TORCH_CHECK(scales_and_zeros.scalar_type() == at::kBFloat16 && scales_and_zeros.is_contiguous() &&
                  scales_and_zeros.numel() == (K / kGroup) * N * 2,
              "scales_and_zeros: bf16 [K / 32, N, 2]");
  const int64_t groups = K / kGroup;
  // Each row's sum over each group of inputs, for the zero points.
  at::Tensor xsum = at::empty({M, groups}, x.options());
  const float* xp = x.data_ptr<float>();
  float* xs = xsum.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      const float* p = xp + m * K + g * kGroup;
      xs[m * groups + g] = sum16(_mm512_add_ps(_mm512_loadu_ps(p), _mm512_loadu_ps(p + 16)));
    }
  at::Tensor y = at::empty({M, N}, x.options());
  const uint8_t* wp = weight.data_ptr<uint8_t>();
  const uint32_t* sp = reinterpret_cast<const uint32_t*>(scales_and_zeros.data_ptr());
  const float* bp = bias_of(bias, N);
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N / kBlock, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      by_rows(M, [&](int64_t m, auto rows) {
        int4_rows<decltype(rows)::value>(xp + m * K, xs + m * groups, K, wp, sp, bp, yp + m * N, N, b, b + 1);
      });
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(chinwag, m) {
  m.def("int8_linear(Tensor x, Tensor weight, Tensor scales, Tensor? bias) -> Tensor");
  m.def("int4_linear(Tensor x, Tensor weight, Tensor scales_and_zeros, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(chinwag, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("int4_linear", &int4_linear);
}
