// ponder._C: the CPU kernels. This file only declares and exports; see cpu/ops.h.
#include <pybind11/pybind11.h>

#include "cpu/ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "ponder CPU kernels (C++17, OpenMP). Called through ponder.ops, not directly.";
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("ula_step", &ponder::cpu::ula_step, nogil);
  // mala_propose is ula_step at temperature 1: the same launcher.
  m.def("mala_propose", &ponder::cpu::ula_step, nogil);
  m.def("proximal_step", &ponder::cpu::proximal_step, nogil);
  m.def("uld_step", &ponder::cpu::uld_step, nogil);
  m.def("mala_accept", &ponder::cpu::mala_accept, nogil);
  // ThinK (ponder.ops.think)
  m.def("think_pruned_decode_attention", &ponder::cpu::think_pruned_decode_attention, nogil);
  m.def("think_channel_scores", &ponder::cpu::think_channel_scores, nogil);
  m.def("active_isa", &ponder::cpu::active_isa,
        "The instruction set the CPU kernels use here: 'avx512', 'avx2' or 'default'.");
  // speculative decoding (ponder.ops.speculative)
  m.def("accept_tokens", &ponder::cpu::accept_tokens, nogil);
  m.def("accept_steps", &ponder::cpu::accept_steps, nogil);
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  // ---- PRM step scoring (ponder.ops.prm) ----
  m.def("prm_steps", &ponder::cpu::prm_steps, nogil);
}
