"""Inputs of benchmarks/bench_kernels.py (CPU): how each batch's requests get their pages,
with and without a prefix of pages shared by every request."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_kernels  # noqa: E402

PAGE = bench_kernels.PAGE_SIZE


def test_without_a_shared_prefix_requests_take_consecutive_runs_of_the_shuffled_pool():
    order = np.random.default_rng(0).permutation(1000)
    kv_lens = [1, PAGE, PAGE + 1, 5 * PAGE]
    pages = bench_kernels.assign_pages(kv_lens, order)
    counts = [1, 1, 2, 5]
    assert [len(p) for p in pages] == counts
    assert len(set(np.concatenate(pages).tolist())) == sum(counts)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for b, request_pages in enumerate(pages):
        np.testing.assert_array_equal(request_pages, order[starts[b]:starts[b + 1]])


def test_a_shared_prefix_is_the_same_pages_for_every_request_and_the_rest_is_private():
    order = np.random.default_rng(1).permutation(5000)
    prefix_tokens, kv_lens = 64 * PAGE, [64 * PAGE + 3, 70 * PAGE, 64 * PAGE]
    pages = bench_kernels.assign_pages(kv_lens, order, prefix_tokens)
    assert [len(p) for p in pages] == [65, 70, 64]
    assert len(set(np.concatenate(pages).tolist())) == 64 + 1 + 6
    for request_pages in pages:
        np.testing.assert_array_equal(request_pages[:64], order[:64])
    private = [set(p[64:].tolist()) for p in pages]
    assert not (private[0] & private[1]) and not (set(order[:64].tolist()) & private[1])


@pytest.mark.parametrize("prefix_tokens, kv_lens", [(PAGE + 1, [4 * PAGE]), (8 * PAGE, [4 * PAGE])])
def test_a_shared_prefix_must_be_whole_pages_within_every_request(prefix_tokens, kv_lens):
    with pytest.raises(ValueError, match="multiple of the page size"):
        bench_kernels.assign_pages(kv_lens, np.arange(100), prefix_tokens)
