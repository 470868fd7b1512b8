"""The version of sxdm-stream, in one place (the results files and --version state it)."""

__version__ = "0.1.0"
