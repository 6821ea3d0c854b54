"""Build hook: compiles the staircase sampler's candidate pass (src/veil/privacy/_staircase.c).

The result is a plain shared library, ``src/veil/privacy/_staircase_kernel.so``, loaded with
ctypes (``veil.privacy._kernel``), so no Python headers are needed, only a C compiler: ``$CC``,
else Python's configured compiler, else ``cc``. Without one the build goes on, with a warning,
and veil draws the same noise with numpy, at about half the speed.

The flags keep the arithmetic identical to numpy's: ``-ffp-contract=off`` forbids fused
multiply-adds and no fast-math flag is given. ``-fno-trapping-math`` lets the compiler vectorise
selects between floats; it changes no result, only whether a discarded lane may raise a
floating-point exception flag (veil never reads those flags). No -march flag either: the library
runs on any CPU of its architecture.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src/veil/privacy/_staircase.c")
TARGET = Path("src/veil/privacy/_staircase_kernel.so")
FLAGS = [
    "-O3",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fno-trapping-math",
    "-std=c99",
]


def _compiler() -> list[str] | None:
    """The compiler command with its wrapper and options kept (``CC="ccache gcc"``)."""
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if candidate:
            words = shlex.split(candidate)
            if words and shutil.which(words[0]):
                return words
    return None


class StaircaseKernelHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        source, target = root / SOURCE, root / TARGET
        compiler = _compiler()
        if compiler is None:
            target.unlink(missing_ok=True)  # a stale build of an older source must not load
            self.app.display_warning("veil: no C compiler found; the samplers will use numpy")
            return
        built = target.with_name(f".{target.name}.{os.getpid()}")  # replaced whole, never half
        command = [*compiler, *FLAGS, "-o", str(built), str(source), "-lm"]
        # The command is fixed flags, this repository's source and a compiler found on PATH.
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            built.unlink(missing_ok=True)
            target.unlink(missing_ok=True)  # a stale build of an older source must not load
            self.app.display_warning(
                "veil: compiling the sampler kernel failed; the samplers will use numpy\n"
                + result.stderr
            )
            return
        os.replace(built, target)
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        build_data["artifacts"].append(str(TARGET))
