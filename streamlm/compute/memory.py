"""Arrays on cache lines.

numpy aligns its buffers to 16 bytes. A kernel's 64-byte vector load of a row
that starts off a cache line touches two lines: for the recurrence's panels of
Wh, read once per step, that made the single-stream recurrence 1.5x slower in
the processes where numpy happened to put them off a line (H=100: 0.59 against
0.38 us per step; streamlm.nn.cells.panels). Nothing here imports numba.
"""

from __future__ import annotations

import numpy as np

CACHE_LINE = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """np.empty(shape, dtype) whose first element starts a cache line."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(d) for d in shape)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + CACHE_LINE, dtype=np.uint8)
    skip = -raw.ctypes.data % CACHE_LINE
    return raw[skip:skip + n].view(dtype).reshape(shape)
