"""Shared prefixes found on the device, for cascade steps that vLLM does not announce.

Cascade (FlashInfer paper section 3.1; metadata/cascade_plan.py) needs to know which leading
pages all requests of a step share. vLLM 0.26's V2 model runner (its default) never tells the
backend (`common_prefix_len` is always 0) and keeps block tables on the device only, so the
host cannot look either without a synchronizing copy. Instead, each step:

1. The host guesses the prefix: the pages the latest finished measurement found shared
   (`SharedPrefixProbe.last_shared_pages`, read back asynchronously one or more steps late),
   clipped to this step's host lengths.
2. The host publishes the step's plain plan into the live plan buffer as always and, where the
   guess pays off, the cascade plan composed for it into a staging buffer of the same layout.
3. On the device, in stream order before any layer (`SharedPrefixProbe.measure`, `.adopt`):
   measure how many leading pages this step's requests share; copy the staged plan over the
   live one only if they share the guessed prefix.

Every layer runs the live plan, correct whichever of the two it holds; the live buffer never
moves, so CUDA graphs captured on it stay valid. A wrong guess costs one step without cascade.
"""

from __future__ import annotations

import torch

from fi_backend._streams import current_raw_stream
from fi_backend.metadata.block_sparse import BlockSparseKV

__all__ = ["SharedPrefixProbe", "shared_prefix_pages_reference"]


def shared_prefix_pages_reference(kv: BlockSparseKV, seq_lens: torch.Tensor,
                                  qo_indptr: torch.Tensor, num_reqs: int) -> int:
    """What the device measures, in plain tensor code (synchronizes; CPU steps and tests):
    the number of leading pages of request 0's row (which a composed plan's prefix items
    read) that every request with queries shares and holds before its first query (a cascade
    prefix precedes every query). Requests without queries (CUDA-graph padding) are skipped."""
    if num_reqs == 0:
        return 0
    indptr = kv.indptr[:num_reqs + 1].long().cpu()
    q_lens = (qo_indptr[1:num_reqs + 1] - qo_indptr[:num_reqs]).long().cpu()
    context = (seq_lens[:num_reqs].long().cpu() - q_lens).clamp(min=0)
    with_queries = q_lens > 0
    bound = int(indptr[1] - indptr[0])
    if with_queries.any():
        bound = min(bound, int(torch.minimum(context // kv.page_size,
                                             indptr[1:] - indptr[:-1])[with_queries].min()))
    indices = kv.indices.cpu()
    first = indices[indptr[0]:indptr[0] + bound]
    for r in torch.nonzero(with_queries).flatten().tolist():
        differs = torch.nonzero(indices[indptr[r]:indptr[r] + bound] != first)
        if differs.numel():
            bound = int(differs[0])
            first = first[:bound]
    return bound


class SharedPrefixProbe:
    """Measures on the device the pages shared by each step's requests, reads the count back
    without blocking the host, and adopts staged cascade plans (module docstring).

    On a CPU device (tests without a GPU) the same happens synchronously in tensor code."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self._is_cuda = self.device.type == "cuda"
        # This step's count: written by the measurement, read by the adoption.
        self.shared_pages = torch.zeros(1, dtype=torch.int32, device=self.device)
        # Read-back ring: the host reads a slot only once the copy last issued into it is done.
        self._readback = torch.zeros(2, dtype=torch.int32, pin_memory=self._is_cuda)
        self._readback_done = ([torch.cuda.Event(), torch.cuda.Event()]
                               if self._is_cuda else [])
        self._issued = [False, False]
        self._next_slot = 0
        self._latest_known = 0

    def last_shared_pages(self) -> int:
        """The newest measurement the device has finished (0 before any), without waiting."""
        newest, older = self._next_slot ^ 1, self._next_slot
        if self._finished(newest):
            self._latest_known = int(self._readback[newest])
            self._issued = [False, False]
        elif self._finished(older):
            self._latest_known = int(self._readback[older])
            self._issued[older] = False
        return self._latest_known

    def _finished(self, slot: int) -> bool:
        return self._issued[slot] and (not self._is_cuda or self._readback_done[slot].query())

    def measure(self, kv: BlockSparseKV, seq_lens: torch.Tensor, qo_indptr: torch.Tensor,
                num_reqs: int) -> None:
        """Enqueues this step's measurement (into `shared_pages`) and its read-back."""
        slot = self._next_slot
        if self._is_cuda:
            from fi_backend import _C

            stream = current_raw_stream(self.device)
            _C.measure_shared_prefix(
                kv_indptr=kv.indptr.data_ptr(), kv_indices=kv.indices.data_ptr(),
                seq_lens=seq_lens.data_ptr(), qo_indptr=qo_indptr.data_ptr(),
                num_reqs=num_reqs, page_size=kv.page_size,
                shared_pages=self.shared_pages.data_ptr(), stream=stream)
            self._readback[slot:slot + 1].copy_(self.shared_pages, non_blocking=True)
            self._readback_done[slot].record()
        else:
            self.shared_pages.fill_(shared_prefix_pages_reference(kv, seq_lens, qo_indptr,
                                                                  num_reqs))
            self._readback[slot] = self.shared_pages[0]
        self._issued[slot] = True
        self._next_slot = slot ^ 1

    def adopt(self, staged_plan: torch.Tensor, live_plan: torch.Tensor,
              required_pages: int) -> None:
        """Copies `staged_plan` over `live_plan` (int32 plan buffers of one layout) on the
        device, in stream order after `measure`, if this step's requests share at least
        `required_pages` pages."""
        if staged_plan.shape != live_plan.shape or staged_plan.dtype != torch.int32 or \
                live_plan.dtype != torch.int32:
            raise ValueError(f"staged and live plans must be int32 buffers of one layout; got "
                             f"{staged_plan.dtype} {tuple(staged_plan.shape)} and "
                             f"{live_plan.dtype} {tuple(live_plan.shape)}")
        if required_pages < 1:
            raise ValueError(f"required_pages must be >= 1, got {required_pages}")
        if self._is_cuda:
            from fi_backend import _C

            _C.adopt_plan_if_shared(shared_pages=self.shared_pages.data_ptr(),
                                    required_pages=required_pages,
                                    staged_plan=staged_plan.data_ptr(),
                                    live_plan=live_plan.data_ptr(),
                                    num_ints=live_plan.numel(),
                                    stream=current_raw_stream(self.device))
        elif int(self.shared_pages[0]) >= required_pages:
            live_plan.copy_(staged_plan)
