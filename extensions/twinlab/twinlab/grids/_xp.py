"""Array-namespace helper: grid maths runs unchanged on NumPy and CuPy arrays.

We avoid a hard dependency on ``array-api-compat``: the only namespaces we meet
in practice are NumPy and CuPy, and both expose the NumPy API we use.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def namespace(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy  # optional dependency (the gpu extra)

            xp: ModuleType = cupy
            return xp
    return np


def asarray(x: Any, xp: ModuleType, dtype: Any = None) -> Any:
    return xp.asarray(x, dtype=dtype)
