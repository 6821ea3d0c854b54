"""What the benchmarks share: a one-line description of the machine, and the tail of a pip log.

Standard library only: the peer adapters import it too, from their own environments.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


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


def ratio_text(value: float | None, floor: float | None) -> str:
    """``value / floor`` with the digits that matter, or ``-`` when either is missing."""
    if value is None or not floor:
        return "-"
    r = value / floor
    return f"{r:,.0f}" if r >= 100 else f"{r:,.1f}" if r >= 10 else f"{r:.2f}"


class AdapterTimeoutError(Exception):
    """The adapter said nothing within its timeout; its process group was killed."""


class Adapter:
    """A peer's adapter in its own process (and process group), whose stdout and stderr lines
    are read as they come. :meth:`lines` yields ``("out" | "err", line)`` until both streams
    close, and raises :class:`AdapterTimeoutError` (after killing the process group) when no line
    arrives within ``timeout`` seconds of the start or of the last :meth:`progress`."""

    def __init__(
        self, command: list[str], *, timeout: float, env: dict[str, str] | None = None
    ) -> None:
        import queue
        import subprocess
        import threading
        import time

        self._time = time
        self.timeout = timeout
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # its own process group, killed as one on timeout
        )
        self._queue: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._empty = queue.Empty
        for tag, stream in (("out", self.process.stdout), ("err", self.process.stderr)):
            threading.Thread(target=self._pump, args=(tag, stream), daemon=True).start()
        self._deadline = time.monotonic() + timeout

    def _pump(self, tag: str, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._queue.put((tag, line))
        self._queue.put((tag, None))

    def progress(self) -> None:
        """The adapter moved on: give it another ``timeout`` seconds."""
        self._deadline = self._time.monotonic() + self.timeout

    def lines(self):  # type: ignore[no-untyped-def]
        import signal

        open_streams = 2
        while open_streams:
            wait = max(0.0, self._deadline - self._time.monotonic())
            try:
                tag, line = self._queue.get(timeout=wait)
            except self._empty:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AdapterTimeoutError from None
            if line is None:
                open_streams -= 1
            else:
                yield tag, line

    def wait(self) -> int:
        return self.process.wait()


def write_raw(folder: Path, stem: str, payload: object) -> Path:
    """Write ``payload`` as JSON to ``<folder>/<stem>_<timestamp>.json``; the path."""
    import json
    import time

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    out = path / f"{stem}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(payload))
    return out
