"""Label-map postprocessing."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def keep_largest_component(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep only the largest connected component of each foreground class; the rest becomes 0.

    Example:
        >>> keep_largest_component(np.array([1, 1, 0, 1, 2]), 3).tolist()
        [1, 1, 0, 0, 2]
    """
    out = classes.copy()
    for c in range(1, num_classes):
        mask = classes == c
        if not mask.any():
            continue
        components, n = ndimage.label(mask)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != sizes.argmax())] = 0
    return out
