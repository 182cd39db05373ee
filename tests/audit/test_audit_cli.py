"""The ``mhafail cidr`` command: one-shot, shell and server."""

import http.client
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from mhafail.audit import IntervalCounts, KeyFamily, SnapshotStore
from mhafail.cli import main

T0 = 1_717_200_000.0
V4 = 3323068416  # 198.18.0.0


@pytest.fixture
def snapshots(tmp_path: Path) -> Path:
    store = SnapshotStore(root=tmp_path)
    store.write_interval(
        IntervalCounts("conn", KeyFamily.IPV4, T0, T0 + 60, {V4 + 1: 3, V4 + 300: 2})
    )
    return tmp_path


def test_one_shot_query_prints_text_and_json(
    snapshots: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A query on the command line prints its answer (text, or JSON with --json) and exits 0."""
    argv = ["cidr", "--dir", str(snapshots), "show", "count", "for", "198.18.0.0/16", "in", "conn"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == ["cidr           conn", "198.18.0.0/16     5"]
    assert main([*argv[:3], "--json", *argv[3:], "cidrsize", "24"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["cidr"], r["count"]) for r in rows] == [("198.18.0.0/24", 3), ("198.18.1.0/24", 2)]


def test_one_shot_errors_exit_2_and_point_at_the_problem(
    snapshots: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed query exits 2 with a caret under the bad token; unknown series and dirs too."""
    assert (
        main(["cidr", "--dir", str(snapshots), "show count for 198.18.0.0/15 in conn limit x"]) == 2
    )
    err = capsys.readouterr().err
    assert "position 43: expected a row limit" in err
    assert err.splitlines()[1] == "  " + " " * 43 + "^"
    assert main(["cidr", "--dir", str(snapshots), "show count for 198.18.0.0/15 in nope"]) == 2
    assert "no snapshots for series 'nope'" in capsys.readouterr().err
    assert main(["cidr", "--dir", str(snapshots / "missing"), "show available"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shell_reads_queries_line_by_line(
    snapshots: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a query the command reads one per line, reports errors and keeps going."""
    script = "\n".join(
        [
            "show available",
            "",
            "show count for 198.18.0.0/15 in conn",
            "show nonsense",
            "quit",
            "show available",
        ]
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert main(["cidr", "--dir", str(snapshots), "--json"]) == 2  # piped input with a failure
    out = capsys.readouterr()
    answers = [json.loads(line) for line in out.out.splitlines()]
    assert [a["kind"] for a in answers] == ["available", "count"]
    assert "expected 'available' or 'count'" in out.err


def test_serve_runs_the_http_server(snapshots: Path) -> None:
    """`mhafail cidr --serve` answers HTTP queries on 127.0.0.1 until terminated."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mhafail",
            "cidr",
            "--dir",
            str(snapshots),
            "--serve",
            "--port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("serving CIDR queries on http://127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(
                "GET", "/query?format=json&q=" + quote("show count for 198.18.0.0/15 in conn")
            )
            assert json.loads(conn.getresponse().read())["rows"][0]["count"] == 5
        finally:
            conn.close()
    finally:
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=10) in (0, 130)
        if proc.stderr is not None:
            proc.stderr.close()


def test_serve_takes_connection_limits_and_refuses_bad_ones(snapshots: Path) -> None:
    """`--idle-timeout` and `--max-connections` reach the server; non-positive values exit 2."""
    for flag, value in (("--idle-timeout", "0"), ("--max-connections", "0")):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mhafail",
                "cidr",
                "--dir",
                str(snapshots),
                "--serve",
                flag,
                value,
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2
        assert flag[2:].replace("-", "_") in proc.stderr
