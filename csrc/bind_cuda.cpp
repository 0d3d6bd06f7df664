// ponder._cuda: the CUDA kernels. This file only declares and exports; see cuda/ops.h.
#include <pybind11/pybind11.h>

#include "cuda/ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "ponder CUDA kernels (static CUDA runtime). Called through ponder.ops, not directly.";
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("device_count", &ponder::cuda::device_count);
  m.def("ula_step", &ponder::cuda::ula_step, nogil);
  // mala_propose is ula_step at temperature 1: the same launcher.
  m.def("mala_propose", &ponder::cuda::ula_step, nogil);
  m.def("proximal_step", &ponder::cuda::proximal_step, nogil);
  m.def("uld_step", &ponder::cuda::uld_step, nogil);
  m.def("mala_accept", &ponder::cuda::mala_accept, nogil);
}
