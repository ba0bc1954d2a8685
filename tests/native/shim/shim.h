// Just enough of ATen's interface for kernels.cpp to compile and run without torch: how the kernels
// are checked on a machine (or an emulator) that has no torch, such as AArch64 under qemu-user.
// Tensors are contiguous, parallel_for runs serially, TORCH_CHECK aborts, and the op registration
// does nothing.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <vector>

#define TORCH_CHECK(cond, ...)                                               \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "check failed: %s (%s)\n", #cond, __VA_ARGS__);   \
      std::abort();                                                          \
    }                                                                        \
  } while (0)

namespace c10 {
// IEEE half precision, converted in software (round to nearest even), as torch's at::Half.
struct Half {
  uint16_t x = 0;
  Half() = default;
  operator float() const {
    const uint32_t sign = uint32_t(x & 0x8000) << 16, exponent = (x >> 10) & 0x1F, mantissa = x & 0x3FF;
    uint32_t bits;
    if (exponent == 0x1F) {
      bits = sign | 0x7F800000 | (mantissa << 13);
    } else if (exponent != 0) {
      bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int shift = 0;
      uint32_t m = mantissa;
      while (!(m & 0x400)) { m <<= 1; ++shift; }
      bits = sign | (uint32_t(113 - shift) << 23) | ((m & 0x3FF) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
};
using IntArrayRef = std::vector<int64_t>;
template <typename T>
struct List {
  std::vector<T> values;
  T get(size_t i) const { return values[i]; }
  size_t size() const { return values.size(); }
};
}  // namespace c10

namespace at {
using c10::Half;
using c10::IntArrayRef;
enum ScalarType { kFloat, kHalf, kChar, kByte, kBFloat16, kLong };

inline size_t element_size(ScalarType t) {
  switch (t) {
    case kFloat: return 4;
    case kHalf: case kBFloat16: return 2;
    case kChar: case kByte: return 1;
    case kLong: return 8;
  }
  return 0;
}

struct TensorOptions {
  ScalarType type = kFloat;
  TensorOptions dtype(ScalarType t) const { return {t}; }
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::vector<int64_t> shape, ScalarType type) : shape_(std::move(shape)), type_(type) {
    strides_.assign(shape_.size(), 1);
    for (int64_t i = int64_t(shape_.size()) - 2; i >= 0; --i) strides_[i] = strides_[i + 1] * shape_[i + 1];
    storage_ = std::make_shared<std::vector<uint8_t>>(numel() * element_size(type));
  }
  int64_t dim() const { return int64_t(shape_.size()); }
  int64_t size(int64_t i) const { return shape_[i < 0 ? i + dim() : i]; }
  int64_t stride(int64_t i) const { return strides_[i < 0 ? i + dim() : i]; }
  const std::vector<int64_t>& sizes() const { return shape_; }
  const std::vector<int64_t>& strides() const { return strides_; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape_) n *= s;
    return n;
  }
  ScalarType scalar_type() const { return type_; }
  bool is_contiguous() const { return true; }
  TensorOptions options() const { return {type_}; }
  void* data_ptr() const { return storage_->data(); }
  template <typename T>
  T* data_ptr() const { return reinterpret_cast<T*>(storage_->data()); }
  Tensor clone() const {
    Tensor t(shape_, type_);
    std::memcpy(t.data_ptr(), data_ptr(), storage_->size());
    return t;
  }
  size_t bytes() const { return storage_->size(); }

 private:
  std::vector<int64_t> shape_, strides_;
  ScalarType type_ = kFloat;
  std::shared_ptr<std::vector<uint8_t>> storage_;
};
using TensorList = std::vector<Tensor>;

inline Tensor empty(std::vector<int64_t> shape, TensorOptions options) { return Tensor(std::move(shape), options.type); }

template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t, const F& f) {
  if (begin < end) f(begin, end);
}
}  // namespace at

struct ShimLibrary {
  void def(const char*) {}
  template <typename F>
  void impl(const char*, F) {}
};
#define TORCH_LIBRARY(ns, m) [[maybe_unused]] static void shim_library_##ns(ShimLibrary& m)
#define TORCH_LIBRARY_IMPL(ns, key, m) [[maybe_unused]] static void shim_library_##ns##_##key(ShimLibrary& m)
