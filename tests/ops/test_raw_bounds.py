"""The raw launchers of ponder._C (and ponder._cuda, where built) trust nothing they are told.

Every buffer parameter is a pair (address, element count); each launcher checks, before any
work, that the sizes and strides it will index a buffer with stay inside it (ponder/check.h:
check_buffer). Here every raw function, mala_propose included, is called with false sizes: too
large, negative, wrapping around int64 (chains * dim = 2^64 = 0), strides that reach past the
end, element counts one short, null pointers, thread counts 0 and 2^31 - 1. A small model below
(`_expected`) predicts, independently of the C++, which buffer each case must be refused for.

A missing check would be an out-of-bounds access, which can kill the process, so the hostile
calls run in a subprocess per op that loads the extension file by itself (no torch import: fast)
and reports one JSON line per case; a crash is then a failed test that names the case.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

INT64_MAX = 2**63 - 1
THREADS_MAX = 2**31 - 1
ITEMSIZE = {"f4": 4, "f8": 8, "i8": 8, "b1": 1}


@dataclass(frozen=True)
class Buf:
    """One buffer parameter: name, element type, the sizes (and strides, None: row-major) the
    launcher indexes it with as functions of the size arguments, and whether it may be absent."""

    name: str
    kind: str
    shape: Callable[[dict], list[int]]
    strides: Callable[[dict], list[int]] | None = None
    optional: bool = False
    fill: Callable[[dict, int], float] | None = None  # element i's value (default 0)
    checked: Callable[[set], bool] = lambda present: True  # checked given the present buffers


@dataclass(frozen=True)
class Spec:
    """A raw launcher: its error-message name, its size arguments (valid values), its buffers in
    parameter order, the scalars after the buffers, and its checks that come before the buffers'
    (False: the case is refused for a reason that names no buffer)."""

    op: str
    sizes: dict
    buffers: list[Buf]
    scalars: Callable[[dict], list]
    precheck: Callable[[dict, set], bool] = lambda s, present: True
    extra: list[tuple[str, dict]] = field(default_factory=list)


def _flat(n: str) -> Callable[[dict], list[int]]:
    return lambda s: [s[n]]


_UNIFORM = lambda s, i: 0.5  # noqa: E731

_ULA = Spec(
    "ula_step",
    {"n": 8},
    [Buf("out", "f4", _flat("n")), Buf("x", "f4", _flat("n")), Buf("grad_logp", "f4", _flat("n")),
     Buf("noise", "f4", _flat("n"), optional=True)],
    lambda s: [s["n"], 0, 0.1, 0.1, 7],
)

SPECS: dict[str, Spec] = {
    "ula_step": _ULA,
    "mala_propose": _ULA,  # the same launcher, bound a second time
    "proximal_step": Spec(
        "proximal_step",
        {"n": 8},
        [Buf("out", "f4", _flat("n")), Buf("z", "f4", _flat("n")), Buf("y", "f4", _flat("n")),
         Buf("grad_logp", "f4", _flat("n")), Buf("noise", "f4", _flat("n"), optional=True)],
        lambda s: [s["n"], 0, 0.9, 0.1, 0.1, 0.1, 7],
    ),
    "uld_step": Spec(
        "uld_step",
        {"n": 8},
        [Buf("x_out", "f4", _flat("n")), Buf("v_out", "f4", _flat("n")),
         Buf("x", "f4", _flat("n")), Buf("v", "f4", _flat("n")),
         Buf("grad_logp", "f4", _flat("n")),
         Buf("noise", "f4", lambda s: [2, s["n"]], optional=True)],
        lambda s: [s["n"], 0, 0.9, 0.1, 0.01, 0.1, 0.01, 0.01, 7],
    ),
    "mala_accept": Spec(
        "mala_accept",
        {"chains": 3, "dim": 4},
        [Buf(name, kind, (lambda s: [s["chains"], s["dim"]]) if kind == "f4" else _flat("chains"),
             optional=name == "uniforms", fill=_UNIFORM if name == "uniforms" else None)
         for name, kind in [("x_out", "f4"), ("logp_out", "f8"), ("grad_out", "f4"),
                            ("accepted", "b1"), ("x", "f4"), ("logp", "f8"), ("grad_logp", "f4"),
                            ("x_prop", "f4"), ("logp_prop", "f8"), ("grad_logp_prop", "f4"),
                            ("uniforms", "f8")]],
        lambda s: [s["chains"], s["dim"], 0, 0.1, 7],
        extra=[("chains * dim wraps to 0", {"chains": 2**62, "dim": 4}),
               ("chains * dim wraps to 4", {"chains": 2**62 + 1, "dim": 4})],
    ),
    "prm_steps": Spec(
        "score_steps",
        {"B": 2, "L": 5, "H": 4, "S": 3, "labels": 2, "stride_b": 20, "stride_l": 4},
        [Buf("logits", "f4", lambda s: [s["B"], s["S"], s["labels"]], optional=True),
         *[Buf(name, "f4", shape, checked=lambda present: "num_steps" in present)
           for name, shape in [("scores", lambda s: [s["B"], s["S"]]), ("mins", _flat("B")),
                               ("lasts", _flat("B")), ("products", _flat("B")),
                               ("means", _flat("B"))]],
         Buf("num_steps", "i8", _flat("B"), optional=True),
         Buf("hidden", "f4", lambda s: [s["B"], s["L"], s["H"]],
             lambda s: [s["stride_b"], s["stride_l"], 1]),
         Buf("step_index", "i8", lambda s: [s["B"], s["S"]], fill=lambda s, i: i % s["S"]),
         Buf("head", "f4", lambda s: [s["labels"], s["H"]]),
         Buf("bias", "f4", _flat("labels"), optional=True)],
        lambda s: [s["B"], s["L"], s["H"], s["S"], s["labels"], s["stride_b"], s["stride_l"], 0],
        lambda s, present: s["labels"] in (1, 2) and bool({"logits", "num_steps"} & present),
        extra=[("B * S wraps to 0", {"B": 2**62, "S": 4}),
               ("hidden's largest offset overflows", {"stride_b": INT64_MAX - 10})],
    ),
    "think_pruned_decode_attention": Spec(
        "think_pruned_decode_attention",
        {"B": 2, "Hq": 4, "Hkv": 2, "S": 1, "Lp": 6, "Lr": 2, "D": 8, "T": 5, "Dv": 8,
         "kp_sb": 60, "kp_sh": 30, "kp_sl": 5, "kr_sb": 32, "kr_sh": 16, "kr_sl": 8,
         "v_sb": 128, "v_sh": 64, "v_sl": 8},
        [Buf("out", "f4", lambda s: [s["B"], s["Hq"], s["S"], s["Dv"]]),
         Buf("lse", "f4", lambda s: [s["B"], s["Hq"], s["S"]]),
         Buf("q", "f4", lambda s: [s["B"], s["Hq"], s["S"], s["D"]]),
         Buf("k_pruned", "f4", lambda s: [s["B"], s["Hkv"], s["Lp"], s["T"]],
             lambda s: [s["kp_sb"], s["kp_sh"], s["kp_sl"], 1]),
         Buf("idx", "i8", lambda s: [s["B"], s["Hkv"], s["T"]]),
         Buf("k_recent", "f4", lambda s: [s["B"], s["Hkv"], s["Lr"], s["D"]],
             lambda s: [s["kr_sb"], s["kr_sh"], s["kr_sl"], 1]),
         Buf("v", "f4", lambda s: [s["B"], s["Hkv"], s["Lp"] + s["Lr"], s["Dv"]],
             lambda s: [s["v_sb"], s["v_sh"], s["v_sl"], 1]),
         Buf("starts", "i8", _flat("B"), optional=True),
         Buf("lengths", "i8", _flat("B"), optional=True, fill=lambda s, i: s["Lp"] + s["Lr"])],
        lambda s: [s[k] for k in ("B", "Hq", "Hkv", "S", "Lp", "Lr", "D", "T", "Dv", "kp_sb",
                                  "kp_sh", "kp_sl", "kr_sb", "kr_sh", "kr_sl", "v_sb", "v_sh",
                                  "v_sl")] + [0, 0.3],
        lambda s, present: (s["Hkv"] >= 1 and s["Hq"] % s["Hkv"] == 0 and s["T"] <= s["D"]
                            and s["Lp"] <= 2**40 and s["Lr"] <= 2**40),
        extra=[("B * Hq * S wraps to 0", {"B": 2**62, "S": 4}),
               ("a token stride past the cache", {"v_sl": 9})],
    ),
    "think_channel_scores": Spec(
        "think_channel_scores",
        {"B": 2, "Hq": 4, "Hkv": 2, "W": 3, "L": 5, "D": 8},
        [Buf("out", "f4", lambda s: [s["B"], s["Hkv"], s["D"]]),
         Buf("q_window", "f4", lambda s: [s["B"], s["Hq"], s["W"], s["D"]]),
         Buf("k", "f4", lambda s: [s["B"], s["Hkv"], s["L"], s["D"]])],
        lambda s: [s[k] for k in ("B", "Hq", "Hkv", "W", "L", "D")] + [0],
        lambda s, present: (s["W"] >= 1 and s["L"] >= 1 and s["Hkv"] >= 1
                            and s["Hq"] % s["Hkv"] == 0),
    ),
    "accept_tokens": Spec(
        "accept_tokens",
        {"B": 2, "K": 3, "V": 11},
        [Buf("tokens_out", "i8", lambda s: [s["B"], s["K"] + 1]),
         Buf("counts_out", "i8", _flat("B")),
         Buf("draft_tokens", "i8", lambda s: [s["B"], s["K"]]),
         Buf("target_logits", "f4", lambda s: [s["B"], s["K"] + 1, s["V"]]),
         Buf("draft_logits", "f4", lambda s: [s["B"], s["K"], s["V"]], optional=True),
         Buf("target_thr", "f4", lambda s: [s["B"], s["K"] + 1], optional=True),
         Buf("draft_thr", "f4", lambda s: [s["B"], s["K"]], optional=True),
         Buf("accept_u", "f8", lambda s: [s["B"], s["K"]], optional=True, fill=_UNIFORM),
         Buf("race_u", "f8", lambda s: [s["B"], s["V"]], optional=True, fill=_UNIFORM),
         Buf("seeds", "i8", _flat("B"), optional=True)],
        lambda s: [s["B"], s["K"], s["V"], 0, 1.0, 0],
        lambda s, present: (1 <= s["K"] < 2**62 and s["V"] >= 1
                            and ("accept_u" in present) == ("race_u" in present)
                            and ("accept_u" in present or "seeds" in present or s["B"] == 0)),
        extra=[("B * (K + 1) wraps to 0", {"B": 2**62, "K": 3})],
    ),
    "accept_steps": Spec(
        "accept_steps",
        {"n": 6},
        [Buf("accepted_out", "b1", _flat("n")), Buf("weights_out", "f8", _flat("n")),
         Buf("rewards", "f8", _flat("n")),
         Buf("uniforms", "f8", _flat("n"), optional=True, fill=_UNIFORM)],
        lambda s: [s["n"], 0, 0.5, 10.0, 7],
    ),
}
# ponder._cuda's launchers take the CPU launchers' buffers (the device index and the stream in
# place of the thread count); ThinK attention and accept_tokens add a workspace, and attention
# its chunk length, and refuses head dims above 256.
_CHUNK = 4  # keys per CUDA attention chunk in these calls
_ATTN = SPECS["think_pruned_decode_attention"]
_ACCEPT = SPECS["accept_tokens"]
CUDA_SPECS: dict[str, Spec] = {
    **{op: SPECS[op] for op in ("ula_step", "mala_propose", "proximal_step", "uld_step",
                                "mala_accept", "prm_steps", "think_channel_scores",
                                "accept_steps")},
    "think_pruned_decode_attention": dataclasses.replace(
        _ATTN,
        buffers=[*_ATTN.buffers, Buf("workspace", "f4", lambda s: [
            s["B"], s["Hkv"], max(1, -(-(s["Lp"] + s["Lr"]) // _CHUNK)),
            s["Hq"] // s["Hkv"] * s["S"], s["Dv"] + 2])],
        scalars=lambda s: [*_ATTN.scalars(s), _CHUNK],
        precheck=lambda s, present: (_ATTN.precheck(s, present) and s["D"] <= 256
                                     and s["Dv"] <= 256),
    ),
    "accept_tokens": dataclasses.replace(
        _ACCEPT,
        buffers=[*_ACCEPT.buffers,
                 Buf("workspace", "i8", lambda s: [s["B"], 2 * s["K"] + 1, 2])],
    ),
}
CUDA_OPS = list(CUDA_SPECS)


def _reach(shape: list[int], strides: list[int] | None) -> int | str:
    """Elements a launcher reaches with these sizes and strides, or why it must refuse them."""
    if any(n < 0 for n in shape):
        return "negative size"
    if strides is not None and any(st < 0 for st in strides):
        return "negative stride"
    if 0 in shape:
        return 0
    count = 1
    for n in shape:
        count *= n
    if count > INT64_MAX:
        return "overflows int64"
    if strides is None:
        return count
    last = sum((n - 1) * st for n, st in zip(shape, strides))
    return "overflows int64" if last > INT64_MAX else last + 1


def _cases(spec: Spec, cpu: bool) -> list[tuple[str, dict, dict, int]]:
    """(name, sizes, {buffer: (null?, element count)}, threads) for every hostile call, plus the
    valid one. Buffers are allocated for the valid sizes; a case only changes what is claimed."""
    sizes = spec.sizes
    full = {b.name: (False, _reach(b.shape(sizes), b.strides and b.strides(sizes)))
            for b in spec.buffers}
    cases = [("valid", sizes, full, 1)]
    for b in spec.buffers:
        n = full[b.name][1]
        variants = {"one element short": (False, n - 1), "null": (True, 0),
                    "null with a count": (True, n), "negative count": (False, -1)}
        for what, claim in variants.items():
            if (what == "one element short" and n == 0) or (what == "null" and n == 0):
                continue
            cases.append((f"{b.name}: {what}", sizes, {**full, b.name: claim}, 1))
    for key, value in sizes.items():
        for what, new in [("negative", -1), ("too large", 2 * value + 3), ("2^62", 2**62),
                          ("INT64_MAX", INT64_MAX)]:
            cases.append((f"{key} {what}", {**sizes, key: new}, full, 1))
    for what, change in spec.extra:
        cases.append((what, {**sizes, **change}, full, 1))
    if cpu:
        cases += [("threads 0", sizes, full, 0), ("threads -3", sizes, full, -3),
                  ("threads 2^31 - 1", sizes, full, THREADS_MAX)]
    return cases


def _expected(spec: Spec, sizes: dict, claims: dict, threads: int) -> tuple[str, str | None]:
    """("ok", None), or ("error", the message's start: op and buffer) and what it must say
    (returned as "error:<start>|<fragment>")."""
    if threads < 1:
        return "error", f"{spec.op}: |threads must be >= 1"
    present = {name for name, (null, n) in claims.items() if not (null and n == 0)}
    if not spec.precheck(sizes, present):
        return "error", f"{spec.op}: |"
    for b in spec.buffers:
        null, n = claims[b.name]
        if not b.checked(present) or (b.optional and b.name not in present):
            continue
        start = f"{spec.op}: {b.name}"
        if n < 0:
            return "error", f"{start}|negative element count"
        if null and n != 0:
            return "error", f"{start}|null pointer with {n} elements"
        reach = _reach(b.shape(sizes), b.strides and b.strides(sizes))
        if isinstance(reach, str):
            return "error", f"{start}|{reach}"
        if reach == 0:
            continue
        if null:
            return "error", f"{start}|is a null pointer"
        if reach > n:
            return "error", f"{start}|has {n} elements"
    return "ok", None


# --------------------------------------------------------------------------------------------
# The child: load the extension file alone, run every case of one op, one JSON line per case.
# --------------------------------------------------------------------------------------------


def _load_extension(path: str):
    name = os.path.basename(path).split(".")[0]  # "_C" or "_cuda": its PyInit_ name
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _allocate(spec: Spec) -> dict:
    """A zeroed ctypes array per buffer, of the valid sizes, filled where a value matters."""
    arrays = {}
    for b in spec.buffers:
        n = _reach(b.shape(spec.sizes), b.strides and b.strides(spec.sizes))
        ctype = {"f4": ctypes.c_float, "f8": ctypes.c_double, "i8": ctypes.c_int64,
                 "b1": ctypes.c_uint8}[b.kind]
        arr = (ctype * max(n, 1))()
        if b.fill is not None:
            for i in range(n):
                arr[i] = b.fill(spec.sizes, i)
        arrays[b.name] = arr
    return arrays


def child_main(path: str, launcher: str, cpu: bool) -> None:
    module = _load_extension(path)
    fn = getattr(module, launcher)
    spec = SPECS[launcher] if cpu else CUDA_SPECS[launcher]
    arrays = _allocate(spec)
    for name, sizes, claims, threads in _cases(spec, cpu):
        if not cpu and _expected(spec, sizes, claims, threads)[0] == "ok":
            continue  # never launch a GPU kernel on host memory: only refusals are tested
        args = []
        for b in spec.buffers:
            null, n = claims[b.name]
            args += [0 if null else ctypes.addressof(arrays[b.name]), n]
        tail = [threads] if cpu else [0, 0]  # device 0, stream 0
        try:
            fn(*args, *spec.scalars(sizes), *tail)
            result = ["ok", ""]
        except Exception as exc:  # noqa: BLE001 - reported to the parent as is
            result = [type(exc).__name__, str(exc)]
        print(json.dumps([name, *result]), flush=True)
    if cpu and launcher == "ula_step":
        # Large enough for the parallel path: 2^31 - 1 threads is clamped, the result unchanged.
        n = 1 << 16
        x = (ctypes.c_float * n)(*[float(i % 7) for i in range(n)])
        outs = [(ctypes.c_float * n)() for _ in range(2)]
        for out, threads in zip(outs, (1, THREADS_MAX)):
            fn(ctypes.addressof(out), n, ctypes.addressof(x), n, ctypes.addressof(x), n, 0, 0,
               n, 0, 0.1, 0.1, 7, threads)
        same = bytes(outs[0]) == bytes(outs[1])
        print(json.dumps(["parallel, 2^31 - 1 threads", "ok" if same else "mismatch", ""]),
              flush=True)


def _extension_path(name: str) -> str | None:
    try:
        return importlib.import_module(f"ponder.{name}").__file__
    except ImportError:
        return None


PARAMS = [pytest.param("_C", op, id=f"cpu-{op}") for op in SPECS] + [
    pytest.param("_cuda", op, id=f"cuda-{op}") for op in CUDA_OPS
]


@pytest.mark.parametrize("extension, launcher", PARAMS)
def test_raw_launcher_refuses_false_sizes(extension, launcher):
    path = _extension_path(extension)
    if path is None:
        pytest.skip(f"ponder.{extension} is not built")
    cpu = extension == "_C"
    spec = SPECS[launcher] if cpu else CUDA_SPECS[launcher]
    expected = {name: _expected(spec, sizes, claims, threads)
                for name, sizes, claims, threads in _cases(spec, cpu)}
    if cpu and launcher == "ula_step":
        expected["parallel, 2^31 - 1 threads"] = ("ok", None)
    if not cpu:
        expected = {k: v for k, v in expected.items() if v[0] != "ok"}
    run = subprocess.run(
        [sys.executable, __file__, path, launcher, "cpu" if cpu else "cuda"],
        capture_output=True, text=True, timeout=60,
    )
    got = {}
    for line in run.stdout.splitlines():
        name, kind, message = json.loads(line)
        got[name] = (kind, message)
    missing = [name for name in expected if name not in got]
    assert run.returncode == 0 and not missing, (
        f"the child died (status {run.returncode}) at case {missing[:1]}: {run.stderr[-2000:]}"
    )
    failures = []
    for name, (outcome, pattern) in expected.items():
        kind, message = got[name]
        if outcome == "ok":
            if kind != "ok":
                failures.append(f"{name}: expected success, got {kind}: {message}")
            continue
        start, fragment = pattern.split("|")
        if kind != "ValueError" or not message.startswith(start) or fragment not in message:
            failures.append(f"{name}: expected ValueError '{start}...{fragment}', "
                            f"got {kind}: {message}")
    assert not failures, "\n".join(failures)


def test_the_model_covers_every_raw_function():
    """Every op ponder._C exports is exercised above (a new op must add its spec)."""
    native = pytest.importorskip("ponder._C")
    exported = {name for name in dir(native)
                if not name.startswith("_") and callable(getattr(native, name))}
    # Not ops: the ISA name, and the huge-page advice for fresh outputs (hostile calls to it are
    # in tests/test_cpu_isa.py).
    assert exported - {"active_isa", "advise_huge_pages"} == set(SPECS) | set(LM_HEAD_CASES)


# The LM-head chunk launchers check each buffer's count exactly against rows x cols (rows x k),
# with the products overflow-checked: a few hostile calls each, in a subprocess as above.
LM_HEAD_CASES = {
    # (address, count) pairs in order, then the sizes; 8 buffers of 8 doubles at a real address.
    "lm_head_chunk_forward": [
        ("rows x cols wraps to 0", "{z}, 0, 0, 0, 0, 0, {m}, 0, {s}, 0, 0, 0, 0, 0, 0, 0, 0, 0, "
         "0, 0, 0, 0, 2**32, 2**32, 0, 0, 1, 1", "overflows int64"),
        ("z one short", "{z}, 7, 0, 0, 0, 0, {m}, 2, {s}, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "
         "2, 4, 0, 0, 1, 1", "z has 7 elements, expected 8"),
        ("null z", "0, 0, 0, 0, 0, 0, {m}, 2, {s}, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "
         "2, 4, 0, 0, 1, 1", "z is a null pointer"),
        ("rows x k wraps", "{z}, 8, 0, 0, 0, 0, {m}, 2, {s}, 2, 0, 0, 0, 0, 0, 0, 0, 0, {b}, 0, "
         "{b}, 0, 2, 4, 2**63 - 1, 0, 1, 1", "overflows int64"),
        ("threads 0", "{z}, 8, 0, 0, 0, 0, {m}, 2, {s}, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "
         "2, 4, 0, 0, 1, 0", "threads"),
    ],
    "lm_head_chunk_backward": [
        ("rows x cols wraps to 0", "{z}, 0, 0, 0, {m}, 0, {s}, 0, 0, 0, 0, 0, 0, 0, 0, 0, "
         "2**32, 2**32, 0, 1, 1", "overflows int64"),
        ("lse one short", "{z}, 8, 0, 0, {m}, 1, {s}, 2, 0, 0, 0, 0, 0, 0, 0, 0, 2, 4, 0, 1, 1",
         "lse has 1 elements, expected 2"),
    ],
}


@pytest.mark.parametrize("launcher", sorted(LM_HEAD_CASES))
def test_lm_head_raw_launchers_refuse_false_sizes(launcher):
    path = _extension_path("_C")
    if path is None:
        pytest.skip("ponder._C is not built")
    calls = "\n".join(
        f"""
try:
    fn({args.format(z="z", m="m", s="s", b="b")})
    print({name!r}, "ok", "", sep="|")
except ValueError as err:
    print({name!r}, "ValueError", str(err).replace(chr(10), " "), sep="|")
""" for name, args, _ in LM_HEAD_CASES[launcher])
    script = f"""
import ctypes, importlib.machinery, importlib.util
spec = importlib.util.spec_from_file_location("_C", {path!r})
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
fn = getattr(mod, {launcher!r})
bufs = [(ctypes.c_double * 8)() for _ in range(4)]
z, m, s, b = (ctypes.addressof(x) for x in bufs)
{calls}
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    got = dict(line.split("|", 1) for line in run.stdout.splitlines())
    for name, _args, fragment in LM_HEAD_CASES[launcher]:
        assert name in got, run.stdout
        assert got[name].startswith("ValueError|") and fragment in got[name], (name, got[name])


# --------------------------------------------------------------------------------------------
# Correct raw calls: the same results as the public ops.
# --------------------------------------------------------------------------------------------


def _public_calls():
    """One public call per launcher on the CPU backend, with strided views where the op takes
    them (ThinK reads slices of preallocated caches in place)."""
    import torch
    from ponder.ops import langevin as L
    from ponder.ops import prm as P
    from ponder.ops import speculative as S
    from ponder.ops import think as T

    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    x, grad, y, v, noise = (randn(5, 37) for _ in range(5))
    xp, gp = randn(5, 37), randn(5, 37)
    logp, logp_p = randn(5).double(), randn(5).double()
    hidden = randn(2, 9, 16)
    step_index = torch.tensor([[1, 4, 8], [0, 2, -1]])
    # ThinK on slices of caches longer than the keys in use (not contiguous).
    kp_cache, kr_cache, v_cache = randn(2, 2, 20, 5), randn(2, 2, 6, 8), randn(2, 2, 26, 8)
    idx = torch.stack([torch.randperm(8, generator=g)[:5].sort().values for _ in range(4)])
    target, draft = randn(3, 4, 11), randn(3, 3, 11)
    tokens = torch.randint(0, 11, (3, 3), generator=g)
    return {
        "ula_step": lambda: L.ula_step(x, grad, 0.1, noise=noise, backend="cpu"),
        "mala_propose": lambda: L.mala_propose(x, grad, 0.1, noise=noise, backend="cpu"),
        "proximal_step": lambda: L.proximal_step(x, y, grad, 0.05, 0.5, noise=noise,
                                                 backend="cpu"),
        "uld_step": lambda: L.uld_step(x, v, grad, 0.1, 2.0, generator=3, backend="cpu"),
        "mala_accept": lambda: L.mala_accept(x, logp, grad, xp, logp_p, gp, 0.1, generator=5,
                                             backend="cpu"),
        "prm_steps": lambda: P.score_steps(hidden, step_index, randn(2, 16), backend="cpu"),
        "think_pruned_decode_attention": lambda: T.pruned_decode_attention(
            randn(2, 4, 1, 8), kp_cache[:, :, :12], idx.view(2, 2, 5), kr_cache[:, :, :3],
            v_cache[:, :, :15], backend="cpu"),
        "think_channel_scores": lambda: T.channel_scores(randn(2, 4, 3, 8), randn(2, 2, 7, 8),
                                                         backend="cpu"),
        "accept_tokens": lambda: S.accept_tokens(tokens, target, draft, 0.7, generator=11,
                                                 backend="cpu"),
        "accept_steps": lambda: S.accept_steps(randn(9).double(), 0.2, "sigmoid", generator=13,
                                               backend="cpu"),
    }


# The leading buffers each launcher writes (the rest it only reads).
N_OUTPUTS = {"ula_step": 1, "mala_propose": 1, "proximal_step": 1, "uld_step": 2,
             "mala_accept": 4, "prm_steps": 7, "think_pruned_decode_attention": 2,
             "think_channel_scores": 1, "accept_tokens": 2, "accept_steps": 2}


def _storage_extent(t) -> int:
    """Elements from t's first to the end of its storage: what a strided view may reach."""
    return t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()


def test_raw_calls_match_public_ops(monkeypatch):
    """Replay each public op's native call by hand, with (data_ptr, numel) pairs written here
    (the storage extent for a strided view): the same bits. A view's own numel is refused."""
    import torch
    from ponder.ops import _common, langevin, prm, speculative, think

    calls = []

    def spy(backend, kernel, tensors, *scalars):
        calls.append((kernel, list(tensors), scalars))
        return _common.launch_native(backend, kernel, tensors, *scalars)

    for module in (langevin, prm, speculative, think):
        monkeypatch.setattr(module, "launch_native", spy)
    threads = torch.get_num_threads()
    replayed = set()
    for launcher, public in _public_calls().items():
        calls.clear()
        public()
        assert [c[0].__name__ for c in calls] == [launcher]
        kernel, tensors, scalars = calls[0]
        outs = N_OUTPUTS[launcher]
        fresh = [None if t is None else torch.full_like(t, 7) for t in tensors[:outs]]
        args = []
        for t in fresh + tensors[outs:]:
            if t is None:
                args += [0, 0]
            else:
                args += [t.data_ptr(), t.numel() if t.is_contiguous() else _storage_extent(t)]
        kernel(*args, *scalars, threads)
        for mine, theirs in zip(fresh, tensors[:outs]):
            if theirs is not None:
                torch.testing.assert_close(mine, theirs, rtol=0, atol=0, equal_nan=True)
        replayed.add(launcher)
        strided = [i for i, t in enumerate(tensors) if t is not None and not t.is_contiguous()]
        for i in strided:  # a strided view's numel does not cover what its strides reach
            short = list(args)
            short[2 * i + 1] = tensors[i].numel()
            with pytest.raises(ValueError, match=rf"^{launcher}: \w+ has \d+ elements"):
                kernel(*short, *scalars, threads)
    assert replayed == set(SPECS)


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2], sys.argv[3] == "cpu")
