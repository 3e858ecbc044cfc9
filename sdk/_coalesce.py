"""Coalescing: many callers' query rows stacked into one matrix, and each caller's rows of the answer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def stack(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """The blocks' rows as one matrix (the block itself, without a copy, when it is alone)."""
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def row_slices(blocks: Sequence[np.ndarray]) -> Iterator[slice]:
    """Where each block's rows are in `stack(blocks)`, in order."""
    start = 0
    for block in blocks:
        stop = start + len(block)
        yield slice(start, stop)
        start = stop
