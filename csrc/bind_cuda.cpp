// ponder._cuda: the CUDA kernels. This file only exports; the ops are listed in cuda/ops.h.
#include <pybind11/pybind11.h>

#include "cuda/ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "ponder CUDA kernels (static CUDA runtime). Called through ponder.ops, not directly.";
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("device_count", &ponder::cuda::device_count);
#define PONDER_BIND(name) m.def(#name, &ponder::cuda::name, nogil);
  PONDER_CUDA_OPS(PONDER_BIND)
#undef PONDER_BIND
  // mala_propose is ula_step at temperature 1: the same launcher.
  m.def("mala_propose", &ponder::cuda::ula_step, nogil);
}
