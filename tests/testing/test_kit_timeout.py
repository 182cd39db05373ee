"""The plugin gives kit tests a default timeout when the project configured none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

USER_TEST = """
def test_kit_test_gets_a_timeout(request, zk_cluster):
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None and marker.args[0] == 300.0

def test_other_tests_are_left_alone(request):
    assert request.node.get_closest_marker("timeout") is None
"""


def run_user_project(tmp_path: Path, ini: str) -> subprocess.CompletedProcess[str]:
    """Run pytest in a fresh project (its own config) that uses the plugin's fixtures."""
    (tmp_path / "pytest.ini").write_text(f"[pytest]\n{ini}")
    (tmp_path / "test_user.py").write_text(USER_TEST)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    return subprocess.run(
        argv, capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False
    )


def test_a_project_without_a_timeout_gets_the_kits_default(tmp_path: Path) -> None:
    """A user project with no timeout setting: kit tests get 300 s, other tests nothing."""
    result = run_user_project(tmp_path, "")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_configured_timeout_wins(tmp_path: Path) -> None:
    """With ``timeout =`` in the project's config the plugin adds no marker."""
    result = run_user_project(tmp_path, "timeout = 42\n")
    assert result.returncode == 1
    assert "1 failed, 1 passed" in result.stdout
