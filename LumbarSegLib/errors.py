"""Exceptions that the CLI and the Slicer module turn into clear user-facing messages."""


class LumbarSegError(Exception):
    """Base class: a problem the user can act on (message is shown as is, without a traceback)."""


class InputError(LumbarSegError, ValueError):
    """The input image or file is unusable; the message says what was wrong and what is accepted."""


class ModelError(LumbarSegError):
    """Model weights are missing, corrupt or do not match the network configuration."""


class Cancelled(LumbarSegError):
    """The user cancelled a long-running operation."""


# How allocators report an exhausted memory without raising MemoryError: torch's CPU allocator raises a
# RuntimeError ("DefaultCPUAllocator: can't allocate memory" / "not enough memory"), CUDA its
# OutOfMemoryError ("CUDA out of memory").
_OUT_OF_MEMORY_TEXTS = ("can't allocate memory", "not enough memory", "out of memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for any exception that means "ran out of memory" (Python's, torch's CPU or GPU allocator's)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OUT_OF_MEMORY_TEXTS)
