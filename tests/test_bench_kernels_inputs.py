"""benchmarks/bench_kernels.py on the CPU: how each batch's requests get their pages, with and
without a prefix of pages shared by every request, and the interleaved timing rounds (with a
scripted timer in place of CUDA graphs and events)."""

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


class ScriptedTimer(bench_kernels.Timer):
    """Timer whose "graphs" are keys and whose replays return the implementation's scripted
    time, recording the replay order; no GPU. Like a CUDA graph, a key does not keep the
    captured callable alive: only a weak reference is kept, checked at every replay."""

    def __init__(self):
        self.replays = 0
        self.callables = {}
        self.order = []

    def capture(self, fn):
        import weakref

        key = len(self.callables)
        self.callables[key] = weakref.ref(fn)
        fn()  # warm-up, as the real capture does
        return key

    def replay_us(self, graph):
        fn = self.callables[graph]()
        assert fn is not None, "a captured callable was freed before its graph's last replay"
        name, time_us = fn()
        self.order.append(name)
        return time_us


def scripted(name, times):
    """A maker whose callable returns (name, next scripted time)."""
    samples = iter(times)

    def make():
        last = [0.0]

        def run():
            last[0] = next(samples, last[0])
            return name, last[0]

        return run

    return make


def test_interleaved_rounds_rotate_the_order_and_report_each_median():
    timer = ScriptedTimer()
    # The first call of each callable is capture()'s warm-up, so each script starts with it.
    makers = {"ours": scripted("ours", [0, 5, 1, 9]), "fa3": scripted("fa3", [0, 2, 2, 2]),
              "flashinfer": scripted("flashinfer", [0, 7, 3, 4])}
    medians = timer.time_interleaved(makers, replays=3, label="decode 1 x 512")
    assert timer.order == ["ours", "fa3", "flashinfer", "fa3", "flashinfer", "ours",
                           "flashinfer", "ours", "fa3"]
    assert medians == {"ours": 5, "fa3": 2, "flashinfer": 4}


def test_an_implementation_that_fails_is_reported_and_left_out(capsys):
    def broken():
        raise RuntimeError("no kernel for this shape")

    timer = ScriptedTimer()
    medians = timer.time_interleaved({"ours": scripted("ours", [0, 4, 6]), "fa3": broken},
                                     replays=2, label="prefill 8 x 2048")
    assert medians == {"ours": 5}
    assert timer.order == ["ours", "ours"]
    assert "fa3 failed on prefill 8 x 2048: RuntimeError: no kernel for this shape" in \
        capsys.readouterr().out
