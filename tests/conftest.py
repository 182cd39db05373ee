"""Suite-wide setup: the test servers are throwaway, so commands run open by default.

Every ``mhafail`` command (in-process or a child process) refuses to run
without ZooKeeper credentials unless told ``--zk-open``; the suite says so
once here through the environment. Tests of credentials and ACLs unset it
(``monkeypatch.delenv("MHAFAIL_ZK_OPEN")``) or pass ``--zk-auth``.
"""

from __future__ import annotations

import os

os.environ.setdefault("MHAFAIL_ZK_OPEN", "1")
