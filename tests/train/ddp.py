"""Run a script under two CPU processes (gloo) for the trainers' distributed tests.

Every trainer gets the same check: the script trains on a fixed global batch and writes what it
saw (losses, a parameter digest) as JSON; the test runs it once with one process and once with two
through ``torch.distributed.run`` and compares. This module only launches and collects.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: Path, nproc: int, out: Path, *args: str, timeout: float = 600) -> dict:
    """Run ``script`` (a Python file) with ``nproc`` CPU processes and return the JSON it wrote to
    ``out`` (the script gets ``--out OUT`` and ``args``; rank 0 writes). One thread per process so
    that two processes fit two cores. Raises AssertionError with the output when it fails."""
    import ponder

    # The children import the same ponder as this process (an installed wheel in CI, the source
    # tree with its built extension here), and the repository root for ``tests.*`` helpers.
    ponder_home = str(Path(ponder.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [ponder_home, str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--nnodes=1", f"--master_port={_free_port()}", "--master_addr=127.0.0.1",
           str(script), "--out", str(out), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT))
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return json.loads(out.read_text())


# ----------------------------------------------------------------- inside the launched scripts


def script_args(*required: str):
    """The launched script's command line: ``--out`` and the ``required`` options (names without
    dashes), all required strings."""
    import argparse

    parser = argparse.ArgumentParser()
    for name in ("out", *required):
        parser.add_argument(f"--{name}", required=True)
    return parser.parse_args()


def world_size() -> int:
    """The number of processes this script runs in (1 outside torch.distributed.run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def write_result(out: str | Path, result: dict) -> None:
    """Rank 0 writes ``result`` as JSON to ``out``; the other ranks write nothing."""
    if int(os.environ.get("RANK", "0")) == 0:
        Path(out).write_text(json.dumps(result))


def digest(model) -> dict:
    """Every 97th parameter value (in ``parameters()`` order) and the norm of all of them."""
    import torch

    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"digest": params[::97].tolist(), "norm": float(params.norm())}
