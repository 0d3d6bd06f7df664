// Host-side argument checks for the launchers. pybind11 turns std::invalid_argument into a Python
// ValueError, so a bad size, stride or pointer is an error at the boundary, never an out-of-bounds
// access. They run once per call, before any work, never in a kernel loop.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

#include "ponder/common.h"

#define PONDER_CHECK(cond, ...)                                                   \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::ostringstream ponder_msg_;                                             \
      ponder_msg_ << __VA_ARGS__;                                                 \
      throw std::invalid_argument(ponder_msg_.str());                             \
    }                                                                             \
  } while (0)

PONDER_NAMESPACE_BEGIN

// A buffer argument of a launcher, as Python passes it (ops/_common.py: launch_native): every
// buffer parameter `x` is the pair (x, x_numel), its address and its element count in elements
// of the type the launcher reads it as; (0, 0) for an absent optional buffer.
struct Buffer {
  const char* name;  // the parameter's name, shown in errors
  uintptr_t address;
  int64_t numel;
};

namespace detail {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

// a * b and a + b for a, b >= 0; false when the result would not fit in int64. (Written out
// rather than __builtin_*_overflow so that nvcc's front end compiles it too.)
inline bool mul_fits(int64_t a, int64_t b, int64_t* out) {
  if (b != 0 && a > kInt64Max / b) return false;
  *out = a * b;
  return true;
}
inline bool add_fits(int64_t a, int64_t b, int64_t* out) {
  if (a > kInt64Max - b) return false;
  *out = a + b;
  return true;
}

// "[2, 3, 4]": sizes or strides as an error message shows them.
inline std::string list(std::initializer_list<int64_t> values) {
  std::ostringstream os;
  os << '[';
  const char* sep = "";
  for (int64_t v : values) {
    os << sep << v;
    sep = ", ";
  }
  os << ']';
  return os.str();
}

}  // namespace detail

// Checks buffer `b` against the indexing a launcher will do with it: element
// sum_i idx_i * strides[i] for every 0 <= idx_i < sizes[i]. Empty `strides` mean row-major
// contiguous. Refuses (ValueError naming op and buffer): a negative count, size or stride; a size
// product or an offset that overflows int64; a null address for a buffer with elements to reach
// (or that claims elements); and a largest offset at or past b.numel.
inline void check_buffer(const char* op, const Buffer& b, std::initializer_list<int64_t> sizes,
                         std::initializer_list<int64_t> strides = {}) {
  // The indexing, as the messages show it (built only when a check fails).
  auto shape = [&] {
    return "sizes " + detail::list(sizes) +
           (strides.size() != 0 ? " with strides " + detail::list(strides) : std::string());
  };
  PONDER_CHECK(b.numel >= 0, op << ": " << b.name << " has a negative element count " << b.numel);
  PONDER_CHECK(b.address != 0 || b.numel == 0,
               op << ": " << b.name << " is a null pointer with " << b.numel << " elements");
  PONDER_CHECK(strides.size() == 0 || strides.size() == sizes.size(),
               op << ": " << b.name << ": " << shape() << " do not match");
  bool empty = false;
  for (int64_t s : sizes) {
    PONDER_CHECK(s >= 0, op << ": " << b.name << " has a negative size: " << shape());
    empty = empty || s == 0;
  }
  for (int64_t s : strides) {
    PONDER_CHECK(s >= 0, op << ": " << b.name << " has a negative stride: " << shape());
  }
  if (empty) return;  // nothing is read or written
  int64_t product = 1;
  for (int64_t s : sizes) {
    PONDER_CHECK(detail::mul_fits(product, s, &product),
                 op << ": " << b.name << ": the element count of " << shape()
                    << " overflows int64");
  }
  // The largest offset: sum (size_i - 1) * stride_i, which is product - 1 when row-major.
  int64_t last = product - 1;
  if (strides.size() != 0) {
    last = 0;
    const int64_t* stride = strides.begin();
    for (int64_t s : sizes) {
      int64_t term = 0;
      PONDER_CHECK(detail::mul_fits(s - 1, *stride++, &term) && detail::add_fits(last, term, &last),
                   op << ": " << b.name << ": the largest offset of " << shape()
                      << " overflows int64");
    }
  }
  PONDER_CHECK(b.address != 0, op << ": " << b.name << " is a null pointer");
  PONDER_CHECK(last < b.numel, op << ": " << b.name << " has " << b.numel << " elements, but "
                                  << shape() << " reach element " << last);
}

// An optional buffer: absent (null address and 0 elements), or present and checked as above.
inline void check_optional_buffer(const char* op, const Buffer& b,
                                  std::initializer_list<int64_t> sizes,
                                  std::initializer_list<int64_t> strides = {}) {
  if (b.address == 0 && b.numel == 0) return;
  check_buffer(op, b, sizes, strides);
}

PONDER_NAMESPACE_END
