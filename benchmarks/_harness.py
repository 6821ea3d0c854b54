"""What the benchmarks share: a one-line description of the machine, and the tail of a pip log.

Standard library only: the peer adapters import it too, from their own environments.
"""

from __future__ import annotations

import os
import platform


def machine(*versions: str) -> str:
    """``<cpu>, <n> logical cores, <m> GiB; Python <v>, <versions...>``."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    described = ", ".join((f"Python {platform.python_version()}", *versions))
    return f"{cpu}, {os.cpu_count()} logical cores, {memory:.0f} GiB; {described}"


def pip_tail(text: str, lines: int = 3) -> str:
    """The last meaningful lines of pip's output (without its index-location warnings)."""
    kept = [
        line
        for line in text.splitlines()
        if line.strip()
        and not line.startswith("WARNING: Location")
        and "dependency resolver does not currently" not in line
    ]
    return " / ".join(kept[-lines:])
