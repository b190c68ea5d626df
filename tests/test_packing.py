"""Packing: segment/position/target/mask properties (hypothesis) and the best-fit plan."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.packing import best_fit_decreasing, fill_rows, packing_efficiency, plan_rows

PAD = 0


@st.composite
def examples_and_length(draw):
    max_length = draw(st.integers(4, 48))
    count = draw(st.integers(1, 30))
    examples = []
    for _ in range(count):
        n = draw(st.integers(2, max_length))
        ids = np.asarray(draw(st.lists(st.integers(1, 999), min_size=n, max_size=n)), np.int32)
        mask = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
        examples.append((ids, mask))
    window = draw(st.integers(1, 40))
    return examples, max_length, window


@settings(max_examples=150, deadline=None)
@given(data=examples_and_length(), packing=st.booleans())
def test_rows_reconstruct_every_example_exactly(data, packing):
    examples, max_length, window = data
    lengths = [len(ids) for ids, _ in examples]
    rows = plan_rows(lengths, max_length, packing=packing, window=window)
    # Every example exactly once, no row over capacity, windows respected.
    assert sorted(i for row in rows for i in row) == list(range(len(examples)))
    assert all(sum(lengths[i] for i in row) <= max_length for row in rows)
    assert all(len({i // window for i in row}) == 1 for row in rows) or not packing
    batch = fill_rows([[examples[i] for i in row] for row in rows], max_length, PAD)
    tokens, targets, mask = batch["tokens"], batch["targets"], batch["loss_mask"]
    seg, pos = batch["segment_ids"], batch["positions"]
    assert tokens.dtype == targets.dtype == seg.dtype == pos.dtype == np.int32 and mask.dtype == bool
    for r, row in enumerate(rows):
        for number, i in enumerate(row, start=1):
            ids, m = examples[i]
            where = np.flatnonzero(seg[r] == number)
            # A segment is contiguous, holds the example's ids, and its positions restart at 0.
            assert where.tolist() == list(range(where[0], where[0] + len(ids)))
            assert tokens[r, where].tolist() == ids.tolist()
            assert pos[r, where].tolist() == list(range(len(ids)))
            # targets = next token within the segment; loss_mask[t] = "targets[t] is trained".
            assert targets[r, where[:-1]].tolist() == ids[1:].tolist()
            assert mask[r, where[:-1]].tolist() == m[1:].tolist()
            assert not mask[r, where[-1]] and targets[r, where[-1]] == PAD
        pad = seg[r] == 0
        assert not mask[r, pad].any() and (tokens[r, pad] == PAD).all() and (pos[r, pad] == 0).all()
        # Segments appear in order 1, 2, ... and padding only at the end.
        used = seg[r][~pad]
        assert (np.diff(used) >= 0).all() and (not pad.any() or pad[np.argmax(pad):].all())
    expected = sum(lengths) / (len(rows) * max_length)
    assert packing_efficiency(lengths, rows, max_length) == expected


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(1, 100), min_size=1, max_size=200), capacity=st.integers(100, 300))
def test_best_fit_decreasing_is_near_optimal_and_deterministic(lengths, capacity):
    bins = best_fit_decreasing(lengths, capacity)
    assert bins == best_fit_decreasing(list(lengths), capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    # FFD/BFD never use more than 11/9 OPT + 1 bins; OPT >= ceil(total / capacity).
    lower = -(-sum(lengths) // capacity)
    assert len(bins) <= 11 * lower / 9 + 1
    # No two bins could be merged (otherwise best fit would have used the first).
    loads = sorted(sum(lengths[i] for i in b) for b in bins)
    assert len(loads) < 2 or loads[0] + loads[1] > capacity


def test_no_packing_is_one_example_per_row():
    rows = plan_rows([5, 3, 8], 8, packing=False)
    assert rows == [[0], [1], [2]]
    batch = fill_rows([[(np.arange(1, 6, dtype=np.int32), np.ones(5, bool))]], 8, PAD)
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]
    assert batch["targets"].tolist() == [[2, 3, 4, 5, 0, 0, 0, 0]]
    assert batch["loss_mask"].tolist() == [[True, True, True, True, False, False, False, False]]
