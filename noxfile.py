"""Developer and CI sessions: tests, lint, mypy, docs, demo, bench, soak.

Every session installs the package itself (not editable), so tests run
against what users get. ``nox -s tests`` is what CI runs.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "mypy", "tests"]
nox.options.reuse_existing_virtualenvs = True
PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the whole test suite against the installed package."""
    session.install(".[test]")
    # Run from tests/ so the source tree is not importable: the installed
    # package is what gets tested.
    session.chdir("tests")
    args = session.posargs or ["-p", "no:cacheprovider", "--durations=15", "."]
    session.run(
        "pytest",
        "-c",
        "../pyproject.toml",
        "--rootdir",
        "..",
        *args,
        env={"MHAFAIL_EXPECT_INSTALLED": "1"},
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and format check over the whole tree."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def mypy(session: nox.Session) -> None:
    """mypy --strict for the mhafail package."""
    session.install(".[test]", "mypy>=1.10")
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site (strict: broken links fail)."""
    session.install(".", "mkdocs>=1.5")
    session.run("mkdocs", "build", "--strict", "--site-dir", "build/site")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run the demo: a local ZooKeeper and a few nodes, with failures."""
    session.install(".[smtp]")
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run every benchmark in benchmarks/ and print the figures."""
    session.install(".[test,bench]")
    quick = ["--quick"] if os.environ.get("BENCH_QUICK") else []
    for script in sorted(os.listdir("benchmarks")):
        if script.startswith("bench_") and script.endswith(".py"):
            session.run("python", f"benchmarks/{script}", *quick, *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Run the nemesis for a while (root, ZooKeeper): ``nox -s soak -- --minutes 10 --seed 1``.

    Other options: ``--faults all`` (default: the kinds the CI round uses), ``--beat SECONDS``,
    ``--json PATH``, ``--keep DIR`` (agent and ZooKeeper logs). Exits 1 on a finding.
    """
    session.install(".[test]")
    session.run("python", "-m", "mhafail.testing.nemesis", *session.posargs)
