"""End-to-end workloads and the dummy-weight model configs they run on.

Prompts are token ids drawn from a seeded generator, so a run needs no tokenizer and no
download, and every backend sees exactly the same requests.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

MODEL_CONFIGS_DIR = Path(__file__).resolve().parent.parent / "vllm" / "configs"


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    num_requests: int
    unique_input_len: int  # tokens per request after the shared prefix
    output_len: int
    shared_prefix_len: int = 0  # tokens every request starts with (prefix caching / cascade)
    summary: str = ""

    @property
    def prompt_len(self) -> int:
        return self.shared_prefix_len + self.unique_input_len

    @property
    def max_seq_len(self) -> int:
        return self.prompt_len + self.output_len

    def prompt_token_ids(self, vocab_size: int, seed: int) -> list[list[int]]:
        """`num_requests` prompts of `prompt_len` token ids in [0, vocab_size).

        Different seeds give disjoint-looking prompts, so a warm-up run with another seed
        leaves nothing in the prefix cache that the measured run could hit.
        """
        rng = np.random.default_rng(seed)
        shared = rng.integers(0, vocab_size, size=self.shared_prefix_len).tolist()
        return [shared + rng.integers(0, vocab_size, size=self.unique_input_len).tolist()
                for _ in range(self.num_requests)]


WORKLOADS = {
    w.name: w
    for w in (
        Workload("decode", 64, 1024, 256, summary="decode-heavy: 64 requests, 1024 in -> 256 out"),
        Workload("batch", 32, 4096, 128, summary="batch: 32 requests, 4096 in -> 128 out"),
        Workload("long", 1, 32768, 128, summary="long context: 1 request, 32768 in -> 128 out"),
        Workload("shared-prefix", 64, 256, 128, shared_prefix_len=8192,
                 summary="shared prefix: 64 requests, 8192 shared + 256 unique in -> 128 out"),
    )
}


def parse_workloads(names_csv: str) -> list[Workload]:
    names = [n.strip() for n in names_csv.split(",") if n.strip()]
    if names == ["all"]:
        return list(WORKLOADS.values())
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        raise ValueError(f"workload(s) {unknown or names_csv!r} unknown; "
                         f"choose from: all, {', '.join(WORKLOADS)}")
    return [WORKLOADS[n] for n in names]


def shipped_models() -> dict[str, Path]:
    """Model name -> folder holding its HF `config.json` (fi_backend/vllm/configs/<name>/)."""
    if not MODEL_CONFIGS_DIR.is_dir():
        return {}
    return {d.name: d for d in sorted(MODEL_CONFIGS_DIR.iterdir()) if (d / "config.json").is_file()}


def _loose(name: str) -> str:
    """'Llama-3-8B' and 'llama3_8b' name the same config."""
    return "".join(c for c in name.lower() if c.isalnum())


def resolve_model(name_or_dir: str) -> tuple[str, Path]:
    """A shipped model name, or any folder with a config.json -> (display name, folder)."""
    models = shipped_models()
    for name, folder in models.items():
        if _loose(name) == _loose(name_or_dir):
            return name, folder
    folder = Path(name_or_dir)
    if (folder / "config.json").is_file():
        return folder.name, folder.resolve()
    raise ValueError(f"model {name_or_dir!r} is neither a shipped config "
                     f"({', '.join(models) or 'none found in ' + str(MODEL_CONFIGS_DIR)}) "
                     "nor a folder with a config.json")


def parse_models(names_csv: str) -> list[tuple[str, Path]]:
    names = [n.strip() for n in names_csv.split(",") if n.strip()]
    if names == ["all"]:
        return list(shipped_models().items())
    return [resolve_model(n) for n in names]


def _text_config(config_dir: Path) -> dict:
    config = json.loads((config_dir / "config.json").read_text())
    # Multimodal-style configs nest the language model's settings.
    return config.get("text_config", config)


def model_vocab_size(config_dir: Path) -> int:
    return int(_text_config(config_dir)["vocab_size"])


def hf_overrides_for(config_dir: Path, max_seq_len: int) -> dict:
    """Config overrides so that sequences of `max_seq_len` tokens run.

    A model whose `max_position_embeddings` is shorter (Llama-3-8B: 8192) gets it raised: vLLM
    sizes its RoPE cos/sin cache by it, and positions past the cache trip a device-side
    assert. With dummy weights only the shapes matter, and raising it changes none of them.
    """
    trained_len = _text_config(config_dir).get("max_position_embeddings")
    if trained_len is None or trained_len >= max_seq_len:
        return {}
    return {"max_position_embeddings": max_seq_len}
