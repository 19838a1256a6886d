"""Shared prefixes measured from a step's page table (fi_backend.metadata.shared_prefix): the
tensor-code reference on hand-made tables, the device kernel against it on random ones, and
the adoption of a staged plan only where the step shares the prefix it was composed for."""

import numpy as np
import pytest
import torch

from fi_backend.metadata.block_sparse import BlockSparseKV
from fi_backend.metadata.shared_prefix import SharedPrefixProbe, shared_prefix_pages_reference


def page_table(rows, kv_lens, q_lens, page_size, device="cpu"):
    """BlockSparseKV over explicit page rows; seq_lens and qo_indptr as the step has them."""
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int32)
    indices = [p for r in rows for p in r] or [0]
    last = [k - (len(r) - 1) * page_size if r else 0 for r, k in zip(rows, kv_lens)]
    kv = BlockSparseKV(indptr=torch.tensor(indptr, device=device),
                       indices=torch.tensor(indices, dtype=torch.int32, device=device),
                       last_page_len=torch.tensor(last, dtype=torch.int32, device=device),
                       page_size=page_size)
    qo = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    return (kv, torch.tensor(kv_lens, dtype=torch.int32, device=device),
            torch.tensor(qo, device=device))


@pytest.mark.parametrize("rows, kv_lens, q_lens, expected", [
    ([[5, 6, 7, 8], [5, 6, 7, 9], [5, 6, 7]], [64, 60, 48], [1, 1, 1], 2),  # context bounds
    ([[5, 6, 7, 8], [5, 6, 9, 9], [5, 6, 7, 1]], [64, 64, 64], [1, 1, 1], 2),  # row 1 differs
    ([[5, 6, 7, 8], [4, 6, 7, 8]], [64, 64], [1, 1], 0),  # first pages differ
    ([[5, 6, 7, 8]] * 3, [64, 64, 64], [1, 16, 17], 2),  # queries reach into page 3, then 2
    ([[5, 6, 7, 8], [5, 6, 7, 8], []], [64, 64, 0], [1, 1, 0], 3),  # padding request skipped
    ([[5, 6], [5, 6, 7, 8]], [32, 64], [0, 1], 2),  # request 0's pages bound the prefix
    ([], [], [], 0),
])
def test_reference_measures_pages_shared_before_every_query(rows, kv_lens, q_lens, expected):
    kv, seq_lens, qo_indptr = page_table(rows, kv_lens, q_lens, 16)
    assert shared_prefix_pages_reference(kv, seq_lens, qo_indptr, len(rows)) == expected


def test_probe_adopts_only_what_the_step_shares():
    """On a CPU device the probe measures and adopts synchronously, as the kernels do."""
    probe = SharedPrefixProbe(torch.device("cpu"))
    assert probe.last_shared_pages() == 0
    kv, seq_lens, qo_indptr = page_table([[1, 2, 3, 4], [1, 2, 3, 5]], [64, 64], [1, 1], 16)
    probe.measure(kv, seq_lens, qo_indptr, 2)
    assert probe.last_shared_pages() == 3
    staged, live = torch.arange(10, dtype=torch.int32), torch.zeros(10, dtype=torch.int32)
    probe.adopt(staged, live, required_pages=4)
    assert live.tolist() == [0] * 10
    probe.adopt(staged, live, required_pages=3)
    assert live.tolist() == list(range(10))
    with pytest.raises(ValueError, match="int32 buffers of one layout"):
        probe.adopt(staged[:5], live, required_pages=1)
    with pytest.raises(ValueError, match="required_pages must be >= 1, got 0"):
        probe.adopt(staged, live, required_pages=0)


def random_step(gen, num_reqs, page_size):
    """Requests sharing a random number of leading pages, some differing earlier, some short,
    some padding (no queries)."""
    shared = gen.integers(0, 300)
    prefix = list(gen.permutation(100000)[:shared] + 1)
    rows, kv_lens, q_lens = [], [], []
    for r in range(num_reqs):
        own = list(gen.integers(100001, 200000, size=int(gen.integers(0, 40))))
        row = prefix + own
        if r > 0 and gen.random() < 0.1 and row:
            row = list(row)
            row[int(gen.integers(0, len(row)))] = 0  # differs from request 0 somewhere
        if r > 0 and gen.random() < 0.1:
            row = row[:int(gen.integers(0, len(row) + 1))]  # a shorter request
        padding = r > 0 and gen.random() < 0.05
        kv_len = 0 if padding or not row else int((len(row) - 1) * page_size
                                                  + gen.integers(1, page_size + 1))
        rows.append([] if kv_len == 0 else row)
        q_lens.append(0 if padding or kv_len == 0 else int(gen.integers(1, min(kv_len, 70) + 1)))
        kv_lens.append(kv_len)
    return rows, kv_lens, q_lens


@pytest.mark.gpu
def test_device_measurement_equals_the_reference():
    gen = np.random.default_rng(3)
    probe = SharedPrefixProbe(torch.device("cuda"))
    measured = []
    for trial in range(60):
        page_size = [1, 16, 64][trial % 3]
        num_reqs = int(gen.integers(1, 300)) if trial % 5 else 1
        rows, kv_lens, q_lens = random_step(gen, num_reqs, page_size)
        kv, seq_lens, qo_indptr = page_table(rows, kv_lens, q_lens, page_size, "cuda")
        probe.measure(kv, seq_lens, qo_indptr, num_reqs)
        expected = shared_prefix_pages_reference(kv, seq_lens, qo_indptr, num_reqs)
        assert int(probe.shared_pages[0]) == expected, (trial, num_reqs, page_size)
        measured.append(expected)
        torch.cuda.synchronize()
        assert probe.last_shared_pages() == expected
    assert len(set(measured)) > 10  # the cases cover many prefix lengths, zero included
    assert 0 in measured


@pytest.mark.gpu
def test_device_adoption_follows_this_steps_measurement():
    probe = SharedPrefixProbe(torch.device("cuda"))
    staged = torch.arange(70001, dtype=torch.int32, device="cuda")
    live = torch.full_like(staged, -1)
    kv, seq_lens, qo_indptr = page_table([[1, 2, 3, 4], [1, 2, 3, 5]], [64, 64], [1, 1], 16,
                                         "cuda")
    probe.measure(kv, seq_lens, qo_indptr, 2)
    probe.adopt(staged, live, required_pages=4)
    assert (live == -1).all()
    probe.adopt(staged, live, required_pages=3)
    assert torch.equal(live, staged)
