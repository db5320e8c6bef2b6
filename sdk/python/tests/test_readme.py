"""The README's ten-line example runs (against the stand-in sidecar)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(sidecar_factory: Any, capsys: Any) -> None:
    from conftest import SECRET

    sc = sidecar_factory(deliveries=1)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    code = blocks[0].replace("http://127.0.0.1:10000", sc.url).replace("whsec_...", SECRET)
    assert len(blocks[0].strip().splitlines()) <= 12
    exec(compile(code, str(README), "exec"), {})
    sc.join()
    out = capsys.readouterr().out
    assert "accepted" in out and "completed 201" in out
