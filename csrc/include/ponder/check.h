// Host-side argument checks for the launchers. pybind11 turns std::invalid_argument into a Python
// ValueError, so a bad size or pointer is an error at the boundary, never an out-of-bounds access.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>

#define PONDER_CHECK(cond, ...)                                                   \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::ostringstream ponder_msg_;                                             \
      ponder_msg_ << __VA_ARGS__;                                                 \
      throw std::invalid_argument(ponder_msg_.str());                             \
    }                                                                             \
  } while (0)

namespace ponder {

// A launcher argument that holds the address of a buffer, with the name the error shows.
struct Buffer {
  const char* name;
  uintptr_t address;
};

// Buffers of `count` elements each: none may be null unless the count is 0 (an empty tensor
// may have no storage).
inline void check_buffers(const char* op, int64_t count, std::initializer_list<Buffer> buffers) {
  for (const Buffer& b : buffers) {
    PONDER_CHECK(count == 0 || b.address != 0,
                 op << ": " << b.name << " is a null pointer for " << count << " elements");
  }
}

}  // namespace ponder
