"""The package's one error type for bad input.

Every check of an argument, a file or a config raises :class:`InputError` (a ``ValueError``,
so ``except ValueError`` keeps working); the C++ argument checks raise ``ValueError`` too
(``TORCH_CHECK_VALUE``). The command line turns these, and the errors of the libraries that
read files (rasterio, safetensors, torch's checkpoint reader), into one line and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: an argument, a file or a config field, named in the message."""


def input_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad input rather than a bug of this package."""
    kinds: list[type[BaseException]] = [ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                        PermissionError]
    try:
        from rasterio.errors import RasterioError

        kinds.append(RasterioError)
    except ImportError:
        pass
    try:
        from safetensors import SafetensorError

        kinds.append(SafetensorError)
    except ImportError:
        pass
    import pickle

    kinds.append(pickle.UnpicklingError)  # a checkpoint that is not plain data
    return tuple(kinds)
