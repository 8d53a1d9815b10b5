"""Give freed heap memory back to the operating system after a burst of windows.

Every window the worker scores is a small heap block (window x features x 4 bytes) allocated
on the ingest thread and freed on the worker's. After a burst (a reconnect flood, thousands of
devices starting at once) glibc keeps the freed blocks inside the process: RSS stays at the
burst's peak, which on an edge box is memory nothing else can use. `malloc_trim(0)` hands the
free pages back (bench/throughput.py's memory role shows how much). Elsewhere than glibc it is
a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Return free heap pages to the OS; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
