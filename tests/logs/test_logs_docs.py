"""The docs page's wiring snippet runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "logs.md"


@pytest.mark.zookeeper
def test_docs_snippet_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The application wiring example in docs/logs.md pulls its record into the manager's tree."""
    if not DOC.exists():
        pytest.skip("docs are not shipped with the installed package")
    (snippet,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    exec(compile(snippet, str(DOC), "exec"), {"__name__": "docs_logs"})  # noqa: S102 - our own docs
    out = capsys.readouterr().out
    assert "records=1" in out
    assert "mainlog/mta/n1" in out
