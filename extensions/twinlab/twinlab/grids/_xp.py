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
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy

            return cupy
    return np


def asarray(x: Any, xp: ModuleType, dtype: Any = None) -> Any:
    return xp.asarray(x, dtype=dtype)
