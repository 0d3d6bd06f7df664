"""Run untrusted ``solve()`` code in a locked-down child process and get its value back as JSON.

MathHay's quality control executes code that a language model wrote. The original ``exec``-ed it
in the evaluating process with no limits; here every call runs in a fresh child process that is
shut in by the operating system first and by Python second, and that **fails closed**: when a
layer cannot be set up (or set up but not verified), nothing runs and
:class:`SandboxUnavailableError` names the layer.

The operating-system layers (Linux), applied by a trusted bootstrap before the code is read:

- **Namespaces**: new network, PID, mount, IPC and UTS namespaces (``unshare``; as root directly,
  otherwise inside a new user namespace, which most distributions allow unprivileged users). The
  network namespace has only a loopback interface that is down: no address, inside or outside,
  is reachable, not even ``127.0.0.1``; this is verified (binding ``127.0.0.1`` must fail). In the
  PID namespace the code is process 1 and sees no other process, so it cannot signal its parent
  or anything else.
- **Filesystem**: ``chroot`` into a fresh, empty temporary directory (also its working
  directory); nothing outside it exists for the code, not ``/proc``, ``/dev`` or ``/tmp``. Under
  root the directory is root's with mode 0700 and the code runs as ``nobody``, so it can write
  nothing at all; in a user namespace it may create empty files there only (``RLIMIT_FSIZE`` 0).
- **Privileges**: root drops to ``nobody`` (no supplementary groups); a user namespace drops every
  capability (``capset``). ``PR_SET_NO_NEW_PRIVS`` is set and core dumps are off. Verified: a
  second ``chroot`` must fail.
- **Resource limits**: ``RLIMIT_CPU`` (CPU seconds; ``SIGXCPU``, then ``SIGKILL`` one second
  later), ``RLIMIT_AS`` (address space: a 10 GB allocation is a ``MemoryError``),
  ``RLIMIT_NPROC`` 0 (no new process or thread; verified: ``fork`` must fail), ``RLIMIT_FSIZE``
  0, ``RLIMIT_CORE`` 0, and a wall-clock limit enforced by the parent, which kills the child.
- **Environment**: the child starts with a minimal environment (``PATH``, ``LANG``,
  ``PYTHONHASHSEED``, ``PYTHONDONTWRITEBYTECODE``), never the caller's, in isolated mode
  (``python -I -S``: no site-packages, no ``PYTHON*`` variables, no user directory).

The Python layer (``python_guard=True``, the default) adds an audit hook, which cannot be removed
from inside the process, refusing process creation (``os.system``, ``subprocess``, ``os.exec*``,
``os.fork``, spawn), signals, sockets, ``ctypes``, file writes and renames/removals, environment
changes and ``resource`` changes; and the code's ``__import__`` admits only an allowlist of
standard modules (math, statistics, fractions, decimal, datetime, ...). A refusal raises
:class:`SandboxViolation` in the child, reported as ``limit="guard"``. The guard is a second
line: with it off (``python_guard=False``, for testing), the operating-system layers above still
stop every attack in the test suite, ``ctypes`` calls into libc included.

Only the code's return value crosses back: the child prints it as one JSON line on a pipe the
parent reads (at most ``max_output_bytes``); NaN and infinities are carried as such, a value JSON
cannot hold comes back as its ``repr`` with ``ok=False``.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from ..validation import check_int, check_real

__all__ = ["SandboxLimits", "SandboxResult", "SandboxUnavailableError", "run_solve"]

NOBODY = 65534
_TAG = "@@ponder-sandbox@@"


class SandboxUnavailableError(RuntimeError):
    """A sandbox layer could not be applied or verified; the code was not run. ``limit`` names
    the layer (``"network namespace"``, ``"filesystem (chroot)"``, ``"privilege drop"``,
    ``"process limit"``, ...)."""

    def __init__(self, message: str, *, limit: str):
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class SandboxLimits:
    """What one sandboxed call may use.

    Attributes
    ----------
    wall_seconds : float
        Wall-clock seconds from the start of the child (its start-up, about 0.05 s, included)
        after which the parent kills it.
    cpu_seconds : int
        CPU seconds of the code (``RLIMIT_CPU``).
    memory_bytes : int
        Address-space limit of the child (``RLIMIT_AS``), Python itself included (about 30 MB).
    max_output_bytes : int
        The most the parent reads from the child's pipe; more is an ``"output"`` limit.
    python_guard : bool
        The audit-hook layer (see the module doc). Off only to test the OS layers alone.
    """

    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_bytes: int = 512 * 2**20
    max_output_bytes: int = 2**20
    python_guard: bool = True

    def __post_init__(self):
        where = "SandboxLimits"
        check_real(where, "wall_seconds", self.wall_seconds, positive=True)
        check_int(where, "cpu_seconds", self.cpu_seconds, minimum=1)
        check_int(where, "memory_bytes", self.memory_bytes, minimum=64 * 2**20)
        check_int(where, "max_output_bytes", self.max_output_bytes, minimum=1024)


@dataclass
class SandboxResult:
    """What came back from one call.

    Attributes
    ----------
    ok : bool
        The function returned and its value crossed back as JSON.
    value : Any
        The return value (``None`` when not ``ok``; NaN and infinities as floats).
    error : str or None
        Why not ``ok``: the exception (``"ZeroDivisionError: division by zero"``), or the limit.
    limit : str or None
        The limit that stopped the code: ``"wall-clock"``, ``"cpu"``, ``"memory"``,
        ``"processes"``, ``"file size"``, ``"output"``, ``"guard"`` (a refused operation),
        ``"signal"`` (killed otherwise); None when it returned or raised on its own.
    seconds : float
        Wall-clock seconds of the call, start-up included.
    output : str
        What the code printed (``print``), at most 4096 characters.
    """

    ok: bool
    value: Any = None
    error: str | None = None
    limit: str | None = None
    seconds: float = 0.0
    output: str = ""


# The trusted bootstrap, run as ``python -I -S -c``. It reads the job from stdin, isolates itself
# (in this order: namespaces, fork into the PID namespace, chroot, privilege drop, resource
# limits, verification), then runs the code. Setup failures print a "setup" line naming the layer
# and exit 3, before any untrusted byte is compiled.
_BOOTSTRAP = r'''
import sys, os, json
TAG, CTRL = sys.argv[1], int(sys.argv[2])
def emit(kind, fd=CTRL, tag=TAG, dumps=json.dumps, write=os.write, **kw):
    # Control messages (setup failures, the child's pid, its end) go on their own pipe, which
    # the code never holds: it cannot forge them (a pid the parent would kill, say).
    kw["kind"] = kind
    write(fd, (tag + dumps(kw, allow_nan=True) + "\n").encode())
def fail(layer, detail):
    emit("setup", layer=layer, detail=str(detail))
    os._exit(3)
job = json.loads(sys.stdin.read())
os.close(0)
# Everything the code may use is imported now: after the chroot nothing can be loaded.
import builtins, io, math, cmath, statistics, fractions, decimal, datetime, calendar, itertools
import functools, collections, operator, re, random, numbers, string, socket, signal, resource
import errno, ctypes, subprocess, select
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
as_root = os.geteuid() == 0
flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
if not as_root:
    flags |= CLONE_NEWUSER
if libc.unshare(flags) != 0:
    e = ctypes.get_errno()
    fail("network namespace", "unshare(%s) failed: %s (%s); unprivileged user namespaces may be "
         "disabled (sysctl kernel.unprivileged_userns_clone, "
         "kernel.apparmor_restrict_unprivileged_userns)"
         % ("NEWNET|NEWPID|..." if as_root else "NEWUSER|NEWNET|NEWPID|...", os.strerror(e),
            errno.errorcode.get(e, e)))
alive_r, alive_w = os.pipe()  # the intermediate holds alive_w: EOF on alive_r means it is gone
try:
    pid = os.fork()
except OSError as e:
    fail("pid namespace", "fork into the new PID namespace failed: %s" % e)
if pid:
    # The intermediate: outside the namespaces' process tree, it reports the child's end.
    emit("child", pid=pid)
    while True:
        try:
            _, status, ru = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    emit("end", signal=sig, exit=code, cpu=ru.ru_utime + ru.ru_stime)
    os._exit(0)
# From here: process 1 of the new PID namespace.
os.close(alive_w)
try:
    os.chroot(job["root"])
    os.chdir("/")
except OSError as e:
    fail("filesystem (chroot)", e)
try:
    if as_root:
        os.setgroups([])
        os.setresgid(job["nobody"], job["nobody"], job["nobody"])
        os.setresuid(job["nobody"], job["nobody"], job["nobody"])
    else:
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]
        header = Header(0x20080522, 0)
        data = (Data * 2)()
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset")
    PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE, PR_SET_PDEATHSIG = 38, 4, 1
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    # After the credential change (which clears it): die with the intermediate.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
except OSError as e:
    fail("privilege drop", e)
import select
if select.select([alive_r], [], [], 0)[0]:  # the intermediate died before PDEATHSIG was set
    os._exit(4)
try:
    os.chroot(".")
    fail("privilege drop", "a second chroot succeeded: capabilities were not dropped")
except PermissionError:
    pass
except OSError as e:
    fail("privilege drop", "a second chroot failed, but not with EPERM: %s" % e)
for name, lim, soft, hard in (
        ("process limit", resource.RLIMIT_NPROC, 0, 0),
        ("file size limit", resource.RLIMIT_FSIZE, 0, 0),
        ("core limit", resource.RLIMIT_CORE, 0, 0),
        ("CPU limit", resource.RLIMIT_CPU, job["cpu"], job["cpu"] + 1),
        ("address-space limit", resource.RLIMIT_AS, job["memory"], job["memory"])):
    try:
        resource.setrlimit(lim, (soft, hard))
    except (OSError, ValueError) as e:
        fail(name, e)
    if resource.getrlimit(lim) != (soft, hard):
        fail(name, "set %s, read back %s" % ((soft, hard), resource.getrlimit(lim)))
try:
    if os.fork() == 0:
        os._exit(0)
    fail("process limit", "fork still succeeds under RLIMIT_NPROC 0")
except BlockingIOError:
    pass
# Verified: the only interface is the loopback, and it is down (127.0.0.1 unreachable).
if [n for _, n in socket.if_nameindex()] != ["lo"]:
    fail("network namespace", "interfaces other than lo: %s" % socket.if_nameindex())
probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    probe.connect(("127.0.0.1", 9))
    fail("network namespace", "127.0.0.1 is reachable inside the network namespace")
except OSError as e:
    if e.errno != errno.ENETUNREACH:
        fail("network namespace", "127.0.0.1 answers inside the network namespace: %s" % e)
finally:
    probe.close()
os.closerange(3, max(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))  # CTRL too
def on_xcpu(signum, frame):
    raise TimeoutError("CPU time limit")
signal.signal(signal.SIGXCPU, on_xcpu)

class SandboxViolation(RuntimeError):
    pass

ALLOWED = {"math", "cmath", "statistics", "fractions", "decimal", "datetime", "calendar",
           "itertools", "functools", "collections", "operator", "re", "random", "numbers",
           "string", "json"}
def make_hook(refused, write_flags, violation, str_type=str, int_type=int):
    # Everything the hook uses is bound here (closure cells, immutable values): nothing in the
    # module's globals, which the code can reach, changes what it refuses.
    def hook(event, args):
        if event.startswith(refused):
            raise violation("sandbox refused %s" % event)
        if event == "open":
            mode = args[1] if len(args) > 1 else None
            flags = args[2] if len(args) > 2 else 0
            # Only exact str and int are inspected: a subclass could run code in the hook.
            if mode is not None and (type(mode) is not str_type
                                     or any(c in mode for c in "wax+")):
                raise violation("sandbox refused opening %r for writing" % (args[0],))
            if type(flags) is not int_type or flags & write_flags:
                raise violation("sandbox refused opening %r for writing" % (args[0],))
    return hook
if job["guard"]:
    sys.addaudithook(make_hook(
        ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
         "os.kill", "os.killpg", "subprocess.", "pty.", "os.remove", "os.rename", "os.rmdir",
         "os.mkdir", "os.truncate", "os.chmod", "os.chown", "os.link", "os.symlink", "os.putenv",
         "os.unsetenv", "os.chdir", "os.chroot", "os.setxattr", "os.removexattr", "os.utime",
         "shutil.", "socket.", "ctypes.", "resource.", "signal.pthread_kill", "mmap.",
         "sys.addaudithook", "sys._getframe", "sys._current_frames", "sys.setprofile",
         "sys.settrace", "gc.", "object.__setattr__", "object.__delattr__", "code.__new__",
         "function.__new__", "cpython.", "_posixsubprocess", "webbrowser.", "import"),
        os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, SandboxViolation))
del make_hook
real_import = builtins.__import__
def guarded_import(name, globals=None, locals=None, fromlist=(), level=0,
                   allowed=frozenset(ALLOWED), real_import=real_import,
                   violation=SandboxViolation):
    if level or name.split(".")[0] not in allowed:
        raise violation("sandbox refused import %s" % name)
    return real_import(name, globals, locals, fromlist, level)
safe_builtins = dict(vars(builtins))
if job["guard"]:
    safe_builtins["__import__"] = guarded_import
    for name in ("open", "input", "breakpoint", "exit", "quit", "help"):
        safe_builtins.pop(name, None)
del libc
def finish(job=job, space=None, emit=emit, json=json, os=os, io=io, sys=sys,
           violation=SandboxViolation, exc_types=(MemoryError, TimeoutError, BlockingIOError)):
    # Everything the report needs is a local here: the code can rewrite the module's globals,
    # not these.
    memory_error, timeout_error, blocking_error = exc_types
    captured = io.StringIO()
    sys.stdout = sys.stderr = captured
    try:
        exec(compile(job["code"], "<solution>", "exec"), space)
        fn = space.get(job["function"])
        if not callable(fn):
            raise NameError("the code defines no function %r" % job["function"])
        value = fn()
        try:
            text = json.dumps(value, allow_nan=True)
            result = dict(ok=True, value=json.loads(text))
        except (TypeError, ValueError):
            result = dict(ok=False, error="the value is not JSON: %s" % repr(value)[:200])
    except BaseException as e:
        limit = ("memory" if isinstance(e, memory_error) else "guard"
                 if isinstance(e, violation) else "cpu"
                 if isinstance(e, timeout_error) and str(e) == "CPU time limit" else "processes"
                 if isinstance(e, blocking_error) else None)
        result = dict(ok=False, error=("%s: %s" % (type(e).__name__, e))[:500], limit=limit)
    result["output"] = captured.getvalue()[:4096]
    emit("result", fd=1, **result)
    os._exit(0)
finish(space={"__builtins__": safe_builtins, "__name__": "solution"})
'''


def _minimal_env() -> dict[str, str]:
    """The child's whole environment: nothing of the caller's (no keys, tokens, proxies)."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1"}


def _kill(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_solve(code: str, *, function: str = "solve",
              limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` (Python source defining ``function``) in the sandbox and return what
    ``function()`` returned.

    Parameters
    ----------
    code : str
        The source, e.g. ``"def solve():\\n    return 0.25 * 1200\\n"``.
    function : str
        The function the code defines, called with no arguments.
    limits : SandboxLimits, optional
        Default ``SandboxLimits()``: 10 s wall, 5 CPU s, 512 MB address space, the guard on.

    Returns
    -------
    SandboxResult
        ``ok`` with ``value``, or ``error`` and the ``limit`` that stopped it. The code's own
        failures (an exception, a limit reached) are results, never exceptions here.

    Raises
    ------
    SandboxUnavailableError
        A layer could not be applied or verified (not Linux; no namespaces; ...): nothing ran.
    """
    if not isinstance(code, str):
        raise TypeError(f"run_solve: code must be a str, got {type(code).__name__}")
    if not isinstance(function, str) or not function.isidentifier():
        raise ValueError(f"run_solve: function must be a Python identifier, got {function!r}")
    limits = SandboxLimits() if limits is None else limits
    if not isinstance(limits, SandboxLimits):
        raise TypeError(f"run_solve: limits must be a SandboxLimits, got {type(limits).__name__}")
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailableError(
            f"run_solve: the sandbox needs Linux namespaces and chroot; this is {sys.platform}: "
            "nothing was run", limit="namespaces")
    root = tempfile.mkdtemp(prefix="ponder-sandbox-")
    os.chmod(root, 0o700)
    job = json.dumps({"code": code, "function": function, "root": root, "nobody": NOBODY,
                      "cpu": int(limits.cpu_seconds), "memory": int(limits.memory_bytes),
                      "guard": bool(limits.python_guard)})
    ctrl_r, ctrl_w = os.pipe()
    start = time.monotonic()
    try:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-c", _BOOTSTRAP, _TAG, str(ctrl_w)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=_minimal_env(), cwd=root, close_fds=True, pass_fds=(ctrl_w,),
                start_new_session=True)
        finally:
            os.close(ctrl_w)
        try:
            out, ctrl, over, timed_out = _communicate(proc, ctrl_r, job.encode(), limits, start)
        finally:
            if proc.poll() is None:
                _kill(proc.pid)
            proc.wait()
    finally:
        os.close(ctrl_r)
        shutil.rmtree(root, ignore_errors=True)
    seconds = time.monotonic() - start
    control = _messages(ctrl)
    setup = [m for m in control if m.get("kind") == "setup"]
    if setup:
        layer = str(setup[-1].get("layer"))
        raise SandboxUnavailableError(
            f"run_solve: the sandbox could not apply its {layer}: {setup[-1].get('detail')}; "
            "nothing was run", limit=layer)
    if timed_out:
        return SandboxResult(False, error=f"stopped after {limits.wall_seconds:g} s wall-clock",
                             limit="wall-clock", seconds=seconds)
    if over:
        return SandboxResult(False, error=f"wrote more than {limits.max_output_bytes} bytes",
                             limit="output", seconds=seconds)
    result = next((m for m in reversed(_messages(out)) if m.get("kind") == "result"), None)
    end = next((m for m in reversed(control) if m.get("kind") == "end"), None)
    if end is None:
        tail = (out + ctrl)[-300:].decode(errors="replace")
        raise SandboxUnavailableError(
            f"run_solve: the sandbox child ended (status {proc.returncode}) before isolating "
            f"itself: {tail}", limit="bootstrap")
    sig = end.get("signal") or 0
    if result is not None and not sig:
        return SandboxResult(bool(result.get("ok")), result.get("value") if result.get("ok")
                             else None, result.get("error"), result.get("limit"), seconds,
                             str(result.get("output", "")))
    limit, why = "signal", f"killed by signal {sig}"
    if sig in (signal.SIGXCPU, signal.SIGKILL) and end.get("cpu", 0) >= limits.cpu_seconds - .05:
        limit, why = "cpu", f"stopped after {limits.cpu_seconds} CPU seconds"
    elif sig == signal.SIGXFSZ:
        limit, why = "file size", "tried to write a file (RLIMIT_FSIZE 0)"
    elif not sig:
        limit, why = None, f"exited with status {end.get('exit')} without a result"
    return SandboxResult(False, error=why, limit=limit, seconds=seconds)


def _communicate(proc: subprocess.Popen, ctrl_fd: int, job: bytes, limits: SandboxLimits,
                 start: float) -> tuple[bytes, bytes, bool, bool]:
    """Send the job; read the child's output and control pipes until both close, the wall clock
    runs out or the output exceeds its cap (then the code is killed: process 1 of its PID
    namespace, its death ends everything in it). Returns (output, control, over the cap, timed
    out)."""
    try:
        proc.stdin.write(job)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    bufs = {proc.stdout.fileno(): bytearray(), ctrl_fd: bytearray()}
    out_fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    open_fds = set(bufs)

    def stop() -> None:
        # The pid comes from the control pipe (the intermediate, which has not reaped the code
        # while it has not reported its end, so the pid cannot have been reused).
        control = _messages(bytes(bufs[ctrl_fd]))
        if not any(m.get("kind") == "end" for m in control):
            pid = next((m["pid"] for m in control
                        if m.get("kind") == "child" and isinstance(m.get("pid"), int)), None)
            if pid is not None:
                _kill(pid)
        _kill(proc.pid)

    try:
        while open_fds:
            left = limits.wall_seconds - (time.monotonic() - start)
            if left <= 0:
                stop()
                return bytes(bufs[out_fd]), bytes(bufs[ctrl_fd]), False, True
            for key, _ in sel.select(timeout=min(left, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    open_fds.discard(key.fd)
                    continue
                bufs[key.fd] += chunk
                if len(bufs[key.fd]) > limits.max_output_bytes:
                    stop()
                    return bytes(bufs[out_fd]), bytes(bufs[ctrl_fd]), True, False
        return bytes(bufs[out_fd]), bytes(bufs[ctrl_fd]), False, False
    finally:
        sel.close()
        proc.stdout.close()


def _messages(raw: bytes) -> list[dict]:
    """The protocol lines of a pipe's bytes (anything else the code wrote is ignored)."""
    out = []
    for line in raw.decode(errors="replace").splitlines():
        at = line.find(_TAG)
        if at < 0:
            continue
        try:
            value = json.loads(line[at + len(_TAG):])
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def is_number(value: Any) -> bool:
    """A finite real number (bool excluded): what a consistent answer must be."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))
