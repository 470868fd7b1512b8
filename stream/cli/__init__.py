"""The command line ``sxdm-stream``: parse, build the configuration, call the library.

The top layer: it may import every sub-package, and starts the simulator for ``demo`` and
``simulate``. Nothing the command line does is unavailable from Python.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
