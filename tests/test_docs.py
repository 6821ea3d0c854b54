"""Every Python example in the README and docs/ runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    "docs/privacy.md",
    "docs/ledger.md",
    "docs/analytics.md",
    "docs/federated.md",
    "docs/secagg.md",
    "docs/he.md",
    "docs/audit.md",
]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _python_blocks((ROOT / page).read_text(encoding="utf-8"))
    assert blocks, f"{page} has no Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs:{page}"}
    for i, block in enumerate(blocks):
        code = compile(block, f"{page} (example {i + 1})", "exec")
        exec(code, namespace)  # noqa: S102 - running our own documentation
