"""JlogHandler, the mhafail jlog command, and the package's public face."""

from __future__ import annotations

import io
import json
import logging
import struct
import sys
from pathlib import Path

import pytest

import mhafail.jlog
from mhafail.cli import main
from mhafail.jlog import Jlog, JlogHandler


def test_all_lists_exactly_the_public_names() -> None:
    """mhafail.jlog.__all__ equals the names the package exposes without a leading underscore."""
    # pytest rewrites the installed package (its plugin lives in it): skip "@py_..." names.
    public = {n for n in vars(mhafail.jlog) if n.isidentifier() and not n.startswith("_")}
    assert sorted(mhafail.jlog.__all__) == sorted(public)


def test_handler_writes_text_and_json_lines(tmp_path: Path) -> None:
    """JlogHandler stores each log record as one message, as text or as a JSON object."""
    jlog = Jlog.create(tmp_path / "j")
    jlog.add_subscriber("s")
    logger = logging.getLogger("mhafail.test.jlog")
    logger.propagate = False
    text = JlogHandler(jlog.path)
    text.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    as_json = JlogHandler(jlog.path, format="json")
    logger.addHandler(text)
    logger.addHandler(as_json)
    try:
        logger.warning("disk %s", "full")
    finally:
        logger.removeHandler(text)
        logger.removeHandler(as_json)
        text.close()
        as_json.close()
    with jlog.reader("s") as reader:
        first, second = (m.payload for m in reader)
    assert first == b"WARNING disk full"
    doc = json.loads(second)
    assert (doc["level"], doc["logger"], doc["message"]) == (
        "WARNING",
        "mhafail.test.jlog",
        "disk full",
    )


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(["jlog", *args])
    return status, capsys.readouterr().out


def test_cli_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """create, subscriber add, write, read (with and without commit) and list work end to end."""
    path = str(tmp_path / "j")
    assert _cli(capsys, "create", path, "--unit-limit", "64")[0] == 0
    assert _cli(capsys, "subscriber", "add", path, "s")[0] == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"alpha\nbeta\ngamma\n")))
    assert _cli(capsys, "write", path)[0] == 0
    status, out = _cli(capsys, "read", path, "--subscriber", "s", "--no-commit", "--json")
    assert [m["payload"] for m in json.loads(out)] == ["alpha", "beta", "gamma"]
    status, out = _cli(capsys, "subscriber", "list", path, "--json")
    assert json.loads(out) == [{"name": "s", "checkpoint": "00000000:00000000", "pending": 3}]
    status, out = _cli(capsys, "read", path, "-s", "s", "--max", "2", "--json")
    assert [m["id"] for m in json.loads(out)] == ["00000000:00000001", "00000000:00000002"]
    status, out = _cli(capsys, "subscriber", "list", path, "--json")
    assert json.loads(out)[0]["pending"] == 1
    status, out = _cli(capsys, "subscriber", "set", path, "s", "00000000:00000000", "--json")
    assert json.loads(out)["checkpoint"] == "00000000:00000000"
    status, out = _cli(capsys, "data", path, "--json")
    assert sum(r["records"] for r in json.loads(out)) == 3
    status, out = _cli(capsys, "meta", path, "--json")
    assert json.loads(out)["unit_limit"] == 64
    status, out = _cli(capsys, "inspect", path, "--json")
    assert (status, json.loads(out)["ok"]) == (0, True)
    status, out = _cli(capsys, "tail", path, "--begin", "--json")
    assert len(json.loads(out)) == 3
    status, out = _cli(capsys, "subscriber", "remove", path, "s", "--json")
    assert json.loads(out)["name"] == "s"


def test_cli_length_prefixed_write_keeps_newlines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--length-prefixed payloads may contain newlines and arbitrary bytes."""
    path = str(tmp_path / "j")
    _cli(capsys, "create", path)
    _cli(capsys, "subscriber", "add", path, "s")
    items = [b"two\nlines", b"\x00\xff", b""]
    raw = b"".join(struct.pack("<I", len(i)) + i for i in items)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert _cli(capsys, "write", path, "--length-prefixed")[0] == 0
    with Jlog.open(path).reader("s") as reader:
        assert [m.payload for m in reader] == items
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\x05\x00\x00\x00ab")))
    assert _cli(capsys, "write", path, "--length-prefixed")[0] == 2


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad input exits with status 2 and a one-line message naming the problem."""
    (tmp_path / "j").mkdir()
    assert main(["jlog", "create", str(tmp_path / "j")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["jlog", "meta", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_cli_repair_and_inspect_report_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """inspect exits 1 on damage; repair fixes it and reports the cut."""
    path = tmp_path / "j"
    jlog = Jlog.create(path, unit_limit=20)
    with jlog.writer() as writer:
        writer.write_many([b"a" * 10, b"b" * 10, b"c" * 10])
    seg = path / "00000000"
    seg.write_bytes(seg.read_bytes()[:20])
    status, out = _cli(capsys, "inspect", str(path))
    assert status == 1 and "truncated_segment" in out
    status, out = _cli(capsys, "repair", str(path), "--json")
    report = json.loads(out)
    assert status == 0 and report["cuts"] == [{"log": "00000000", "offset": 0, "length": 20}]


def test_cli_read_prints_lines_and_commits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """read prints one payload per line, checkpoints them, and a second read prints nothing."""
    path = tmp_path / "j"
    jlog = Jlog.create(path)
    jlog.add_subscriber("s")
    with jlog.writer() as writer:
        writer.write_many([b"first", b"second"])
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    assert main(["jlog", "read", str(path), "-s", "s"]) == 0
    sys.stdout.flush()
    assert out.getvalue() == b"first\nsecond\n"
    assert jlog.checkpoint("s").marker == 2
    assert main(["jlog", "read", str(path), "-s", "s"]) == 0
    sys.stdout.flush()
    assert out.getvalue() == b"first\nsecond\n"


def test_os_errors_reach_callers_as_jlog_errors(tmp_path: Path) -> None:
    """A file system error while opening a writer is raised as JlogError, not OSError."""
    from mhafail.errors import JlogError

    jlog = Jlog.create(tmp_path / "j")
    (jlog.path / "00000000").mkdir()
    with pytest.raises(JlogError) as info:
        jlog.writer()
    assert not isinstance(info.value, OSError)
    assert isinstance(info.value.__cause__, OSError)


def test_docs_snippet_runs(tmp_path: Path) -> None:
    """The Python example in docs/jlog.md runs as written."""
    import re
    import subprocess

    doc = Path(__file__).parents[2] / "docs" / "jlog.md"
    code = re.search(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert code is not None
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "shipper 00000000:00000004 0 pending" in result.stdout
