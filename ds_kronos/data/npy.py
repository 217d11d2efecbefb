"""Opening a ``.npy`` file memory-mapped after checking its header against what the format expects, without
reading its data: dtype, shape, and a size that matches the header (a truncated or padded file is refused)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ds_kronos.errors import DataError


def npy_header(file: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, data offset) from a .npy header, without reading the data."""
    try:
        with open(file, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(handle)
            return tuple(shape), dtype, fortran, handle.tell()
    except ValueError as exc:
        raise DataError(f"{file}: not a readable .npy file ({exc})") from None


def open_npy(file: Path, dtype: type, shape: tuple[int | None, ...], what: str = "prepared dataset") -> np.ndarray:
    """``file`` memory-mapped read-only; ``shape`` entries of None accept any length there."""
    if not file.is_file():
        raise DataError(f"{file}: missing ({what} incomplete)")
    found_shape, found, fortran, offset = npy_header(file)
    if found != dtype or fortran:
        raise DataError(f"{file}: dtype {found}{' (Fortran order)' if fortran else ''}, expected {np.dtype(dtype)}")
    if len(found_shape) != len(shape) or any(e is not None and e != f for e, f in zip(shape, found_shape)):
        raise DataError(f"{file}: shape {found_shape}, the index says {shape}" if what != "prepared dataset"
                        else f"{file}: shape {found_shape}, manifest says {shape}")
    size, expected = file.stat().st_size, offset + int(np.prod(found_shape, dtype=np.int64)) * found.itemsize
    if size != expected:
        raise DataError(f"{file}: {size} bytes, expected {expected} for {found} {found_shape} (truncated or padded)")
    if expected == offset:
        return np.zeros(found_shape, found)  # nothing to map (an empty array)
    return np.load(file, mmap_mode="r", allow_pickle=False)
