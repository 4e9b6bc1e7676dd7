"""The smallest integer dtype that holds a range of values (label maps in memory and on disk)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["INTEGER_DTYPES", "NIFTI_LABEL_DTYPES", "smallest_int_dtype"]

#: Every integer dtype, smallest first (signed after unsigned of the same size).
INTEGER_DTYPES: tuple[type[np.integer], ...] = (
    np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64)
#: Label-map dtypes that every NIfTI viewer reads.
NIFTI_LABEL_DTYPES: tuple[type[np.integer], ...] = (np.uint8, np.uint16, np.int16, np.int32)


def smallest_int_dtype(low: int, high: int, choices: Sequence[type[np.integer]] = INTEGER_DTYPES) -> np.dtype | None:
    """The first dtype of ``choices`` whose range holds ``low..high``, or None when none does.

    Example:
        >>> smallest_int_dtype(0, 255), smallest_int_dtype(-1, 255), smallest_int_dtype(0, 2**40, NIFTI_LABEL_DTYPES)
        (dtype('uint8'), dtype('int16'), None)
    """
    for candidate in choices:
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            return np.dtype(candidate)
    return None
