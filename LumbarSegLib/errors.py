"""Exceptions that the CLI and the Slicer module turn into clear user-facing messages."""


class LumbarSegError(Exception):
    """Base class: a problem the user can act on (message is shown as is, without a traceback)."""


class InputError(LumbarSegError, ValueError):
    """The input image or file is unusable; the message says what was wrong and what is accepted."""


class ModelError(LumbarSegError):
    """Model weights are missing, corrupt or do not match the network configuration."""


class Cancelled(LumbarSegError):
    """The user cancelled a long-running operation."""
