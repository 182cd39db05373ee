"""ConfigView: one applied version of a repository, as a node sees it.

A file is resolved for a node in the order: the node's own folder
(``<node>/``), then ``global/``, then ``default/``; the first that has the
file wins. ``default/`` holds shipped defaults, ``global/`` the cluster's
settings, ``<node>/`` per-node overrides (Momentum's layout).
"""

from __future__ import annotations

from pathlib import Path

import attrs

from mhafail.config._paths import candidates, check_path, layers


@attrs.frozen
class ConfigView:
    """The files of one applied version, resolved for one node.

    Attributes:
        root: the version's directory (``versions/<sha>``), never the
            ``current`` symlink, so a view keeps showing one version even
            while newer ones are applied.
        sha: the commit the directory holds.
        node: the node the files are resolved for.

    A view stays readable until ``keep`` newer versions were applied and
    its directory is pruned; read what you need when the reload hook runs.
    """

    root: Path
    sha: str
    node: str

    def resolve(self, path: str) -> Path | None:
        """The file that ``path`` means for this node, or None when no layer has it.

        Raises:
            InvalidChange: ``path`` is not an acceptable relative path.
        """
        for candidate in candidates(self.node, path):
            file = self.root / candidate
            if file.is_file():
                return file
        return None

    def read(self, path: str) -> bytes | None:
        """The bytes of the resolved ``path``, or None when no layer has it."""
        file = self.resolve(path)
        return None if file is None else file.read_bytes()

    def files(self) -> dict[str, Path]:
        """Every logical path this node sees, mapped to the file that wins."""
        result: dict[str, Path] = {}
        for layer in reversed(layers(self.node)):
            base = self.root / layer
            if not base.is_dir():
                continue
            for file in base.rglob("*"):
                if file.is_file():
                    result[str(file.relative_to(base))] = file
        return dict(sorted(result.items()))

    def raw(self, path: str) -> Path | None:
        """The file at repository path ``path`` (no resolution), or None."""
        check_path(path)
        file = self.root / path
        return file if file.is_file() else None
