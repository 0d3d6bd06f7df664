"""Run by .ci/run inside a fresh virtual environment holding only torch and the built wheel:
import ponder, then run one op on every backend available there against the reference."""

import pathlib

import torch

import ponder
from ponder.ops import langevin

here = pathlib.Path(ponder.__file__).parent
assert "site-packages" in str(here), f"ponder imported from {here}, not from the installed wheel"
print(ponder.info())

x = torch.randn(7, 97)
g = torch.randn(7, 97)
noise = torch.randn(7, 97)
expected = langevin.ula_step_reference(x, g, 0.1, noise=noise)
ran = []
for name, status in ponder.available_backends().items():
    if not status.available or "cpu" not in status.devices:
        continue
    got = langevin.ula_step(x, g, 0.1, noise=noise, backend=name)
    torch.testing.assert_close(got, expected)
    ran.append(name)
assert {"cpu", "torch"} <= set(ran), ran
print("wheel check passed: ula_step matches the reference on", ", ".join(ran))
