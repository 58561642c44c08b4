"""Reading the original code's files: ``.npy`` (numeric or object arrays), ``.npz`` and pickles.

Numeric ``.npy`` files are memory-mapped and never unpickled. Object arrays and pickles run code
while they load (a pickle names functions and classes that the loader looks up and calls), so they
are read only with ``allow_pickle=True`` (``--allow-pickle``), and even then through
:class:`RestrictedUnpickler`. It looks up only the exact ``(module, name)`` pairs in
:data:`ALLOWED_GLOBALS`: the classes and reconstructors that numpy (1.x and 2.x) and pandas (1.5 to
3.x) write for arrays, scalars, data frames, series, their indexes and column types (numeric,
string and object, categorical, nullable integer, float and boolean, datetime and timedelta
without time zone), plus Python's own data types (``set``, ``bytes`` under protocol 2,
``OrderedDict``, ``defaultdict``, ``datetime``). A name with a dot (protocol 4 resolves
``pandas`` + ``DataFrame.to_csv`` to a method) and every other module or function, among them
``builtins.getattr``, ``os.system``, ``numpy.load`` and ``pandas.read_pickle``, are refused before
anything is looked up.
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

# pandas classes by name: (where pandas 3 pickles them, where pandas 1.5-2.x pickles them).
_PANDAS_CLASSES = {
    "DataFrame": ("pandas", "pandas.core.frame"),
    "Series": ("pandas", "pandas.core.series"),
    "Index": ("pandas", "pandas.core.indexes.base"),
    "RangeIndex": ("pandas", "pandas.core.indexes.range"),
    "MultiIndex": ("pandas", "pandas.core.indexes.multi"),
    "CategoricalIndex": ("pandas", "pandas.core.indexes.category"),
    "DatetimeIndex": ("pandas", "pandas.core.indexes.datetimes"),
    "Categorical": ("pandas", "pandas.core.arrays.categorical"),
    "CategoricalDtype": ("pandas", "pandas.core.dtypes.dtypes"),
    "StringArray": ("pandas.arrays", "pandas.core.arrays.string_"),
    "StringDtype": ("pandas", "pandas.core.arrays.string_"),
    "DatetimeArray": ("pandas.arrays", "pandas.core.arrays.datetimes"),
    "TimedeltaArray": ("pandas.arrays", "pandas.core.arrays.timedeltas"),
    "BooleanArray": ("pandas.arrays", "pandas.core.arrays.boolean"),
    "BooleanDtype": ("pandas", "pandas.core.arrays.boolean"),
    "IntegerArray": ("pandas.arrays", "pandas.core.arrays.integer"),
    "FloatingArray": ("pandas.arrays", "pandas.core.arrays.floating"),
    "Float32Dtype": ("pandas", "pandas.core.arrays.floating"),
    "Float64Dtype": ("pandas", "pandas.core.arrays.floating"),
    **{
        f"{kind}{bits}Dtype": ("pandas", "pandas.core.arrays.integer")
        for kind in ("Int", "UInt")
        for bits in (8, 16, 32, 64)
    },
    "NA": ("pandas", "pandas._libs.missing"),  # the missing-value singleton, not a class
}

#: Every global a pickle may name: exact (module, name) pairs, never a dotted name.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        # numpy arrays, dtypes and scalars (numpy 1.x pickles numpy.core, numpy 2 numpy._core)
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *(
            (f"numpy.{core}.multiarray", name)
            for core in ("core", "_core")
            for name in ("_reconstruct", "scalar")
        ),
        *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
        # Python data types pickled by name (protocol 2 says __builtin__, and _codecs.encode for bytes)
        *(
            (builtins, name)
            for builtins in ("builtins", "__builtin__")
            for name in ("list", "dict", "set", "frozenset", "slice", "range", "complex", "bytearray")
        ),
        ("__builtin__", "xrange"),  # range, as protocol 2 writes it
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("datetime", "date"),
        ("datetime", "datetime"),
        ("datetime", "timedelta"),
        # pandas frames, series and indexes, their column arrays and dtypes
        *((module, name) for name, modules in _PANDAS_CLASSES.items() for module in modules),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas.core.indexes.datetimes", "_new_DatetimeIndex"),
        ("pandas.core.internals.managers", "BlockManager"),
        ("pandas.core.internals.managers", "SingleBlockManager"),
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
        ("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"),
        ("pandas._libs.tslibs.timedeltas", "_timedelta_unpickle"),
        ("pandas._libs.tslibs.nattype", "_nat_unpickle"),
        ("pandas._libs.tslibs.nattype", "__nat_unpickle"),
        # pandas < 2 names that later pandas moved (as pandas.compat.pickle_compat maps them)
        ("pandas.core.internals.blocks", "new_block"),
        *(("pandas.core.indexes.numeric", name) for name in ("Int64Index", "UInt64Index", "Float64Index")),
    }
)
# Where an allowed global lives when its old place is gone from the installed numpy/pandas.
_MOVED = {
    ("pandas.core.internals.blocks", "new_block"): ("pandas._libs.internals", "_unpickle_block"),
    ("pandas._libs.tslibs.nattype", "__nat_unpickle"): ("pandas._libs.tslibs.nattype", "_nat_unpickle"),
    **{
        ("pandas.core.indexes.numeric", name): ("pandas.core.indexes.base", "Index")
        for name in ("Int64Index", "UInt64Index", "Float64Index")
    },
}


def pickle_hint(path: Path) -> str:
    """The one line shown when a file needs ``--allow-pickle``."""
    return (
        f"{path} holds Python objects (a pickle or an object array); pass --allow-pickle only for a "
        "file you trust: unpickling runs code named inside the file (see docs/legacy.md)."
    )


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside :data:`ALLOWED_GLOBALS`; nothing was looked up."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name} is not a data type neurossm-app-import builds")
        self.qualified_name = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that looks up only the exact (module, name) pairs of :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedGlobal(module, name)
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            if (module, name) not in _MOVED:
                raise
            return super().find_class(*_MOVED[module, name])


def _unpickle(stream: io.BufferedIOBase, path: Path) -> Any:
    try:
        return RestrictedUnpickler(stream).load()
    except RefusedGlobal as err:
        raise DataError(
            f"{path} asks for {err.qualified_name} while loading, which neurossm-app-import does not "
            "run or build (only numpy arrays, Python containers and pandas tables): re-save the data "
            "as those (see docs/legacy.md)."
        ) from None
    except pickle.UnpicklingError as err:
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
