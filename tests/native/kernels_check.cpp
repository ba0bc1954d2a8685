// Runs chinwag's kernels (bot/inference/kernels.cpp, included whole) on fixed pseudo-random inputs
// without torch (shim/) and prints a hash of every result: one line per check. Built once per path
// (tests/test_native.py) and run natively or under qemu-user; every path must print the same lines,
// so a path that runs nowhere here (NEON) is checked bit for bit against those that do.

#include "../../bot/inference/kernels.cpp"

#include <cinttypes>

namespace {

uint64_t state = 0x9E3779B97F4A7C15ull;
uint32_t next() {
  state = state * 6364136223846793005ull + 1442695040888963407ull;
  return uint32_t(state >> 33);
}
float uniform() { return float(next() % 2000001) / 1000000.f - 1.f; }  // [-1, 1]
uint16_t bf16(float f) { return uint16_t(to_bf16(f)); }
uint16_t half(float f) {  // round to nearest even, finite normal values only (ours are)
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint32_t sign = (b >> 16) & 0x8000;
  int32_t e = int32_t((b >> 23) & 0xFF) - 127 + 15;
  uint32_t m = b & 0x7FFFFF;
  if (e <= 0) return uint16_t(sign);
  uint32_t h = (uint32_t(e) << 10) | (m >> 13);
  const uint32_t rest = m & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return uint16_t(sign | h);
}

at::Tensor floats(std::vector<int64_t> shape, float scale = 1.f) {
  at::Tensor t(std::move(shape), at::kFloat);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_ptr<float>()[i] = uniform() * scale;
  return t;
}
at::Tensor halves(std::vector<int64_t> shape) {
  at::Tensor t(std::move(shape), at::kHalf);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_ptr<uint16_t>()[i] = half(uniform() * 2);
  return t;
}
at::Tensor bf16s(std::vector<int64_t> shape, float low, float high) {
  at::Tensor t(std::move(shape), at::kBFloat16);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_ptr<uint16_t>()[i] = bf16(low + (uniform() + 1) / 2 * (high - low));
  return t;
}
at::Tensor int8s(std::vector<int64_t> shape) {  // |w| <= 127, as the quantizer makes them
  at::Tensor t(std::move(shape), at::kChar);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_ptr<int8_t>()[i] = int8_t(int(next() % 255) - 127);
  return t;
}
at::Tensor bytes(std::vector<int64_t> shape) {
  at::Tensor t(std::move(shape), at::kByte);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_ptr<uint8_t>()[i] = uint8_t(next());
  return t;
}

uint64_t hash(const at::Tensor& t) {  // FNV-1a of the bytes
  uint64_t h = 1469598103934665603ull;
  const uint8_t* p = static_cast<const uint8_t*>(t.data_ptr());
  for (size_t i = 0; i < t.bytes(); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
void say(const char* what, const at::Tensor& t) {
  std::printf("%-28s %016" PRIx64 " %.6g\n", what, hash(t), double(t.scalar_type() == at::kFloat ? t.data_ptr<float>()[0] : 0.f));
}

// A weight in a VNNI layout (int8 or int4, K inputs, N outputs) with its scales.
std::pair<at::Tensor, at::Tensor> vnni_weight(bool int8, int64_t N, int64_t K) {
  if (int8) return {int8s({N / 16, K / 32, 8, 64}), bf16s({N}, 0.001f, 0.02f)};
  return {bytes({N / 16, K / 32, 4, 64}), bf16s({N / 16, K / 32, 2, 16}, 0.001f, 0.02f)};
}

}  // namespace

int main() {
  const int64_t M = 9, K = 192;
  const at::Tensor x = floats({M, K}, 3.f);
  // Float32 kernels: int8 [N, K] and torch's int4 layout.
  {
    const at::Tensor w = int8s({96, K}), s = bf16s({96}, 0.001f, 0.02f), b = floats({96});
    say("linear int8 float32", linear(x, w, s, b, 16, false));
    const at::Tensor w4 = bytes({128 / 64, K, 32}), sz = bf16s({K / 32, 128, 2}, -0.02f, 0.02f);
    say("linear int4 float32", linear(x, w4, sz, std::nullopt, 16, false));
  }
  // Integer products of the VNNI layouts, activations to 8 and 16 bits.
  for (bool int8 : {true, false}) {
    auto [w, s] = vnni_weight(int8, 128, K);
    const at::Tensor b = floats({128});
    say(int8 ? "vnni int8 8 bits" : "vnni int4 8 bits", linear(x, w, s, b, 8, true));
    say(int8 ? "vnni int8 16 bits" : "vnni int4 16 bits", linear(x, w, s, b, 16, true));
  }
  // int4 in groups of 64 (the output head's copy): sums of two runs of short sums on AVX2.
  {
    const at::Tensor w = bytes({64 / 16, K / 64, 8, 64}), s = bf16s({64 / 16, K / 64, 2, 16}, 0.001f, 0.02f);
    say("vnni int4 g64 8 bits", linear(x, w, s, std::nullopt, 8, true));
    say("vnni int4 g64 16 bits", linear(x, w, s, std::nullopt, 16, true));
  }
  // Attention of new tokens over a float16 cache, and over float32.
  {
    const at::Tensor q = floats({6, 20, 64}), keys = halves({2, 150, 64}), values = halves({2, 150, 64});
    say("attend float16", attend(q, keys, values, 100, 0.125));
    const at::Tensor keys32 = floats({2, 150, 64}, 2.f), values32 = floats({2, 150, 64}, 2.f);
    say("attend float32", attend(q, keys32, values32, 17, 0.125));
  }
  // A whole decoder layer: VNNI products, rotary, attention over a float16 cache, SiLU.
  {
    const int64_t H = 128, heads = 4, kv = 2, dim = 64, F = 256, R = 3;
    const int64_t shapes[7][2] = {{heads * dim, H}, {kv * dim, H}, {kv * dim, H}, {H, heads * dim}, {F, H}, {F, H}, {H, F}};
    at::TensorList weights, scales;
    c10::List<std::optional<at::Tensor>> biases;
    for (int i = 0; i < 7; ++i) {
      auto [w, s] = vnni_weight(i % 2 == 1, shapes[i][0], shapes[i][1]);
      weights.push_back(w);
      scales.push_back(s);
      biases.values.push_back(i < 3 ? std::optional<at::Tensor>(floats({shapes[i][0]})) : std::nullopt);
    }
    at::Tensor h = floats({R, H}, 2.f), keys = halves({R, kv, 64, dim}), values = halves({R, kv, 64, dim});
    const at::Tensor norm1 = floats({H}), norm2 = floats({H}), cos = floats({R, dim}), sin = floats({R, dim});
    decode_layer(h, norm1, norm2, 1e-6, weights, scales, biases, {16, 8, 8, 8, 8, 8, 16}, true, cos, sin, keys,
                 values, 40, {0, 7, 40}, heads, kv, 0.125);
    say("decode_layer x", h);
    say("decode_layer keys", keys);
    say("decode_layer values", values);
  }
  // The output head's shortlist, and the best token of each row.
  {
    const at::Tensor xr = floats({3, 96}), weight = floats({1000, 96}), estimates = floats({3, 1000});
    at::Tensor logits = estimates.clone();
    shortlist(logits, xr, weight, std::nullopt, 64);
    say("shortlist", logits);
    at::Tensor rows = floats({4, 1003});
    rows.data_ptr<float>()[1003 + 500] = 7.f;
    rows.data_ptr<float>()[2 * 1003 + 3] = NAN;
    say("argmax", argmax(rows));
  }
  return 0;
}
