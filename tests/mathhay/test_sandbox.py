"""The sandbox's security tests: each attack is stopped and reported, and nothing escapes.

Every attack runs twice: with the Python guard (the default) and without it
(``python_guard=False``), which shows that the operating-system layers alone (namespaces, chroot,
privilege drop, resource limits) stop it too, ``ctypes`` calls into libc included. An attack's code
returns ``"ESCAPED"`` if a step it tried succeeded, and the test also checks the world outside:
the files, the listening socket, the marker a shell command would have created.

Where the host cannot build the sandbox (no user namespaces for an unprivileged user) these tests
skip, saying why, unless ``PONDER_REQUIRE_SANDBOX=1`` makes that a failure.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from ponder.mathhay import sandbox
from ponder.mathhay.sandbox import SandboxLimits, SandboxUnavailableError, run_solve

FAST = SandboxLimits(wall_seconds=6.0, cpu_seconds=1, memory_bytes=256 * 2**20)


@pytest.fixture(scope="module", autouse=True)
def _sandbox_here():
    try:
        result = run_solve("def solve():\n    return 1 + 1\n")
    except SandboxUnavailableError as err:
        if os.environ.get("PONDER_REQUIRE_SANDBOX", "") not in ("", "0"):
            raise
        pytest.skip(f"the sandbox cannot be built on this host ({err.limit}): {err}")
    assert result.ok and result.value == 2


@pytest.fixture(params=[True, False], ids=["guard", "os-only"])
def limits(request) -> SandboxLimits:
    return SandboxLimits(wall_seconds=FAST.wall_seconds, cpu_seconds=FAST.cpu_seconds,
                         memory_bytes=FAST.memory_bytes, python_guard=request.param)


def _code(body: str) -> str:
    return "def solve():\n" + textwrap.indent(textwrap.dedent(body), "    ")


def _stopped(result) -> None:
    """The attack did not succeed: no "ESCAPED" value, and something was reported."""
    assert result.value != "ESCAPED", result
    assert not result.ok or result.value in ("blocked", -1), result


# The code's way to the os module and ctypes when its imports are refused: the classes every
# Python process has, reached from a tuple (the usual trick), and sys.modules through them.
GET_MODULES = """
def modules():
    for cls in ().__class__.__base__.__subclasses__():
        init = getattr(cls, "__init__", None)
        g = getattr(init, "__globals__", None)
        if g and "sys" in g and hasattr(g["sys"], "modules"):
            return g["sys"].modules
    return {}
mods = modules()
"""


def test_ordinary_code_and_values():
    r = run_solve(_code("import math\nreturn round(math.sqrt(2) * 1000, 3)"))
    assert r.ok and r.value == pytest.approx(1414.214) and r.limit is None
    r = run_solve(_code("print('working'); return 1 / 0"))
    assert not r.ok and r.error.startswith("ZeroDivisionError") and r.limit is None
    assert r.output == "working\n"
    r = run_solve(_code("return float('-inf')"))
    assert r.ok and r.value == -math.inf
    r = run_solve(_code("return object()"))
    assert not r.ok and "not JSON" in r.error
    r = run_solve("x = 1\n")
    assert not r.ok and "defines no function" in r.error


def test_infinite_loop_is_stopped(limits):
    r = run_solve(_code("while True:\n    pass"), limits=limits)
    assert not r.ok and r.limit in ("cpu", "wall-clock"), r
    # A sleeping loop uses no CPU: the wall clock stops it.
    r = run_solve(_code(GET_MODULES + "while True:\n    mods['time'].sleep(1)"),
                  limits=SandboxLimits(wall_seconds=2.0, python_guard=limits.python_guard))
    assert not r.ok and r.limit == "wall-clock", r


def test_ten_gigabyte_allocation_is_stopped(limits):
    r = run_solve(_code("x = bytearray(10 * 10**9)\nreturn 'ESCAPED'"), limits=limits)
    assert not r.ok and r.limit == "memory", r
    r = run_solve(_code("x = [0] * (10**9 + 3 * 10**8)\nreturn 'ESCAPED'"), limits=limits)
    assert not r.ok and r.limit == "memory", r


def test_fork_bomb_is_stopped(limits):
    r = run_solve(_code(GET_MODULES + """
os = mods["os"]
while True:
    os.fork()
"""), limits=limits)
    assert not r.ok and r.limit in ("processes", "guard"), r
    # Through libc, and a thread (a thread is a process to RLIMIT_NPROC).
    r = run_solve(_code(GET_MODULES + """
ctypes = mods["ctypes"]
libc = ctypes.CDLL(None)
if libc.fork() > 0:
    return "ESCAPED"
import _thread
try:
    mods["_thread"].start_new_thread(print, ("x",))
    return "ESCAPED"
except Exception:
    return "blocked"
"""), limits=limits)
    _stopped(r)


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.3)
    yield server
    server.close()


def _accepted(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


def test_socket_to_localhost_is_stopped(limits, listener):
    port = listener.getsockname()[1]
    r = run_solve(_code(GET_MODULES + f"""
s = mods["socket"].socket()
s.settimeout(2)
s.connect(("127.0.0.1", {port}))
s.sendall(b"leak")
return "ESCAPED"
"""), limits=limits)
    assert not r.ok, r
    assert r.limit == "guard" or "unreachable" in r.error, r
    # The same through libc's socket() and connect().
    r = run_solve(_code(GET_MODULES + f"""
ctypes = mods["ctypes"]
libc = ctypes.CDLL(None)
fd = libc.socket(2, 1, 0)
addr = (ctypes.c_ubyte * 16)(2, 0, {port >> 8}, {port & 255}, 127, 0, 0, 1)
return "ESCAPED" if fd >= 0 and libc.connect(fd, addr, 16) == 0 else "blocked"
"""), limits=limits)
    _stopped(r)
    assert not _accepted(listener)


@pytest.fixture
def victim(tmp_path):
    """A world-writable folder with a file in it, outside the sandbox's working directory."""
    folder = tmp_path / "victim"
    folder.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(folder, 0o777)
    target = folder / "keep.txt"
    target.write_text("original")
    os.chmod(target, 0o666)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _untouched(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
    assert (folder / "keep.txt").read_text() == "original"


@pytest.mark.parametrize("attack", ["write", "rename", "delete", "libc"])
def test_file_changes_outside_cwd_are_stopped(limits, victim, attack):
    keep, new = str(victim / "keep.txt"), str(victim / "new.txt")
    body = {
        "write": f"""
for path in [{keep!r}, {new!r}, "../../keep.txt", "/tmp/ponder-sandbox-escape.txt"]:
    try:
        with mods["io"].open(path, "w") as f:
            f.write("changed")
        return "ESCAPED"
    except Exception:
        pass
return "blocked"
""",
        "rename": f"""
mods["os"].rename({keep!r}, {new!r})
return "ESCAPED"
""",
        "delete": f"""
mods["os"].remove({keep!r})
return "ESCAPED"
""",
        "libc": f"""
libc = mods["ctypes"].CDLL(None)
bad = [libc.unlink({keep.encode()!r}), libc.rename({keep.encode()!r}, {new.encode()!r}),
       libc.mkdir(b"escape", 0o777), libc.chroot(b"escape")]
return "ESCAPED" if 0 in bad else "blocked"
""",
    }[attack]
    r = run_solve(_code(GET_MODULES + body), limits=limits)
    _stopped(r)
    _untouched(victim)
    assert not os.path.exists("/tmp/ponder-sandbox-escape.txt")


def test_environment_holds_no_secrets(limits, monkeypatch):
    monkeypatch.setenv("PONDER_TEST_SECRET", "hunter2-do-not-leak")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-hunter2-do-not-leak")
    r = run_solve(_code(GET_MODULES + """
os = mods["os"]
seen = [repr(dict(os.environ))]
for path in ["/proc/self/environ", "/proc/%d/environ" % os.getppid(), "/proc/1/environ"]:
    try:
        seen.append(mods["io"].open(path, "rb").read().decode(errors="replace"))
    except Exception as e:
        seen.append(type(e).__name__)
return " ".join(seen)
"""), limits=limits)
    text = f"{r.value} {r.error} {r.output}"
    assert "hunter2" not in text
    if r.ok:  # what the code saw: the minimal environment only
        assert "PATH" in text and "OPENAI" not in text


@pytest.mark.parametrize("how", ["os.system", "subprocess", "exec"])
def test_shell_commands_are_stopped(limits, tmp_path, how):
    os.chmod(tmp_path, 0o777)
    marker = tmp_path / "marker"
    body = {
        "os.system": f'return "ESCAPED" if mods["os"].system("touch {marker}") == 0 else "blocked"',
        "subprocess": f'mods["subprocess"].run(["touch", "{marker}"])\nreturn "ESCAPED"',
        "exec": f'mods["os"].execv("/usr/bin/touch", ["touch", "{marker}"])',
    }[how]
    r = run_solve(_code(GET_MODULES + body), limits=limits)
    _stopped(r)
    assert not marker.exists()


def test_ctypes_signals_and_privileges(limits):
    me = os.getpid()
    r = run_solve(_code(GET_MODULES + f"""
os = mods["os"]
libc = mods["ctypes"].CDLL(None)
hits = []
# Signal 0 only asks whether a process could be signalled: no harm if the sandbox were broken.
for pid in [-1, {me}, os.getppid() or 1]:
    if pid != os.getpid() and libc.kill(pid, 0) == 0:
        hits.append(pid)
if libc.setuid(0) == 0 and os.getuid() == 0 and {os.geteuid()} != 0:
    hits.append("setuid")
libc.system(b"true")
# A nested user namespace would give back capabilities in it: refused to a chrooted process.
if libc.unshare(0x10000000) == 0:
    hits.append("userns")
import resource
try:
    mods["resource"].setrlimit(mods["resource"].RLIMIT_NPROC, (100, 100))
    hits.append("rlimit")
except Exception:
    pass
return "ESCAPED" if hits else "blocked"
"""), limits=limits)
    _stopped(r)


def test_guard_refuses_imports_and_builtins_tricks():
    r = run_solve(_code("import os\nreturn 'ESCAPED'"))
    assert not r.ok and r.limit == "guard"
    r = run_solve(_code(GET_MODULES + "mods['os'].system('true')\nreturn 'ESCAPED'"))
    assert not r.ok and r.limit == "guard" and "os.system" in r.error
    r = run_solve(_code("return open('x', 'w')"))
    assert not r.ok and "NameError" in r.error


def test_output_is_capped():
    flood = "os = mods['os']\nwhile True:\n    os.write(1, b'x' * 65536)"
    r = run_solve(_code(GET_MODULES + flood),
                  limits=SandboxLimits(max_output_bytes=4096, python_guard=False))
    assert not r.ok and r.limit in ("output", "cpu"), r


@pytest.mark.parametrize("broken, layer", [
    ("libc.unshare(flags) != 0", "network namespace"),
    ('os.chroot(job["root"])', "filesystem (chroot)"),
    ('("process limit", resource.RLIMIT_NPROC, 0, 0)', "process limit"),
])
def test_fails_closed(monkeypatch, tmp_path, broken, layer):
    """A layer that cannot be applied (simulated by breaking that step of the bootstrap): the
    call raises naming the layer, and the code never runs."""
    replacement = {
        "libc.unshare(flags) != 0": "True",
        'os.chroot(job["root"])': 'os.chroot("/nonexistent-ponder-root")',
        '("process limit", resource.RLIMIT_NPROC, 0, 0)':
            '("process limit", resource.RLIMIT_NPROC, 64, 64)',
    }[broken]
    assert broken in sandbox._BOOTSTRAP
    monkeypatch.setattr(sandbox, "_BOOTSTRAP", sandbox._BOOTSTRAP.replace(broken, replacement))
    with pytest.raises(SandboxUnavailableError, match="nothing was run") as info:
        run_solve(_code("return 1"))
    assert info.value.limit == layer


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None or not SYSTEM_PYTHON,
                    reason="runs the unprivileged (user-namespace) path from root via setpriv")
def test_unprivileged_user_namespace_path():
    """The path an ordinary user takes (a user namespace, capabilities dropped), run here as
    ``nobody`` with no capabilities: the same attacks are stopped, or the sandbox refuses to
    start. (The system Python, which ``nobody`` can run, loads sandbox.py on its own: the
    module needs the standard library only, and two small argument checks stubbed here.)"""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ponder-userns-test-"))  # pytest's tmp is root-only
    source = Path(sandbox.__file__).read_text().replace(
        "from ..validation import check_int, check_real",
        "check_int = check_real = lambda *a, **k: None")
    (folder / "sandbox_copy.py").write_text(source)
    script = folder / "attack.py"
    script.write_text("\n".join(line[8:] for line in f"""
        import json, sys
        sys.path.insert(0, {str(folder)!r})
        from sandbox_copy import run_solve, SandboxLimits, SandboxUnavailableError
        lim = SandboxLimits(wall_seconds=6, cpu_seconds=1, python_guard=False)
        mods = {GET_MODULES!r}
        out = {{}}
        try:
            for name, body in [
                ("value", "return 6 * 7"),
                ("fork", "return 'ESCAPED' if mods['os'].fork() >= 0 else 0"),
                ("chroot", "mods['os'].mkdir('d'); mods['os'].chroot('d'); return 'ESCAPED'"),
                ("kill", "return 'ESCAPED' if mods['ctypes'].CDLL(None).kill(-1, 0) == 0 else 0"),
                ("parent", "return 'ESCAPED' if mods['os'].kill(%d, 0) is None else 0" % PARENT),
                ("env", "return repr(dict(mods['os'].environ))"),
            ]:
                lines = (mods + body).split("\\n")
                code = "def solve():\\n" + "\\n".join("    " + l for l in lines)
                r = run_solve(code, limits=lim)
                out[name] = [r.ok, r.value, r.error, r.limit]
        except SandboxUnavailableError as e:
            out["unavailable"] = e.limit
        print(json.dumps(out))
    """.splitlines()).replace("PARENT", "__import__('os').getpid()"))
    for path, mode in ((folder, 0o755), (script, 0o644), (folder / "sandbox_copy.py", 0o644)):
        os.chmod(path, mode)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "SECRET_TOKEN": "hunter2-do-not-leak"}
    try:
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "--inh-caps=-all", SYSTEM_PYTHON, "-S", str(script)],
                              capture_output=True, text=True, env=env, timeout=60, cwd="/")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    if "unavailable" in out:
        pytest.skip(f"no user namespaces for nobody here: {out['unavailable']}")
    assert out["value"][:2] == [True, 42]
    for name in ("fork", "chroot", "kill", "parent"):
        assert out[name][1] != "ESCAPED", (name, out[name])
    assert "hunter2" not in str(out["env"])


def test_forged_control_messages_are_ignored():
    """The code can write the protocol's lines on its output, but control messages (the pid the
    parent kills on a timeout, setup failures) come only on a pipe the code never holds."""
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        tag = sandbox._TAG
        forged = f'{tag}{{"kind": "child", "pid": {bystander.pid}}}'
        r = run_solve(_code(GET_MODULES + f"""
os = mods["os"]
os.write(1, {forged!r}.encode() + b"\\n")
while True:
    pass
"""), limits=SandboxLimits(wall_seconds=1.5, cpu_seconds=5, python_guard=False))
        assert not r.ok and r.limit == "wall-clock"
        assert bystander.poll() is None  # not killed in the code's place
        fake_setup = f'{tag}{{"kind": "setup", "layer": "x", "detail": "y"}}'
        r = run_solve(_code(GET_MODULES + f"""
mods["os"].write(1, {fake_setup!r}.encode() + b"\\n")
return 5
"""), limits=SandboxLimits(python_guard=False))
        assert r.ok and r.value == 5
    finally:
        bystander.kill()
        bystander.wait()


def test_the_guard_cannot_be_switched_off_from_inside():
    r = run_solve(_code(GET_MODULES + """
main = mods["__main__"]
for name in list(vars(main)):
    if name not in ("__builtins__", "__name__"):
        try:
            setattr(main, name, None)
        except Exception:
            pass
mods["os"].system("true")
return "ESCAPED"
"""))
    assert not r.ok and r.limit in ("guard", None) and "os.system" in r.error, r
    gc_walk = "return len(mods['builtins'].__import__('gc').get_objects())"
    r = run_solve(_code(GET_MODULES + gc_walk))
    assert not r.ok and "refused" in r.error, r
    r = run_solve(_code(GET_MODULES + "return mods['sys']._getframe(1).f_globals['job']"))
    assert not r.ok and "sys._getframe" in r.error, r
