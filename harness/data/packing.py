"""Packing tokenized examples into fixed-length rows with segment ids and restarting positions.

Rows are planned by best-fit decreasing within windows of consecutive examples: the examples of a
window are sorted longest first (ties by position) and each goes into the open row with the least
room that still fits it, else a new row; a window's rows are closed when the window ends, so the
plan is deterministic and each example's row depends only on its window.

Row arrays (one row per plan entry, ``L = max_length``)::

    tokens[t]      the token at position t
    targets[t]     the next token of the same segment (pad_id at a segment's last token and in padding)
    loss_mask[t]   True iff targets[t] is trained, i.e. the example's mask at t + 1 (the shift:
                   TokenizedExample.loss_mask marks tokens to produce; the batch marks the positions
                   that predict them)
    segment_ids[t] 1, 2, ... per example in the row; 0 = padding
    positions[t]   0, 1, ... restarting at every segment; 0 in padding

Efficiency = non-pad tokens / all tokens of the rows.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

import numpy as np


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins (lists of item indices) of total length <= capacity, by best-fit decreasing."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[int] = []  # remaining room of the open bins, ascending
    owners: list[int] = []  # the bin each entry of ``free`` belongs to
    bins: list[list[int]] = []
    for item in order:
        size = int(lengths[item])
        if size > capacity or size < 1:
            raise ValueError(f"item {item} has length {size}, outside 1..{capacity}")
        slot = bisect_left(free, size)
        if slot == len(free):
            bins.append([item])
            owner, room = len(bins) - 1, capacity - size
        else:
            owner, room = owners.pop(slot), free.pop(slot) - size
            bins[owner].append(item)
        if room > 0:
            where = bisect_left(free, room)
            free.insert(where, room)
            owners.insert(where, owner)
    return bins


def plan_rows(lengths: Sequence[int], max_length: int, packing: bool = True, window: int = 2048) -> list[list[int]]:
    """Rows of item indices: packed by windowed best-fit decreasing, or one item per row."""
    if not packing:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    for begin in range(0, len(lengths), window):
        bins = best_fit_decreasing(lengths[begin : begin + window], max_length)
        rows.extend([begin + i for i in row] for row in bins)
    return rows


def packing_efficiency(lengths: Sequence[int], rows: Sequence[Sequence[int]], max_length: int) -> float:
    """Non-pad tokens / all row tokens."""
    if not rows:
        return 0.0
    used = sum(int(lengths[i]) for row in rows for i in row)
    return used / (len(rows) * max_length)


def fill_rows(
    segments: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], max_length: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Batch arrays for rows given as lists of ``(input_ids, loss_mask)`` segments (see module doc)."""
    count = len(segments)
    tokens = np.full((count, max_length), pad_id, np.int32)
    targets = np.full((count, max_length), pad_id, np.int32)
    loss_mask = np.zeros((count, max_length), bool)
    segment_ids = np.zeros((count, max_length), np.int32)
    positions = np.zeros((count, max_length), np.int32)
    for row, parts in enumerate(segments):
        offset = 0
        for number, (ids, mask) in enumerate(parts, start=1):
            n = len(ids)
            if offset + n > max_length:
                raise ValueError(f"row {row}: segments total more than max_length={max_length}")
            end = offset + n
            tokens[row, offset:end] = ids
            targets[row, offset : end - 1] = ids[1:]
            loss_mask[row, offset : end - 1] = mask[1:]
            segment_ids[row, offset:end] = number
            positions[row, offset:end] = np.arange(n, dtype=np.int32)
            offset = end
    return {"tokens": tokens, "targets": targets, "loss_mask": loss_mask,
            "segment_ids": segment_ids, "positions": positions}
