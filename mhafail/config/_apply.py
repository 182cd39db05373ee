"""Checkouts: immutable version directories and the atomic ``current`` switch.

Layout under a repository's directory::

    versions/<sha>/     one complete checkout per applied version
    current -> versions/<sha>

A new version is checked out into a temporary directory, validated there,
renamed to ``versions/<sha>``, and published by pointing a fresh symlink at
it and renaming that symlink onto ``current`` (``rename(2)`` is atomic).
Readers that resolve ``current`` once (``os.path.realpath`` or a
:class:`~mhafail.config.ConfigView`) see one version and only one; a
version directory is never modified after the switch.

Concurrency: one agent per repository directory (the agent's loop thread)
calls the mutating methods; readers may run anywhere.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

import attrs

from mhafail._fs import fsync_dir
from mhafail.config._repo import GitStore
from mhafail.errors import RepositoryError

VERSIONS = "versions"
CURRENT = "current"


@attrs.define(kw_only=True, eq=False)
class Checkouts:
    """The version directories and ``current`` link of one repository on one node.

    Args:
        root: the repository's directory (``<base>/<repo>``).
        keep: how many versions besides the live one to keep for readers
            and quick switching back; older ones are deleted.
    """

    root: Path
    keep: int = 3

    @property
    def current_link(self) -> Path:
        """The ``current`` symlink applications read through."""
        return self.root / CURRENT

    @property
    def versions(self) -> Path:
        """The directory holding one directory per version."""
        return self.root / VERSIONS

    def current(self) -> str | None:
        """The sha ``current`` points at, or None before the first switch."""
        try:
            target = os.readlink(self.current_link)
        except (FileNotFoundError, OSError):
            return None
        return Path(target).name

    def path(self, sha: str) -> Path:
        """The directory of version ``sha``."""
        return self.versions / sha

    def prepare(
        self,
        store: GitStore,
        sha: str,
        base: str | None = None,
        entries: list[tuple[str, str | None, str]] | None = None,
    ) -> Path:
        """Check out ``sha`` into a fresh temporary directory and return it.

        Only for commits whose whole tree was checked
        (:meth:`ConfigRepository.ensure_commit`); the writes are confined
        to the new directory all the same (no ``..``, no link followed).

        With ``base`` (an installed version), unchanged files are hard links
        to ``versions/<base>`` and only the files that differ are written:
        much faster for large trees, and safe because version directories
        are never modified after installation. Both ways write the blobs
        as stored, with the tree's modes, through one function
        (:meth:`GitStore.write_entries`): one sha, one set of bytes, on
        every node, whatever ``.gitattributes`` says. ``entries``: the
        caller's ``store.entries(base, sha)``, if it has them already.

        Raises:
            RepositoryError: git could not check it out (the directory is removed).
        """
        self.versions.mkdir(parents=True, exist_ok=True)
        tmp = self.versions / f".tmp-{sha[:12]}-{secrets.token_hex(4)}"
        try:
            seed = self.path(base) if base is not None else None
            if seed is not None and seed.is_dir():
                changes = entries if entries is not None else store.entries(base, sha)
                shutil.copytree(seed, tmp, copy_function=os.link, symlinks=True)
                store.write_entries(tmp, changes)
            else:
                store.checkout(sha, tmp)
        except BaseException:
            self.discard(tmp)
            raise
        return tmp

    def install(self, tmp: Path, sha: str) -> Path:
        """Move a validated checkout to ``versions/<sha>`` (reusing one already there)."""
        final = self.path(sha)
        if final.is_dir():
            self.discard(tmp)  # applied before (a switch back): the old copy is identical
            os.utime(final)  # counts as recent for prune()
        else:
            os.rename(tmp, final)
        return final

    def switch(self, sha: str) -> None:
        """Point ``current`` at ``versions/<sha>`` atomically.

        Raises:
            RepositoryError: the version is not installed.
        """
        if not self.path(sha).is_dir():
            raise RepositoryError(f"version {sha[:12]} is not checked out")
        link = self.root / f".{CURRENT}-{secrets.token_hex(4)}"
        os.symlink(f"{VERSIONS}/{sha}", link)
        try:
            os.replace(link, self.current_link)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            raise
        fsync_dir(self.root)

    def discard(self, tmp: Path) -> None:
        """Remove a temporary checkout."""
        shutil.rmtree(tmp, ignore_errors=True)

    def prune(self) -> list[str]:
        """Delete all but the live version and the ``keep`` most recent others.

        Returns:
            The shas whose directories were deleted.
        """
        if not self.versions.is_dir():
            return []
        live = self.current()
        entries = []
        for entry in self.versions.iterdir():
            if entry.name.startswith(".tmp-"):
                # Left by a crash mid-checkout: never live, never referenced.
                self.discard(entry)
                continue
            if entry.name != live:
                entries.append((entry.stat().st_mtime, entry.name))
        entries.sort(reverse=True)
        removed = [name for _, name in entries[self.keep :]]
        for name in removed:
            self.discard(self.path(name))
        return removed
