"""Turn arrays into files a learner can download: CSV for vectors and matrices, NPZ for any array."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd


def to_csv_bytes(
    array: np.ndarray, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None
) -> bytes:
    """A 1-D or 2-D array as CSV (one row per entry/row). Higher ranks are flattened to rows
    with one index column per leading axis."""
    array = np.asarray(array)
    if array.ndim == 1:
        frame = pd.DataFrame({"value": array}, index=list(row_labels) if row_labels is not None else None)
    elif array.ndim == 2:
        frame = pd.DataFrame(
            array,
            index=list(row_labels) if row_labels is not None else None,
            columns=list(col_labels) if col_labels is not None else None,
        )
    else:
        lead = array.shape[:-1]
        index = pd.MultiIndex.from_tuples(
            list(np.ndindex(*lead)), names=[f"axis{i}" for i in range(len(lead))]
        )
        frame = pd.DataFrame(array.reshape(-1, array.shape[-1]), index=index)
    return frame.to_csv().encode("utf-8")


def to_npz_bytes(**arrays: np.ndarray) -> bytes:
    """Several named arrays in one compressed .npz file (load with `np.load(file)`)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()
