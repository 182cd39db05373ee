"""The public face of mhafail.audit."""

import mhafail.audit


def test_all_equals_the_public_names() -> None:
    """mhafail.audit.__all__ lists exactly the names it exports, modules aside."""
    public = {
        name
        for name, value in vars(mhafail.audit).items()
        if not name.startswith("_") and type(value).__name__ != "module"
    }
    assert sorted(mhafail.audit.__all__) == sorted(public)


def test_private_modules_are_not_reexported() -> None:
    """Everything in __all__ comes from a private module, re-exported explicitly."""
    for name in mhafail.audit.__all__:
        owner = getattr(getattr(mhafail.audit, name), "__module__", "")
        assert owner.startswith("mhafail.audit._"), (name, owner)
