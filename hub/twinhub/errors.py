"""The errors that reach the operator as one line (the CLI prints them without a traceback)."""

from __future__ import annotations


class PlatformError(RuntimeError):
    """A problem the user must fix; the message says what and how."""


class StartError(RuntimeError):
    """A component failed to start; the message says which and why."""
