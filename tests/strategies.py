"""Hypothesis strategies for ponder's ops: shapes, dtypes, layouts and values (special ones
included), and scalar arguments from the ordinary to the absurd.

Tensors are drawn cheaply: hypothesis chooses a seed, a scale and a few positions that get a
special value (NaN, +-inf, 1e30, 1e-30, a subnormal of the dtype, -0.0); torch fills the rest
with normals. So an example costs a few draws, whatever the tensor's size, and still shrinks
towards fewer special values and plainer layouts.
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile

import torch
from hypothesis import configuration
from hypothesis import strategies as st

# Hypothesis caches what it reads from the source (and, with a database, examples) under
# .hypothesis/ in the current folder, even with database=None. Tests write nothing into the
# repository: point it at a temporary folder, before any @given runs, removed at exit.
_HOME = tempfile.mkdtemp(prefix="ponder-hypothesis-")
configuration.set_hypothesis_home_dir(_HOME)
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Odd sizes, 1, and empty; small enough for the Triton interpreter.
SIZES = (0, 1, 2, 3, 5, 7, 16)
LAYOUTS = ("contiguous", "transposed", "strided", "offset", "broadcast")


def special_values(dtype: torch.dtype) -> tuple[float, ...]:
    """The values that break kernels: NaN, +-inf, huge and tiny finite values, a subnormal of
    ``dtype`` (so it survives the cast) and signed zeros. 1e30 is inf and 1e-30 is 0 in float16:
    that is the point of drawing them in every dtype."""
    tiny = torch.finfo(dtype).smallest_normal if dtype.is_floating_point else 0.0
    return (math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-30, -1e-30, tiny / 4, -0.0, 0.0)


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` in another memory layout (equal to ``t`` elementwise).

    transposed: dense, last two dimensions swapped in memory; strided: every other element of
    the last dimension of a buffer twice as wide; offset: a window inside a larger buffer (a
    storage offset and outer strides that are not the shape's); broadcast: stride 0 on the first
    dimension (only where ``t`` is constant along it, else left as it is).
    """
    if layout == "contiguous" or t.dim() == 0:
        out = t.contiguous()
    elif layout == "transposed" and t.dim() >= 2:
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "strided" or layout == "transposed":
        buf = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        buf[..., ::2] = t
        out = buf[..., ::2]
    elif layout == "offset":
        buf = torch.zeros(*(n + 2 for n in t.shape), dtype=t.dtype)
        window = buf[tuple(slice(1, n + 1) for n in t.shape)]
        window.copy_(t)
        out = window
    elif layout == "broadcast":
        if t.shape[0] > 1 and bool((t == t[:1]).all()):
            out = t[:1].expand(t.shape)
        else:
            out = t
    else:  # pragma: no cover
        raise AssertionError(layout)
    assert out.shape == t.shape and torch.equal(out.isnan(), t.isnan())
    assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(t))
    return out


@st.composite
def float_tensors(
    draw,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    *,
    specials: bool = True,
    layouts: tuple[str, ...] = LAYOUTS,
    constant_rows: bool = False,
) -> torch.Tensor:
    """A ``dtype`` tensor of ``shape``: normals times a drawn scale, a few special values at drawn
    positions, in a drawn layout. ``constant_rows`` repeats the first row along dimension 0, so
    that the ``broadcast`` layout has something to broadcast."""
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from((1.0, 1.0, 1.0, 1e-3, 30.0, 1e-20, 1e20)))
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    if constant_rows and len(shape) and shape[0] > 1:
        base = base[:1].expand(shape).clone()
    flat = base.reshape(-1)
    if specials and flat.numel():
        values = special_values(dtype)
        for _ in range(draw(st.integers(0, 3))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(values))
    t = flat.reshape(shape).to(dtype)
    return relayout(t, draw(st.sampled_from(layouts)))


def uniforms_in_unit_interval(
    shape: tuple[int, ...], *, one: bool = True
) -> st.SearchStrategy[torch.Tensor]:
    """float64 uniforms in (0, 1], the smallest float64 and (if ``one``) 1.0 included."""

    @st.composite
    def build(draw):
        seed = draw(st.integers(0, 2**16))
        u = 1.0 - torch.rand(shape, generator=torch.Generator().manual_seed(seed),
                             dtype=torch.float64)
        flat = u.reshape(-1)
        if flat.numel():
            for _ in range(draw(st.integers(0, 2))):
                flat[draw(st.integers(0, flat.numel() - 1))] = draw(
                    st.sampled_from((1.0 if one else 0.75, 5e-324, 1e-300, 0.5)))
        return u

    return build()


# Scalar arguments (step sizes, temperatures, friction, thresholds): mostly ordinary, so that
# most examples reach the kernels, sometimes one of the values a validator must refuse or a
# kernel must survive.
ODD_SCALARS = (0.0, -0.0, -1.0, -1e-30, math.nan, math.inf, -math.inf, 1e30, 1e-30, 5e-324,
               1e300, 1e-300, 3.4e38, 1, True)


def scalars(low: float = 1e-3, high: float = 10.0) -> st.SearchStrategy[object]:
    """A real in [low, high] three times out of four, else one of ``ODD_SCALARS``."""
    ordinary = st.floats(low, high, allow_nan=False, allow_infinity=False)
    return st.one_of(ordinary, ordinary, ordinary, st.sampled_from(ODD_SCALARS))


def dtypes(allowed: tuple[torch.dtype, ...] = FLOAT_DTYPES) -> st.SearchStrategy[torch.dtype]:
    return st.sampled_from(allowed)


def sizes(*, empty: bool = True, extra: tuple[int, ...] = ()) -> st.SearchStrategy[int]:
    """A dimension: one of ``SIZES`` (0 about one time in twelve, when ``empty``) or ``extra``.
    Repeating the non-zero sizes keeps most examples non-empty: a tensor has several dimensions,
    and one zero among them empties it."""
    nonzero = tuple(s for s in SIZES if s) + extra
    return st.sampled_from(nonzero * 2 + ((0,) if empty else ()))
