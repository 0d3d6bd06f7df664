// ponder._C: the CPU kernels. This file only exports; the ops are listed in cpu/ops.h.
#include <pybind11/pybind11.h>

#include "cpu/dispatch.h"
#include "cpu/ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "ponder CPU kernels (C++17, OpenMP). Called through ponder.ops, not directly.";
  const auto nogil = py::call_guard<py::gil_scoped_release>();
#define PONDER_BIND(name) m.def(#name, PONDER_CPU_ENTRY(name), nogil);
#define PONDER_BIND_BF16(name) m.def(#name, PONDER_CPU_ENTRY_BF16(name), nogil);
  PONDER_CPU_PLAIN_OPS(PONDER_BIND)
  PONDER_CPU_BF16_OPS(PONDER_BIND_BF16)
#undef PONDER_BIND
#undef PONDER_BIND_BF16
  // mala_propose is ula_step at temperature 1: the same launcher.
  m.def("mala_propose", PONDER_CPU_ENTRY(ula_step), nogil);
  m.def("active_isa", &ponder::cpu::active_isa,
        "The instruction set the CPU kernels use here: 'avx512bf16', 'avx512', 'avx2' or "
        "'default'.");
  m.def("advise_huge_pages", &ponder::cpu::advise_huge_pages, py::arg("address"),
        py::arg("nbytes"),
        "Ask Linux to back the whole 2 MiB pages of a fresh, untouched buffer [address, address + "
        "nbytes) with huge pages (madvise MADV_HUGEPAGE); False where nothing was advised.");
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
