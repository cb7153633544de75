"""Label lists <-> multi-hot matrices, and the comma-separated label field of the CSVs."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def parse_label_field(field) -> tuple[str, ...]:
    """'Bark,Walk_and_footsteps' -> ('Bark', 'Walk_and_footsteps').

    Whitespace around names is dropped, empty parts and repeats are removed (first kept);
    a missing field (None, NaN, '') gives ().
    """
    if field is None or (isinstance(field, float) and field != field):
        return ()
    out: list[str] = []
    for part in str(field).split(","):
        name = part.strip()
        if name and name not in out:
            out.append(name)
    return tuple(out)


def labels_to_matrix(label_tuples: Iterable[Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    """Multi-hot float32 matrix (n, len(classes)); a label not in `classes` raises ValueError."""
    index = {name: i for i, name in enumerate(classes)}
    rows = list(label_tuples)
    y = np.zeros((len(rows), len(index)), dtype=np.float32)
    for r, labels in enumerate(rows):
        for name in labels:
            try:
                y[r, index[name]] = 1.0
            except KeyError:
                raise ValueError(f"label {name!r} (row {r}) is not one of the {len(index)} classes") from None
    return y


def matrix_to_labels(
    matrix: np.ndarray, classes: Sequence[str], threshold: float = 0.5
) -> list[tuple[str, ...]]:
    """Rows of a multi-hot (or probability) matrix -> label tuples, in class order.

    A class is kept when its value is >= `threshold`.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[1] != len(classes):
        raise ValueError(f"matrix of shape {matrix.shape} does not match {len(classes)} classes")
    names = list(classes)
    return [tuple(names[j] for j in np.flatnonzero(row >= threshold)) for row in matrix]
