// The vectors chinwag's kernels (kernels.cpp) are written in, so that each kernel is written once
// and compiled once per instruction set: AVX-512, AVX2 + FMA (+ F16C), and ARM NEON. kernels.py
// builds one library per instruction set from the same source with that set's compiler flags and
// chooses one at run time (`model.simd`).
//
// `vf` is 16 float32 lanes and `vi` 16 int32 lanes whatever the machine (one AVX-512 register, two
// AVX2 ones, four NEON ones): the kernels' loops, the order of their sums and their results are the
// same on every path. The reductions (`vsum`, `vsum16x16`) add in one fixed order, that of GCC's
// `_mm512_reduce_add_ps` and of the AVX-512 kernels, and every path fuses its multiply-adds, so a
// float32 kernel gives the same bits on each. `vb` is 64 bytes (16 lanes of 4): the weights of the
// integer dot products (`vdot_*`), exact in int32 on every path.

#pragma once

#include <cstdint>
#include <algorithm>
#include <cstring>

#if defined(__AVX512F__)
#define CHINWAG_AVX512 1
#define CHINWAG_ISA "avx512"
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CHINWAG_AVX2 1
#define CHINWAG_ISA "avx2"
#elif defined(__ARM_NEON) && defined(__aarch64__)
#define CHINWAG_NEON 1
#define CHINWAG_ISA "neon"
#else
#error "chinwag's kernels need AVX-512, AVX2 with FMA and F16C, or AArch64 NEON"
#endif

#if defined(CHINWAG_AVX512) || defined(CHINWAG_AVX2)
// GCC 12's AVX-512 intrinsics start from `_mm512_undefined_*` (a variable initialised with itself),
// which -Wuninitialized reports in every function that inlines them (GCC bug 105593, fixed in 13).
// The intrinsics are the compiler's own code, not ours: their warnings are silenced for them alone
// (first, as torch's headers include them too).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
#define CHINWAG_PREFETCH(p) _mm_prefetch((const char*)(p), _MM_HINT_T0)
#else
#include <arm_neon.h>
#define CHINWAG_PREFETCH(p) __builtin_prefetch((const void*)(p), 0, 3)
#endif

#define CHINWAG_INLINE inline __attribute__((always_inline))

namespace simd {

// ---- AVX-512 -----------------------------------------------------------------------------------
#if defined(CHINWAG_AVX512)

using vf = __m512;
using vi = __m512i;
using vb = __m512i;
using vm = __mmask16;
// The integer dot products need AVX512-VNNI, which not every AVX-512 CPU has (checked at run time):
// the functions that use them carry this target.
#define CHINWAG_DOT_TARGET __attribute__((target("avx512vnni")))
// vdot_s8 adds sum((w + 128) x): the caller takes 128 sum(x) off (see kernels.cpp's `vnni_int8`).
constexpr bool kDotFlips = true;
// Rows whose sums stay in registers (32 vector registers).
constexpr int kRegisterRows = 8;

CHINWAG_INLINE vf vzero() { return _mm512_setzero_ps(); }
CHINWAG_INLINE vf vset(float x) { return _mm512_set1_ps(x); }
CHINWAG_INLINE vf vload(const float* p) { return _mm512_loadu_ps(p); }
CHINWAG_INLINE void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
CHINWAG_INLINE vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
CHINWAG_INLINE vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
CHINWAG_INLINE vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
CHINWAG_INLINE vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
CHINWAG_INLINE vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
CHINWAG_INLINE vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
CHINWAG_INLINE vf vfmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
CHINWAG_INLINE vf vfnmadd(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
CHINWAG_INLINE vf vabs(vf a) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7FFFFFFF))); }
CHINWAG_INLINE float vsum(vf v) { return _mm512_reduce_add_ps(v); }
CHINWAG_INLINE float vmaxall(vf v) { return _mm512_reduce_max_ps(v); }
CHINWAG_INLINE vf vround(vf v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// p 2^n, n whole and in [-126, 127].
CHINWAG_INLINE vf vscale2(vf p, vf n) { return _mm512_scalef_ps(p, n); }
CHINWAG_INLINE vm vfirst(int64_t n) { return vm((1u << n) - 1); }  // lanes 0 .. n - 1, n <= 16
CHINWAG_INLINE vm vne(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_NEQ_OQ); }
CHINWAG_INLINE vm vgt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
CHINWAG_INLINE vm vnan(vf a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
CHINWAG_INLINE unsigned vbits(vm m) { return unsigned(m); }
CHINWAG_INLINE vf vselect(vm m, vf a, vf b) { return _mm512_mask_mov_ps(b, m, a); }  // a where m, else b
CHINWAG_INLINE vi viselect(vm m, vi a, vi b) { return _mm512_mask_mov_epi32(b, m, a); }
CHINWAG_INLINE vf vload_first(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(vfirst(n), p); }
CHINWAG_INLINE void vstore_first(float* p, int64_t n, vf v) { _mm512_mask_storeu_ps(p, vfirst(n), v); }
// 16 float16 values to float32 and back (to nearest even, as torch's conversion).
CHINWAG_INLINE vf vload_half(const void* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
CHINWAG_INLINE void vstore_half(void* p, vf v) {
  _mm256_storeu_si256((__m256i*)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// 16 bf16 values as float32 (their bits in the high halves).
CHINWAG_INLINE vf vload_bf16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

CHINWAG_INLINE vi vizero() { return _mm512_setzero_si512(); }
CHINWAG_INLINE vi viset(int32_t x) { return _mm512_set1_epi32(x); }
CHINWAG_INLINE vi viota() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
CHINWAG_INLINE vi viload(const void* p) { return _mm512_loadu_si512(p); }
CHINWAG_INLINE void vistore(void* p, vi v) { _mm512_storeu_si512(p, v); }
CHINWAG_INLINE vi viadd(vi a, vi b) { return _mm512_add_epi32(a, b); }
CHINWAG_INLINE vi visub(vi a, vi b) { return _mm512_sub_epi32(a, b); }
CHINWAG_INLINE vi viand(vi a, vi b) { return _mm512_and_si512(a, b); }
CHINWAG_INLINE vi vimin(vi a, vi b) { return _mm512_min_epi32(a, b); }
CHINWAG_INLINE vi vimax(vi a, vi b) { return _mm512_max_epi32(a, b); }
template <int S> CHINWAG_INLINE vi vishl(vi a) { return _mm512_slli_epi32(a, S); }
template <int S> CHINWAG_INLINE vi vishr(vi a) { return _mm512_srli_epi32(a, S); }   // logical
template <int S> CHINWAG_INLINE vi visar(vi a) { return _mm512_srai_epi32(a, S); }   // arithmetic
CHINWAG_INLINE int32_t visum(vi v) { return _mm512_reduce_add_epi32(v); }
CHINWAG_INLINE vf vfloat(vi v) { return _mm512_cvtepi32_ps(v); }
CHINWAG_INLINE vi vint(vf v) { return _mm512_cvtps_epi32(v); }  // to nearest even
CHINWAG_INLINE vf vbits_as_float(vi v) { return _mm512_castsi512_ps(v); }
CHINWAG_INLINE vi vload_u8(const void* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p)); }
CHINWAG_INLINE vi vload_s8(const void* p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)); }
// The low bytes of 16 lanes (each within int8), into 16 bytes.
CHINWAG_INLINE void vstore_s8(void* p, vi v) { _mm_storeu_si128((__m128i*)p, _mm512_cvtepi32_epi8(v)); }

CHINWAG_INLINE vb vbload(const void* p) { return _mm512_loadu_si512(p); }
CHINWAG_INLINE vb vblow_nibbles(vb v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0F)); }
CHINWAG_INLINE vb vbhigh_nibbles(vb v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0F)); }
// acc + per lane the 4 products of u's bytes (unsigned, at most 15) by x's (signed).
CHINWAG_DOT_TARGET CHINWAG_INLINE vi vdot_u4(vi acc, vb u, int32_t x) {
  return _mm512_dpbusd_epi32(acc, u, _mm512_set1_epi32(x));
}
// Short sums of int4 products (`vsdot_u4`): int32 lanes here, so as many as wanted before `vswiden`.
using vs = __m512i;
constexpr int kShortSums = 1 << 20;
CHINWAG_INLINE vs vszero() { return _mm512_setzero_si512(); }
CHINWAG_DOT_TARGET CHINWAG_INLINE vs vsdot_u4(vs acc, vb u, int32_t x) {
  return _mm512_dpbusd_epi32(acc, u, _mm512_set1_epi32(x));
}
CHINWAG_INLINE vi vswiden(vs s) { return s; }
// Signed weights (|w| <= 127) as `vdot_s8` takes them: w + 128, unsigned.
CHINWAG_INLINE vb vbsigned(vb w) { return _mm512_xor_si512(w, _mm512_set1_epi8(int8_t(0x80))); }
// acc + per lane the 4 products of w's bytes (from `vbsigned`) by x's (signed): plus 128 sum(x)
// where kDotFlips.
CHINWAG_DOT_TARGET CHINWAG_INLINE vi vdot_s8(vi acc, vb w, int32_t x) {
  return _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(x));
}

// Lane i of the result: the sum of v[i]'s lanes, each block of 4 lanes summed as (0 + 2) + (1 + 3),
// then the blocks as (0 + 2) + (1 + 3) (45 shuffles and adds, against 16 horizontal sums).
CHINWAG_INLINE vf vsum16x16(const vf (&v)[16]) {
  vf u[8], w[4];
  // Per 128-bit block, columns 2i and 2i+1: [a0+a2, b0+b2, a1+a3, b1+b3].
  for (int i = 0; i < 8; ++i)
    u[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  // Per block, each of columns 4j .. 4j+3 summed over the block's 4 lanes.
  for (int j = 0; j < 4; ++j)
    w[j] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * j], u[2 * j + 1], 0x44), _mm512_shuffle_ps(u[2 * j], u[2 * j + 1], 0xEE));
  // Across the 4 blocks: block j of the result holds columns 4j .. 4j+3.
  const vf s01 = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x44), _mm512_shuffle_f32x4(w[0], w[1], 0xEE));
  const vf s23 = _mm512_add_ps(_mm512_shuffle_f32x4(w[2], w[3], 0x44), _mm512_shuffle_f32x4(w[2], w[3], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
}

// ---- AVX2 + FMA + F16C ---------------------------------------------------------------------------
#elif defined(CHINWAG_AVX2)

struct vf { __m256 lo, hi; };
struct vi { __m256i lo, hi; };
struct vb { __m256i lo, hi; };
struct vm { __m256 lo, hi; };  // all ones or zeros per lane
#define CHINWAG_DOT_TARGET
constexpr bool kDotFlips = false;
constexpr int kRegisterRows = 4;  // 16 vector registers, each vf two of them

#define CHINWAG_F2(op) return {op(a.lo, b.lo), op(a.hi, b.hi)}
CHINWAG_INLINE vf vzero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
CHINWAG_INLINE vf vset(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
CHINWAG_INLINE vf vload(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
CHINWAG_INLINE void vstore(float* p, vf v) { _mm256_storeu_ps(p, v.lo); _mm256_storeu_ps(p + 8, v.hi); }
CHINWAG_INLINE vf vadd(vf a, vf b) { CHINWAG_F2(_mm256_add_ps); }
CHINWAG_INLINE vf vsub(vf a, vf b) { CHINWAG_F2(_mm256_sub_ps); }
CHINWAG_INLINE vf vmul(vf a, vf b) { CHINWAG_F2(_mm256_mul_ps); }
CHINWAG_INLINE vf vdiv(vf a, vf b) { CHINWAG_F2(_mm256_div_ps); }
CHINWAG_INLINE vf vmax(vf a, vf b) { CHINWAG_F2(_mm256_max_ps); }
CHINWAG_INLINE vf vmin(vf a, vf b) { CHINWAG_F2(_mm256_min_ps); }
CHINWAG_INLINE vf vfmadd(vf a, vf b, vf c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
CHINWAG_INLINE vf vfnmadd(vf a, vf b, vf c) { return {_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi)}; }
CHINWAG_INLINE vf vabs(vf a) {
  const __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  return {_mm256_and_ps(a.lo, m), _mm256_and_ps(a.hi, m)};
}
// GCC's _mm512_reduce_add_ps: halves, then quarters, then lanes (0 + 2) + (1 + 3).
CHINWAG_INLINE float vsum(vf v) {
  const __m256 t = _mm256_add_ps(v.hi, v.lo);
  const __m128 q = _mm_add_ps(_mm256_extractf128_ps(t, 1), _mm256_castps256_ps128(t));
  const __m128 p = _mm_add_ps(q, _mm_shuffle_ps(q, q, 0x4E));
  return _mm_cvtss_f32(p) + _mm_cvtss_f32(_mm_shuffle_ps(p, p, 1));
}
CHINWAG_INLINE float vmaxall(vf v) {
  const __m256 t = _mm256_max_ps(v.hi, v.lo);
  const __m128 q = _mm_max_ps(_mm256_extractf128_ps(t, 1), _mm256_castps256_ps128(t));
  const __m128 p = _mm_max_ps(q, _mm_shuffle_ps(q, q, 0x4E));
  return std::max(_mm_cvtss_f32(p), _mm_cvtss_f32(_mm_shuffle_ps(p, p, 1)));
}
CHINWAG_INLINE vf vround(vf v) {
  return {_mm256_round_ps(v.lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
          _mm256_round_ps(v.hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
// p 2^n, n whole and in [-126, 127]: 2^n is a normal float, so the product rounds as scalef's does.
CHINWAG_INLINE __m256 pow2(__m256 n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
CHINWAG_INLINE vf vscale2(vf p, vf n) { return {_mm256_mul_ps(p.lo, pow2(n.lo)), _mm256_mul_ps(p.hi, pow2(n.hi))}; }
CHINWAG_INLINE vm vfirst(int64_t n) {
  const __m256i at = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), count = _mm256_set1_epi32(int32_t(n));
  return {_mm256_castsi256_ps(_mm256_cmpgt_epi32(count, at)),
          _mm256_castsi256_ps(_mm256_cmpgt_epi32(count, _mm256_add_epi32(at, _mm256_set1_epi32(8))))};
}
CHINWAG_INLINE vm vne(vf a, vf b) { return {_mm256_cmp_ps(a.lo, b.lo, _CMP_NEQ_OQ), _mm256_cmp_ps(a.hi, b.hi, _CMP_NEQ_OQ)}; }
CHINWAG_INLINE vm vgt(vf a, vf b) { return {_mm256_cmp_ps(a.lo, b.lo, _CMP_GT_OQ), _mm256_cmp_ps(a.hi, b.hi, _CMP_GT_OQ)}; }
CHINWAG_INLINE vm vnan(vf a) { return {_mm256_cmp_ps(a.lo, a.lo, _CMP_UNORD_Q), _mm256_cmp_ps(a.hi, a.hi, _CMP_UNORD_Q)}; }
CHINWAG_INLINE unsigned vbits(vm m) { return unsigned(_mm256_movemask_ps(m.lo)) | unsigned(_mm256_movemask_ps(m.hi)) << 8; }
CHINWAG_INLINE vf vselect(vm m, vf a, vf b) { return {_mm256_blendv_ps(b.lo, a.lo, m.lo), _mm256_blendv_ps(b.hi, a.hi, m.hi)}; }
CHINWAG_INLINE vi viselect(vm m, vi a, vi b) {
  return {_mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b.lo), _mm256_castsi256_ps(a.lo), m.lo)),
          _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b.hi), _mm256_castsi256_ps(a.hi), m.hi))};
}
CHINWAG_INLINE vf vload_first(const float* p, int64_t n) {
  const vm m = vfirst(n);
  return {_mm256_maskload_ps(p, _mm256_castps_si256(m.lo)), _mm256_maskload_ps(p + 8, _mm256_castps_si256(m.hi))};
}
CHINWAG_INLINE void vstore_first(float* p, int64_t n, vf v) {
  const vm m = vfirst(n);
  _mm256_maskstore_ps(p, _mm256_castps_si256(m.lo), v.lo);
  _mm256_maskstore_ps(p + 8, _mm256_castps_si256(m.hi), v.hi);
}
CHINWAG_INLINE vf vload_half(const void* p) {
  return {_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p + 1))};
}
CHINWAG_INLINE void vstore_half(void* p, vf v) {
  _mm_storeu_si128((__m128i*)p, _mm256_cvtps_ph(v.lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  _mm_storeu_si128((__m128i*)p + 1, _mm256_cvtps_ph(v.hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
CHINWAG_INLINE vf vload_bf16(const uint16_t* p) {
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16)),
          _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(p + 8))), 16))};
}

CHINWAG_INLINE vi vizero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
CHINWAG_INLINE vi viset(int32_t x) { return {_mm256_set1_epi32(x), _mm256_set1_epi32(x)}; }
CHINWAG_INLINE vi viota() { return {_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15)}; }
CHINWAG_INLINE vi viload(const void* p) {
  return {_mm256_loadu_si256((const __m256i*)p), _mm256_loadu_si256((const __m256i*)p + 1)};
}
CHINWAG_INLINE void vistore(void* p, vi v) {
  _mm256_storeu_si256((__m256i*)p, v.lo);
  _mm256_storeu_si256((__m256i*)p + 1, v.hi);
}
CHINWAG_INLINE vi viadd(vi a, vi b) { CHINWAG_F2(_mm256_add_epi32); }
CHINWAG_INLINE vi visub(vi a, vi b) { CHINWAG_F2(_mm256_sub_epi32); }
CHINWAG_INLINE vi viand(vi a, vi b) { CHINWAG_F2(_mm256_and_si256); }
CHINWAG_INLINE vi vimin(vi a, vi b) { CHINWAG_F2(_mm256_min_epi32); }
CHINWAG_INLINE vi vimax(vi a, vi b) { CHINWAG_F2(_mm256_max_epi32); }
template <int S> CHINWAG_INLINE vi vishl(vi a) { return {_mm256_slli_epi32(a.lo, S), _mm256_slli_epi32(a.hi, S)}; }
template <int S> CHINWAG_INLINE vi vishr(vi a) { return {_mm256_srli_epi32(a.lo, S), _mm256_srli_epi32(a.hi, S)}; }
template <int S> CHINWAG_INLINE vi visar(vi a) { return {_mm256_srai_epi32(a.lo, S), _mm256_srai_epi32(a.hi, S)}; }
CHINWAG_INLINE int32_t visum(vi v) {
  const __m256i t = _mm256_add_epi32(v.hi, v.lo);
  __m128i q = _mm_add_epi32(_mm256_extracti128_si256(t, 1), _mm256_castsi256_si128(t));
  q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0x4E));
  return _mm_cvtsi128_si32(q) + _mm_cvtsi128_si32(_mm_shuffle_epi32(q, 1));
}
CHINWAG_INLINE vf vfloat(vi v) { return {_mm256_cvtepi32_ps(v.lo), _mm256_cvtepi32_ps(v.hi)}; }
CHINWAG_INLINE vi vint(vf v) { return {_mm256_cvtps_epi32(v.lo), _mm256_cvtps_epi32(v.hi)}; }
CHINWAG_INLINE vf vbits_as_float(vi v) { return {_mm256_castsi256_ps(v.lo), _mm256_castsi256_ps(v.hi)}; }
CHINWAG_INLINE vi vload_u8(const void* p) {
  const __m128i b = _mm_loadu_si128((const __m128i*)p);
  return {_mm256_cvtepu8_epi32(b), _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8))};
}
CHINWAG_INLINE vi vload_s8(const void* p) {
  const __m128i b = _mm_loadu_si128((const __m128i*)p);
  return {_mm256_cvtepi8_epi32(b), _mm256_cvtepi8_epi32(_mm_srli_si128(b, 8))};
}
CHINWAG_INLINE void vstore_s8(void* p, vi v) {
  // Saturating packs, exact for values within int8; the 128-bit lanes put back in order.
  const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(v.lo, v.hi), 0xD8);
  _mm_storeu_si128((__m128i*)p, _mm_packs_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1)));
}

CHINWAG_INLINE vb vbload(const void* p) {
  return {_mm256_loadu_si256((const __m256i*)p), _mm256_loadu_si256((const __m256i*)p + 1)};
}
CHINWAG_INLINE vb vblow_nibbles(vb v) {
  const __m256i m = _mm256_set1_epi8(0x0F);
  return {_mm256_and_si256(v.lo, m), _mm256_and_si256(v.hi, m)};
}
CHINWAG_INLINE vb vbhigh_nibbles(vb v) {
  const __m256i m = _mm256_set1_epi8(0x0F);
  return {_mm256_and_si256(_mm256_srli_epi16(v.lo, 4), m), _mm256_and_si256(_mm256_srli_epi16(v.hi, 4), m)};
}
// vpmaddubsw's pairs of products saturate at 16 bits: u <= 15 keeps them far below.
CHINWAG_INLINE vi vdot_u4(vi acc, vb u, int32_t x) {
  const __m256i xs = _mm256_set1_epi32(x), ones = _mm256_set1_epi16(1);
  return {_mm256_add_epi32(acc.lo, _mm256_madd_epi16(_mm256_maddubs_epi16(u.lo, xs), ones)),
          _mm256_add_epi32(acc.hi, _mm256_madd_epi16(_mm256_maddubs_epi16(u.hi, xs), ones))};
}
// Short sums of int4 products: 16-bit lanes (two per channel), one vpaddw per vpmaddubsw, widened
// to int32 once per kShortSums of them: each adds at most 2 * 15 * 128 = 3840 in magnitude, so 8
// stay within 16 bits (vpaddw wraps, it does not saturate, but they never reach it).
struct vs { __m256i lo, hi; };
constexpr int kShortSums = 8;
CHINWAG_INLINE vs vszero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
CHINWAG_INLINE vs vsdot_u4(vs acc, vb u, int32_t x) {
  const __m256i xs = _mm256_set1_epi32(x);
  return {_mm256_add_epi16(acc.lo, _mm256_maddubs_epi16(u.lo, xs)), _mm256_add_epi16(acc.hi, _mm256_maddubs_epi16(u.hi, xs))};
}
CHINWAG_INLINE vi vswiden(vs s) {
  const __m256i ones = _mm256_set1_epi16(1);
  return {_mm256_madd_epi16(s.lo, ones), _mm256_madd_epi16(s.hi, ones)};
}
CHINWAG_INLINE vb vbsigned(vb w) { return w; }
// Signed by signed: |x| (unsigned, at most 128) by w with x's sign, whose pairs stay within 16 bits
// as |w| <= 127.
CHINWAG_INLINE vi vdot_s8(vi acc, vb w, int32_t x) {
  const __m256i xs = _mm256_set1_epi32(x), ax = _mm256_abs_epi8(xs), ones = _mm256_set1_epi16(1);
  return {_mm256_add_epi32(acc.lo, _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(w.lo, xs)), ones)),
          _mm256_add_epi32(acc.hi, _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(w.hi, xs)), ones))};
}

// As the AVX-512 one: each 128-bit block summed within first, then the blocks (0 + 2) + (1 + 3).
CHINWAG_INLINE vf vsum16x16(const vf (&v)[16]) {
  __m256 lo[4], hi[4];
  for (int j = 0; j < 4; ++j) {
    __m256 ul[2], uh[2];
    for (int k = 0; k < 2; ++k) {
      const vf& a = v[4 * j + 2 * k];
      const vf& b = v[4 * j + 2 * k + 1];
      ul[k] = _mm256_add_ps(_mm256_unpacklo_ps(a.lo, b.lo), _mm256_unpackhi_ps(a.lo, b.lo));
      uh[k] = _mm256_add_ps(_mm256_unpacklo_ps(a.hi, b.hi), _mm256_unpackhi_ps(a.hi, b.hi));
    }
    lo[j] = _mm256_add_ps(_mm256_shuffle_ps(ul[0], ul[1], 0x44), _mm256_shuffle_ps(ul[0], ul[1], 0xEE));  // blocks 0, 1
    hi[j] = _mm256_add_ps(_mm256_shuffle_ps(uh[0], uh[1], 0x44), _mm256_shuffle_ps(uh[0], uh[1], 0xEE));  // blocks 2, 3
  }
  // (0 + 2) and (1 + 3) per column, then their sum: columns 4j .. 4j+3 in 128-bit block j.
  __m128 out[4];
  for (int j = 0; j < 4; ++j) {
    const __m256 s = _mm256_add_ps(lo[j], hi[j]);
    out[j] = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  }
  return {_mm256_set_m128(out[1], out[0]), _mm256_set_m128(out[3], out[2])};
}
#undef CHINWAG_F2

// ---- AArch64 NEON --------------------------------------------------------------------------------
#elif defined(CHINWAG_NEON)

struct vf { float32x4_t v[4]; };
struct vi { int32x4_t v[4]; };
struct vb { int8x16_t v[4]; };
struct vm { uint32x4_t v[4]; };
#define CHINWAG_DOT_TARGET
constexpr bool kDotFlips = false;
constexpr int kRegisterRows = 4;  // 32 vector registers, each vf four of them

#define CHINWAG_N4(T, expr) T r; for (int i = 0; i < 4; ++i) r.v[i] = expr; return r
CHINWAG_INLINE vf vzero() { CHINWAG_N4(vf, vdupq_n_f32(0.f)); }
CHINWAG_INLINE vf vset(float x) { CHINWAG_N4(vf, vdupq_n_f32(x)); }
CHINWAG_INLINE vf vload(const float* p) { CHINWAG_N4(vf, vld1q_f32(p + 4 * i)); }
CHINWAG_INLINE void vstore(float* p, vf v) { for (int i = 0; i < 4; ++i) vst1q_f32(p + 4 * i, v.v[i]); }
CHINWAG_INLINE vf vadd(vf a, vf b) { CHINWAG_N4(vf, vaddq_f32(a.v[i], b.v[i])); }
CHINWAG_INLINE vf vsub(vf a, vf b) { CHINWAG_N4(vf, vsubq_f32(a.v[i], b.v[i])); }
CHINWAG_INLINE vf vmul(vf a, vf b) { CHINWAG_N4(vf, vmulq_f32(a.v[i], b.v[i])); }
CHINWAG_INLINE vf vdiv(vf a, vf b) { CHINWAG_N4(vf, vdivq_f32(a.v[i], b.v[i])); }
// x86's max/min return the second operand when either is NaN; fmaxnm/fminnm differ only there.
CHINWAG_INLINE vf vmax(vf a, vf b) { CHINWAG_N4(vf, vbslq_f32(vcgtq_f32(a.v[i], b.v[i]), a.v[i], b.v[i])); }
CHINWAG_INLINE vf vmin(vf a, vf b) { CHINWAG_N4(vf, vbslq_f32(vcltq_f32(a.v[i], b.v[i]), a.v[i], b.v[i])); }
CHINWAG_INLINE vf vfmadd(vf a, vf b, vf c) { CHINWAG_N4(vf, vfmaq_f32(c.v[i], a.v[i], b.v[i])); }
CHINWAG_INLINE vf vfnmadd(vf a, vf b, vf c) { CHINWAG_N4(vf, vfmsq_f32(c.v[i], a.v[i], b.v[i])); }
CHINWAG_INLINE vf vabs(vf a) { CHINWAG_N4(vf, vabsq_f32(a.v[i])); }
CHINWAG_INLINE float vsum(vf v) {
  // Lanes of [0..3] + [8..11] and [4..7] + [12..15], then those halves, then (0 + 2) + (1 + 3).
  const float32x4_t q = vaddq_f32(vaddq_f32(v.v[2], v.v[0]), vaddq_f32(v.v[3], v.v[1]));
  return (vgetq_lane_f32(q, 0) + vgetq_lane_f32(q, 2)) + (vgetq_lane_f32(q, 1) + vgetq_lane_f32(q, 3));
}
CHINWAG_INLINE float vmaxall(vf v) {
  const float32x4_t q = vmaxq_f32(vmaxq_f32(v.v[2], v.v[0]), vmaxq_f32(v.v[3], v.v[1]));
  return vmaxvq_f32(q);
}
CHINWAG_INLINE vf vround(vf v) { CHINWAG_N4(vf, vrndnq_f32(v.v[i])); }
CHINWAG_INLINE vf vscale2(vf p, vf n) {
  CHINWAG_N4(vf, vmulq_f32(p.v[i], vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n.v[i]), vdupq_n_s32(127)), 23))));
}
CHINWAG_INLINE vm vfirst(int64_t n) {
  static const int32_t at[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  CHINWAG_N4(vm, vcltq_s32(vld1q_s32(at + 4 * i), vdupq_n_s32(int32_t(n))));
}
CHINWAG_INLINE vm vne(vf a, vf b) { CHINWAG_N4(vm, vorrq_u32(vcltq_f32(a.v[i], b.v[i]), vcgtq_f32(a.v[i], b.v[i]))); }
CHINWAG_INLINE vm vgt(vf a, vf b) { CHINWAG_N4(vm, vcgtq_f32(a.v[i], b.v[i])); }
CHINWAG_INLINE vm vnan(vf a) { CHINWAG_N4(vm, vmvnq_u32(vceqq_f32(a.v[i], a.v[i]))); }
CHINWAG_INLINE unsigned vbits(vm m) {
  static const uint32_t weight[4] = {1, 2, 4, 8};
  unsigned bits = 0;
  for (int i = 0; i < 4; ++i) bits |= unsigned(vaddvq_u32(vandq_u32(m.v[i], vld1q_u32(weight)))) << (4 * i);
  return bits;
}
CHINWAG_INLINE vf vselect(vm m, vf a, vf b) { CHINWAG_N4(vf, vbslq_f32(m.v[i], a.v[i], b.v[i])); }
CHINWAG_INLINE vi viselect(vm m, vi a, vi b) { CHINWAG_N4(vi, vbslq_s32(m.v[i], a.v[i], b.v[i])); }
CHINWAG_INLINE vf vload_first(const float* p, int64_t n) {
  float t[16] = {};
  for (int64_t i = 0; i < n; ++i) t[i] = p[i];
  return vload(t);
}
CHINWAG_INLINE void vstore_first(float* p, int64_t n, vf v) {
  float t[16];
  vstore(t, v);
  for (int64_t i = 0; i < n; ++i) p[i] = t[i];
}
CHINWAG_INLINE vf vload_half(const void* p) {
  const float16_t* h = static_cast<const float16_t*>(p);
  CHINWAG_N4(vf, vcvt_f32_f16(vld1_f16(h + 4 * i)));
}
CHINWAG_INLINE void vstore_half(void* p, vf v) {
  float16_t* h = static_cast<float16_t*>(p);
  for (int i = 0; i < 4; ++i) vst1_f16(h + 4 * i, vcvt_f16_f32(v.v[i]));
}
CHINWAG_INLINE vf vload_bf16(const uint16_t* p) {
  CHINWAG_N4(vf, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p + 4 * i), 16)));
}

CHINWAG_INLINE vi vizero() { CHINWAG_N4(vi, vdupq_n_s32(0)); }
CHINWAG_INLINE vi viset(int32_t x) { CHINWAG_N4(vi, vdupq_n_s32(x)); }
CHINWAG_INLINE vi viota() {
  static const int32_t at[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  CHINWAG_N4(vi, vld1q_s32(at + 4 * i));
}
CHINWAG_INLINE vi viload(const void* p) { CHINWAG_N4(vi, vld1q_s32(static_cast<const int32_t*>(p) + 4 * i)); }
CHINWAG_INLINE void vistore(void* p, vi v) { for (int i = 0; i < 4; ++i) vst1q_s32(static_cast<int32_t*>(p) + 4 * i, v.v[i]); }
CHINWAG_INLINE vi viadd(vi a, vi b) { CHINWAG_N4(vi, vaddq_s32(a.v[i], b.v[i])); }
CHINWAG_INLINE vi visub(vi a, vi b) { CHINWAG_N4(vi, vsubq_s32(a.v[i], b.v[i])); }
CHINWAG_INLINE vi viand(vi a, vi b) { CHINWAG_N4(vi, vandq_s32(a.v[i], b.v[i])); }
CHINWAG_INLINE vi vimin(vi a, vi b) { CHINWAG_N4(vi, vminq_s32(a.v[i], b.v[i])); }
CHINWAG_INLINE vi vimax(vi a, vi b) { CHINWAG_N4(vi, vmaxq_s32(a.v[i], b.v[i])); }
template <int S> CHINWAG_INLINE vi vishl(vi a) { CHINWAG_N4(vi, vshlq_n_s32(a.v[i], S)); }
template <int S> CHINWAG_INLINE vi vishr(vi a) {
  CHINWAG_N4(vi, vreinterpretq_s32_u32(vshrq_n_u32(vreinterpretq_u32_s32(a.v[i]), S)));
}
template <int S> CHINWAG_INLINE vi visar(vi a) { CHINWAG_N4(vi, vshrq_n_s32(a.v[i], S)); }
CHINWAG_INLINE int32_t visum(vi v) {
  return vaddvq_s32(vaddq_s32(vaddq_s32(v.v[0], v.v[1]), vaddq_s32(v.v[2], v.v[3])));
}
CHINWAG_INLINE vf vfloat(vi v) { CHINWAG_N4(vf, vcvtq_f32_s32(v.v[i])); }
CHINWAG_INLINE vi vint(vf v) { CHINWAG_N4(vi, vcvtnq_s32_f32(v.v[i])); }
CHINWAG_INLINE vf vbits_as_float(vi v) { CHINWAG_N4(vf, vreinterpretq_f32_s32(v.v[i])); }
CHINWAG_INLINE vi vload_u8(const void* p) {
  const uint8x16_t b = vld1q_u8(static_cast<const uint8_t*>(p));
  const uint16x8_t l = vmovl_u8(vget_low_u8(b)), h = vmovl_u8(vget_high_u8(b));
  return {{vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(l))), vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(l))),
           vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(h))), vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(h)))}};
}
CHINWAG_INLINE vi vload_s8(const void* p) {
  const int8x16_t b = vld1q_s8(static_cast<const int8_t*>(p));
  const int16x8_t l = vmovl_s8(vget_low_s8(b)), h = vmovl_s8(vget_high_s8(b));
  return {{vmovl_s16(vget_low_s16(l)), vmovl_s16(vget_high_s16(l)), vmovl_s16(vget_low_s16(h)), vmovl_s16(vget_high_s16(h))}};
}
CHINWAG_INLINE void vstore_s8(void* p, vi v) {
  const int16x8_t l = vcombine_s16(vmovn_s32(v.v[0]), vmovn_s32(v.v[1]));
  const int16x8_t h = vcombine_s16(vmovn_s32(v.v[2]), vmovn_s32(v.v[3]));
  vst1q_s8(static_cast<int8_t*>(p), vcombine_s8(vmovn_s16(l), vmovn_s16(h)));
}

CHINWAG_INLINE vb vbload(const void* p) { CHINWAG_N4(vb, vld1q_s8(static_cast<const int8_t*>(p) + 16 * i)); }
CHINWAG_INLINE vb vblow_nibbles(vb v) { CHINWAG_N4(vb, vandq_s8(v.v[i], vdupq_n_s8(0x0F))); }
CHINWAG_INLINE vb vbhigh_nibbles(vb v) {
  CHINWAG_N4(vb, vreinterpretq_s8_u8(vshrq_n_u8(vreinterpretq_u8_s8(v.v[i]), 4)));
}
// Per lane the 4 products of a's bytes by b's, both signed: sdot where the CPU has it.
CHINWAG_INLINE int32x4_t dot4(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
  return vdotq_s32(acc, a, b);
#else
  const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
  const int16x8_t hi = vmull_high_s8(a, b);
  return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
#endif
}
// u's bytes (at most 15) are valid signed bytes: the signed product is the same.
CHINWAG_INLINE vi vdot_u4(vi acc, vb u, int32_t x) {
  const int8x16_t xs = vreinterpretq_s8_s32(vdupq_n_s32(x));
  CHINWAG_N4(vi, dot4(acc.v[i], u.v[i], xs));
}
using vs = vi;  // sdot sums into int32 lanes
constexpr int kShortSums = 1 << 20;
CHINWAG_INLINE vs vszero() { return vizero(); }
CHINWAG_INLINE vs vsdot_u4(vs acc, vb u, int32_t x) { return vdot_u4(acc, u, x); }
CHINWAG_INLINE vi vswiden(vs s) { return s; }
CHINWAG_INLINE vb vbsigned(vb w) { return w; }
CHINWAG_INLINE vi vdot_s8(vi acc, vb w, int32_t x) {
  const int8x16_t xs = vreinterpretq_s8_s32(vdupq_n_s32(x));
  CHINWAG_N4(vi, dot4(acc.v[i], w.v[i], xs));
}

// As the AVX-512 one: lanes of each block of 4 as (0 + 2) + (1 + 3), then blocks (0 + 2) + (1 + 3).
CHINWAG_INLINE vf vsum16x16(const vf (&v)[16]) {
  float out[16];
  for (int j = 0; j < 16; ++j) {
    float32x4_t blocks[4];
    for (int k = 0; k < 4; ++k) {
      const float32x4_t q = v[j].v[k];
      const float32x4_t s = vaddq_f32(q, vextq_f32(q, q, 2));  // lanes 0 + 2, 1 + 3
      blocks[k] = vdupq_n_f32(vgetq_lane_f32(s, 0) + vgetq_lane_f32(s, 1));
    }
    out[j] = (vgetq_lane_f32(blocks[0], 0) + vgetq_lane_f32(blocks[2], 0)) +
             (vgetq_lane_f32(blocks[1], 0) + vgetq_lane_f32(blocks[3], 0));
  }
  return vload(out);
}
#undef CHINWAG_N4
#endif

// ---- The same on every path -----------------------------------------------------------------------

// e^x, x clamped to [-87, 88] (softmax after subtracting the maximum; silu's e^-g): Cephes'
// polynomial on [-ln2/2, ln2/2] and the exponent by scaling, about 1 ulp.
CHINWAG_INLINE vf vexp(vf x) {
  x = vmax(x, vset(-87.f));
  x = vmin(x, vset(88.f));
  const vf n = vround(vmul(x, vset(1.44269504088896341f)));
  vf r = vfnmadd(n, vset(0.693359375f), x);
  r = vfnmadd(n, vset(-2.12194440e-4f), r);
  vf p = vset(1.9875691500e-4f);
  p = vfmadd(p, r, vset(1.3981999507e-3f));
  p = vfmadd(p, r, vset(8.3334519073e-3f));
  p = vfmadd(p, r, vset(4.1665795894e-2f));
  p = vfmadd(p, r, vset(1.6666665459e-1f));
  p = vfmadd(p, r, vset(5.0000001201e-1f));
  p = vfmadd(p, vmul(r, r), vadd(r, vset(1.f)));
  return vscale2(p, n);
}

}  // namespace simd
