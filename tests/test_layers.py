"""The import layers of ``python/ponder``: read every module's imports (function-local ones too)
and fail on an import that runs up a layer, on a cycle between packages, and on a private name
(``_x``) imported from outside the package that holds it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "ponder"

# Bottom to top. A module may import from its own layer and the layers below it. "ponder" is the
# package's __init__ (ops and the backend report); "__main__" is ``python -m ponder``.
LAYERS = [
    {"_C", "_cuda", "triton_kernels", "_backend", "validation"},
    {"ops", "generation", "openai_generation", "records", "figures", "ponder"},
    {"kv", "samplers", "rewards"},
    {"decoding"},
    {"train", "mathhay"},
    {"toy", "demo", "cli", "__main__"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}



def _sources() -> dict[str, Path]:
    """Module name -> file, for every module of the package (triton_kernels/ at the repository
    root is installed as ``ponder.triton_kernels``; in a checkout the package may hold a link)."""
    found = {}
    trees = [(PACKAGE, "ponder"), (ROOT / "triton_kernels", "ponder.triton_kernels")]
    for top, prefix in trees:
        for path in sorted(top.rglob("*.py")):
            rel = path.relative_to(top).with_suffix("").parts
            if rel[0] == "triton_kernels" and prefix == "ponder":
                continue
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            found[".".join((prefix, *parts))] = path
    return found


SOURCES = _sources()
PACKAGES = {name for name, path in SOURCES.items() if path.name == "__init__.py"}
MODULES = set(SOURCES) | {"ponder._C", "ponder._cuda"}  # the compiled extensions


def _unit(module: str) -> str:
    """The layer-table entry of a module: its top-level name under ponder."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ponder"


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, dotted target)`` of every ponder import in a module; ``from X import a`` gives
    ``X.a`` (a module or a name in X)."""
    package = module if module in PACKAGES else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found += [(node.lineno, f"{source}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "ponder"]


def _module_of(target: str) -> str:
    """The longest prefix of a dotted import target that is a module."""
    parts = target.split(".")
    while ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts)


def _private_owner(target: str) -> str | None:
    """The package a private name in ``target`` belongs to (None when nothing in it is private)."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])
            return owner if owner in PACKAGES else owner.rsplit(".", 1)[0]
    return None


def _edges() -> list[tuple[str, int, str, str]]:
    """``(module, line, target, target module)`` of every import inside the package."""
    return [(module, line, target, _module_of(target))
            for module, path in SOURCES.items() for line, target in _imports(module, path)]


def _where(module: str, line: int) -> str:
    return f"{SOURCES[module].relative_to(ROOT)}:{line}"


def test_the_layer_table_names_every_package():
    missing = {_unit(m) for m in SOURCES} - set(LAYER)
    assert not missing, f"add {sorted(missing)} to LAYERS"


def test_no_import_runs_up_a_layer():
    upward = [f"{_where(m, line)}: {_unit(m)} (layer {LAYER[_unit(m)]}) imports {target} "
              f"(layer {LAYER[_unit(dst)]})"
              for m, line, target, dst in _edges() if LAYER[_unit(dst)] > LAYER[_unit(m)]]
    assert not upward, "\n".join(upward)


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for m, _, _, dst in _edges():
        if _unit(m) != _unit(dst):
            graph.setdefault(_unit(m), set()).add(_unit(dst))

    def path(start: str, goal: str, seen: set[str]) -> list[str] | None:
        for nxt in sorted(graph.get(start, ())):
            if nxt == goal:
                return [nxt]
            if nxt not in seen:
                seen.add(nxt)
                rest = path(nxt, goal, seen)
                if rest is not None:
                    return [nxt, *rest]
        return None

    cycles = {" -> ".join([unit, *found]) for unit in graph
              if (found := path(unit, unit, set())) is not None}
    assert not cycles, "\n".join(sorted(cycles))


def test_no_private_name_crosses_a_package():
    crossing = []
    for m, line, target, _ in _edges():
        owner = _private_owner(target)
        if owner is None or m == owner or m.startswith(owner + "."):
            continue
        crossing.append(f"{_where(m, line)}: {m} imports {target} (private to {owner})")
    assert not crossing, "\n".join(crossing)
