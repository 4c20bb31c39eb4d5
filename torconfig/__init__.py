"""Tor configuration for onionpost: private test networks, tor processes, control.

The only package of the project that imports stem.
"""

from onionpost.torconfig.errors import ControlError, TorError

__all__ = ["ControlError", "TorError"]
