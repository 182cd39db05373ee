"""mhafail: high availability for Python mail transfer agents.

The names users need most are re-exported here; every component lives in
its own subpackage (``mhafail.coordination``, ``mhafail.jlog``, ...).
"""

from importlib.metadata import PackageNotFoundError, version

from mhafail.errors import MhafailError as MhafailError

try:
    __version__ = version("mhafail")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["MhafailError", "__version__"]
