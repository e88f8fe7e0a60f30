"""Memory figures from Linux's /proc, in MiB: what the scaling benchmark records and budgets by.

One reader for the ``Key:   N kB`` lines of /proc/self/status and /proc/meminfo, so the
worker's RSS figures and the parent's free-memory check parse them the same way.
"""

from __future__ import annotations

from pathlib import Path


def proc_kib_field(path: str, key: str) -> float | None:
    """``key``'s value in MiB from a /proc file of ``Key: N kB`` lines; None where the file or
    the key is missing (not Linux)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
