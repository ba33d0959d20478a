"""Batches shared out among ranks come back complete and in order."""

import pytest
import torch

from osad.distributed import batch_slices, derive_seed, map_batches, rank_block
from tests.distributed.spawn import run_ranks


def test_rank_blocks_cover_every_item_once_in_order():
    for count in range(8):
        for size in (1, 2, 3, 5):
            blocks = [rank_block(count, r, size) for r in range(size)]
            assert [i for b in blocks for i in b] == list(range(count))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_batch_slices_cut_the_same_batches_as_a_loop():
    assert batch_slices(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]


def test_derived_seeds_differ_by_key_and_repeat():
    assert derive_seed(0, 1) == derive_seed(0, 1)
    assert len({derive_seed(0, k) for k in range(100)} | {derive_seed(1, 0)}) == 101
    assert 0 <= derive_seed(-5, 2**70) < 2**63


def _batch_outputs(index: int, batch: slice):
    rows = torch.arange(batch.start, batch.stop)
    noise = torch.rand(len(rows), generator=torch.Generator().manual_seed(derive_seed(7, index)))
    return rows.float()[:, None].repeat(1, 2), noise, None


CASES = ((9, 2), (4, 2))  # 5 batches over 3 ranks (2, 2, 1); 2 batches (one rank idle)


def _check_map(rank: int, expected: list) -> None:
    for (n, batch_size), (rows, noise) in zip(CASES, expected, strict=True):
        got = map_batches(_batch_outputs, n, batch_size, torch.device("cpu"))
        assert got[2] is None
        torch.testing.assert_close(got[0], rows, rtol=0, atol=0)
        torch.testing.assert_close(got[1], noise, rtol=0, atol=0)


@pytest.mark.slow
def test_three_ranks_gather_what_one_process_computes():
    cpu = torch.device("cpu")
    expected = [map_batches(_batch_outputs, n, b, cpu)[:2] for n, b in CASES]
    assert [rows.shape for rows, _ in expected] == [(9, 2), (4, 2)]
    run_ranks(_check_map, 3, expected)
