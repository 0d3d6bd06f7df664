"""Refuse instruction-set copies of the CPU kernels that share a symbol.

CMakeLists.txt (ponder_cpu_isa) compiles each kernel file once per instruction set, into object
directories named ``ponder_cpu_<isa>.dir``, and links all the copies into one module. Every
inline function or template the copies compile from a shared header is a weak symbol, and the
linker keeps ONE definition per name for the whole module: were two copies to define the same
name, the AVX-512 code could run on an AVX2-only machine (SIGILL) or the baseline code in the fast
paths. ponder/common.h (PONDER_NAMESPACE_BEGIN) and cpu/kernel.h give each copy its own
namespace; this check makes sure nothing slips past them. It fails on:

- a symbol of namespace ``ponder`` that objects of two or more copies define (give it the copy's
  namespace: open its header's namespace with PONDER_NAMESPACE_BEGIN, or define it in
  ``ponder::cpu::PONDER_CPU_ISA``);
- a symbol outside ``ponder`` (the standard library's templates, which no namespace of ours can
  hold) that a wider copy defines and the baseline copy does not. CMake links the baseline
  objects first and the linker keeps the first definition, so a symbol the baseline copy also
  defines resolves to baseline code, which every x86-64 CPU runs.

Run by CMakeLists.txt after every link of ponder._C (where nm is found) and by
tests/test_cpu_isa.py. Usage: ``check_isa_symbols.py [--nm NM] OBJECT...``; each object's copy is
read from its ``ponder_cpu_<isa>.dir`` directory. Exit status 1, and the clashes on stderr, when
the check fails.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping

BASELINE = "default"
_ISA_DIR = re.compile(r"ponder_cpu_(\w+)\.dir")


def isa_of(path: str) -> str | None:
    """The instruction-set copy an object belongs to, from its ``ponder_cpu_<isa>.dir``."""
    match = _ISA_DIR.search(path.replace("\\", "/"))
    return match.group(1) if match else None


def external_symbols(nm: str, path: str) -> set[str]:
    """The demangled names of the global, weak and unique symbols an object defines."""
    out = subprocess.run([nm, "-C", "-g", "--defined-only", path], check=True,
                         capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split(maxsplit=2)  # address, type letter, name (which may hold spaces)
        if len(parts) == 3:
            names.add(parts[2])
    return names


def clashes(defined: Mapping[str, Iterable[str]]) -> list[str]:
    """The problems in ``defined`` (copy name -> the symbols its objects define), one line
    each; empty when every copy keeps to its own names."""
    copies_of: dict[str, set[str]] = defaultdict(set)
    for isa, names in defined.items():
        for name in names:
            copies_of[name].add(isa)
    problems = []
    for name, isas in sorted(copies_of.items()):
        if "ponder::" in name:
            if len(isas) > 1:
                problems.append(f"{name}: defined by the copies {', '.join(sorted(isas))}; the "
                                "linker keeps one for all of them")
        elif isas - {BASELINE} and BASELINE not in isas and BASELINE in defined:
            problems.append(f"{name}: defined by the copies {', '.join(sorted(isas))} but not by "
                            "the baseline one; the linker may keep wide-ISA code for every "
                            "caller")
    return problems


def read_objects(paths: Iterable[str], nm: str = "nm") -> dict[str, set[str]]:
    """Copy name -> the symbols its objects among ``paths`` define (objects outside a
    ponder_cpu_<isa>.dir are ignored)."""
    defined: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        isa = isa_of(path)
        if isa is not None:
            defined[isa] |= external_symbols(nm, path)
    return dict(defined)


def check_objects(paths: Iterable[str], nm: str = "nm") -> list[str]:
    """clashes() over the objects at ``paths``."""
    return clashes(read_objects(paths, nm))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nm", default="nm", help="the nm program (CMake's CMAKE_NM)")
    parser.add_argument("objects", nargs="+")
    args = parser.parse_args(argv)
    defined = read_objects(args.objects, args.nm)
    problems = clashes(defined)
    for line in problems:
        print(f"check_isa_symbols: {line}", file=sys.stderr)
    if problems:
        print("check_isa_symbols: the instruction-set copies of the CPU kernels must not share a "
              "symbol (csrc/include/ponder/common.h: PONDER_NAMESPACE_BEGIN)", file=sys.stderr)
        return 1
    print(f"check_isa_symbols: ok: the copies {', '.join(sorted(defined))} define no symbol of "
          "ponder in common, and the baseline copy every library symbol the others define")
    return 0


if __name__ == "__main__":
    sys.exit(main())
