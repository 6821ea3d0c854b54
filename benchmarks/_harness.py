"""What the benchmarks share: a one-line description of the machine, and the tail of a pip log.

Standard library only: the peer adapters import it too, from their own environments.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


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


# What a peer adapter subprocess prints: progress lines on stderr, one result line on stdout.
PROGRESS = "PROGRESS "
RESULT = "RESULT "
# No telemetry and no usage reports from Flower and Ray (there is no network here).
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def run_round_adapter(command: list[str], *, timeout: float) -> dict[str, Any]:
    """Run a peer's round-by-round adapter (``command``) in a fresh subprocess, each phase
    (start-up, every round) given ``timeout`` seconds; its JSON result, or ``{"problem": ...}``
    saying what went wrong (a timeout names the phase and the rounds that finished)."""
    adapter = Adapter(command, timeout=timeout, env={**os.environ, **QUIET_ENV})
    out: list[str] = []
    err: list[str] = []
    finished: list[float] = []
    phase = "starting"
    try:
        for tag, line in adapter.lines():
            if tag == "err" and line.startswith(PROGRESS):
                event = json.loads(line[len(PROGRESS) :])
                adapter.progress()
                if "round" in event:
                    finished.append(event["seconds"])
                    phase = f"running round {event['round'] + 1}"
                else:
                    phase = "starting Ray and running round 1"
            elif tag == "err":
                err.append(line)
            elif line.startswith(RESULT):
                out.append(line[len(RESULT) :])
    except AdapterTimeoutError:
        done = ", ".join(f"{s:.2f} s" for s in finished)
        return {
            "problem": f"timeout: nothing within {timeout:.0f} s while {phase}"
            + (f" (finished rounds: {done})" if done else "")
        }
    proc = adapter.process
    if proc.wait() != 0 or not out:
        tail = [e.strip() for e in err if e.strip()]
        return {"problem": "failed: " + (tail[-1] if tail else f"exit code {proc.returncode}")}
    return dict(json.loads(out[-1]))
