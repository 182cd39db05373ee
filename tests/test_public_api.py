"""Each package's __all__ lists exactly its public names (a public face per subpackage)."""

import importlib

import pytest

import mhafail

PACKAGES = [
    "mhafail",
    "mhafail.coordination",
    "mhafail.node",
    "mhafail.testing",
    "mhafail.spool",
    "mhafail.testing.nemesis",
    "mhafail.vip",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_equals_the_public_names(name: str) -> None:
    """__all__ matches the names not starting with an underscore (modules aside)."""
    module = importlib.import_module(name)
    public = {
        n for n, v in vars(module).items() if not n.startswith("_") and type(v).__name__ != "module"
    }
    assert set(module.__all__) == public | ({"__version__"} & set(module.__all__))


def test_version_comes_from_package_metadata() -> None:
    """__version__ is the installed distribution's version."""
    from importlib.metadata import version

    assert mhafail.__version__ == version("mhafail")


def test_tests_run_against_the_installed_package() -> None:
    """Under nox the package comes from site-packages, not from the source tree."""
    import os

    if os.environ.get("MHAFAIL_EXPECT_INSTALLED") != "1":
        pytest.skip("only meaningful in the nox tests session")
    assert "site-packages" in mhafail.__file__
