// Host-side argument checks for the launchers. pybind11 turns std::invalid_argument into a Python
// ValueError, so a bad size or pointer is an error at the boundary, never an out-of-bounds access.
#pragma once

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
