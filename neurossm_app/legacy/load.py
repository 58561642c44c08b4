"""Reading the original code's files: ``.npy`` (numeric or object arrays), ``.npz`` and pickles.

Numeric ``.npy`` files are memory-mapped and never unpickled. Object arrays and pickles run code
while they load (a pickle names functions that the loader calls), so they are read only with
``allow_pickle=True`` (``--allow-pickle``), and even then through :class:`RestrictedUnpickler`,
which builds numpy arrays and scalars, Python containers and pandas tables but refuses any other
function or class a file asks for.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from neurossm_app.errors import DataError, InputMissingError, UsageError

PICKLE_SUFFIXES = (".pickle", ".pkl", ".pck")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"

# What a pickle of numpy arrays, Python containers and pandas tables needs, and nothing else.
_NUMPY_MODULES = (
    "numpy",
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy.core.numeric",
    "numpy._core.numeric",
)
_NUMPY_NAMES = {"_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer"}
_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "complex", "bytearray", "slice", "range"}
_OTHER = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("_codecs", "encode")}
# pandas reconstructs frames from its internals; its I/O and expression evaluation stay out.
_PANDAS_PREFIXES = ("pandas.core.", "pandas._libs.")
_PANDAS_EXCLUDED = ("pandas.core.computation", "pandas.io")


def pickle_hint(path: Path) -> str:
    """The one line shown when a file needs ``--allow-pickle``."""
    return (
        f"{path} holds Python objects (a pickle or an object array); pass --allow-pickle only for a "
        "file you trust: unpickling runs code named inside the file (see docs/legacy.md)."
    )


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds numpy arrays/scalars, builtin containers and pandas tables."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            (module in _NUMPY_MODULES and name in _NUMPY_NAMES)
            or (module.startswith("numpy.dtypes") and name.endswith("DType"))
            or (module in ("builtins", "__builtin__") and name in _BUILTINS)
            or (module, name) in _OTHER
            or (module in ("pandas", "pandas.arrays") and name[:1].isupper())  # classes, not functions
            or (module.startswith(_PANDAS_PREFIXES) and not module.startswith(_PANDAS_EXCLUDED))
        )
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not a data type neurossm-app-import builds")
        return super().find_class(module, name)


def _unpickle(stream: io.BufferedIOBase, path: Path) -> Any:
    try:
        return RestrictedUnpickler(stream).load()
    except pickle.UnpicklingError as err:
        if "neurossm-app-import" in str(err):
            raise DataError(
                f"{path} asks to run {str(err).split(' is not')[0]} while loading; "
                "only numpy arrays, lists, dicts and pandas tables are read: re-save the data as those "
                "(see docs/legacy.md)."
            ) from None
        raise DataError(f"{path} is not a readable pickle ({err}); check the file.") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as err:
        raise DataError(
            f"{path} is not a readable pickle ({type(err).__name__}: {err}); the file may be truncated."
        ) from None


def _read_npy(path: Path, allow_pickle: bool) -> Any:
    with path.open("rb") as stream:
        try:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        except ValueError as err:
            raise DataError(f"{path} is not a valid .npy file ({err}).") from None
        if dtype.hasobject:
            if not allow_pickle:
                raise UsageError(pickle_hint(path))
            return _unpickle(stream, path)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise DataError(f"{path} is not a valid .npy file ({err}); expected shape {shape}.") from None


def _read_npz(path: Path, allow_pickle: bool) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as err:
        if "allow_pickle" in str(err):
            if not allow_pickle:
                raise UsageError(pickle_hint(path)) from None
            raise DataError(
                f"{path} holds object arrays inside an .npz, which neurossm-app-import does not read; "
                "save the data with np.save (one .npy) or pickle instead."
            ) from None
        raise DataError(f"{path} is not a valid .npz file ({err}).") from None


def read_input(path: Path, allow_pickle: bool) -> Any:
    """Load one input file of the original code.

    Parameters
    ----------
    path
        ``.npy`` (numeric: memory-mapped; object: needs ``allow_pickle``), ``.npz``, or a pickle
        (``.pickle``/``.pkl``; needs ``allow_pickle``). Other names are recognised by content.
    allow_pickle
        Whether Python objects may be unpickled (with :class:`RestrictedUnpickler`).

    Returns
    -------
    object
        The loaded array, list or dict (0-d object arrays are unwrapped).

    Raises
    ------
    InputMissingError
        ``path`` does not exist.
    UsageError
        Python objects without ``allow_pickle`` (exit 64).
    DataError
        A damaged or unknown file (exit 65).
    """
    if not path.is_file():
        raise InputMissingError(f"INPUT {path} does not exist.")
    with path.open("rb") as stream:
        head = stream.read(8)
    if head.startswith(_NPY_MAGIC):
        data = _read_npy(path, allow_pickle)
    elif head.startswith(_ZIP_MAGIC) and path.suffix == ".npz":
        data = _read_npz(path, allow_pickle)
    elif head[:1] == b"\x80" or path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UsageError(pickle_hint(path))
        with path.open("rb") as stream:
            data = _unpickle(stream, path)
    elif head.startswith(_ZIP_MAGIC):
        raise DataError(
            f"{path} is a zip archive (a torch.save file?); load it in Python and re-save the data "
            "with np.save or pickle as described in docs/legacy.md."
        )
    else:
        raise DataError(
            f"{path} is neither a .npy file nor a pickle; expected the original code's .npy/.pickle."
        )
    if isinstance(data, np.ndarray) and data.dtype.hasobject and data.ndim == 0:
        data = data.item()  # np.save of a dict or list
    return data
