"""fi_backend._streams: the raw current-stream handle passed to the extension."""

import torch

from fi_backend import _streams


def test_current_raw_stream_asks_torch_for_the_device_index(monkeypatch):
    asked = []
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream",
                        lambda index: asked.append(index) or 1000 + index, raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert _streams.current_raw_stream(torch.device("cuda", 1)) == 1001
    # An index-less device means the current one, as torch.cuda.current_stream() reads it.
    assert _streams.current_raw_stream(torch.device("cuda")) == 1003
    assert asked == [1, 3]
