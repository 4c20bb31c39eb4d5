"""Exceptions raised by torconfig (callers never need to catch stem's)."""


class TorError(Exception):
    """A tor process or the private network could not do what was asked."""


class ControlError(TorError):
    """A control-port command failed."""
