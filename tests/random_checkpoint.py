"""A random-weight Hugging Face checkpoint for one of the shipped model configs.

Why a checkpoint: vLLM's dummy weights are drawn per tensor-parallel shard, so TP 1 and
TP 2 would run different networks. Full, unsharded tensors under Hugging Face names, loaded
with `load_format="safetensors"`, are sharded by vLLM's own loader: every TP size sees the
same weights.

The weights (`initial_value`) are drawn at unit-variance scale, seeded per tensor name (the
same tensor comes out whatever else the checkpoint holds): linear weights and embeddings
N(0, 1/fan_in), so attention scores and logits have unit scale and every layer moves the
logits; norms the identity; biases N(0, 0.1). `--residual-scale` scales what ends a
residual branch (the output projections, or Gemma-2's post-branch norms).

    python tests/random_checkpoint.py fi_backend/vllm/configs/llama3_8b /tmp/ckpt \
        --overrides '{"num_hidden_layers": 8}' --device cuda

Names and shapes follow vLLM 0.26's loaders for Llama, Mistral, Qwen2 and Gemma-2
(model_executor/models/{llama,mistral,qwen2,gemma2}.py); tests/test_e2e_checkpoint.py loads
the result into vLLM's own model classes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

STAMP_NAME = "random_checkpoint.json"
"""Written last: what the checkpoint was drawn from; an existing one is reused only if equal."""
DEFAULT_SHARD_BYTES = 4 << 30
BIAS_STD = 0.1


@dataclass(frozen=True)
class Family:
    qkv_bias: bool            # q/k/v projections carry biases (Qwen2)
    gemma_norms: bool         # RMSNorm computes x * (1 + w): identity is w = 0; and the extra
                              # pre/post-feedforward norms
    tied_by_default: bool     # transformers' default of tie_word_embeddings
    branch_ends: tuple        # parameters that end a residual branch (scaled by residual_scale)


LLAMA = Family(qkv_bias=False, gemma_norms=False, tied_by_default=False,
               branch_ends=("o_proj", "down_proj"))
FAMILIES = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": Family(qkv_bias=True, gemma_norms=False, tied_by_default=False,
                               branch_ends=("o_proj", "down_proj")),
    # Gemma-2 normalizes each branch's output (post_*_layernorm) before the residual add, so
    # those norms, not the projections, set the branch's scale.
    "Gemma2ForCausalLM": Family(qkv_bias=False, gemma_norms=True, tied_by_default=True,
                                branch_ends=("post_attention_layernorm",
                                             "post_feedforward_layernorm")),
}


def family_of(config: dict) -> Family:
    architectures = config.get("architectures") or []
    known = [a for a in architectures if a in FAMILIES]
    if not known:
        raise ValueError(f"architectures {architectures} are not supported; supported: "
                         f"{', '.join(FAMILIES)}")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ValueError("attention_bias / mlp_bias set in the config is not supported; "
                         "supported: each architecture's own bias layout (Qwen2: q/k/v)")
    return FAMILIES[known[0]]


@dataclass(frozen=True)
class Init:
    kind: str      # "normal": N(0, value^2); "fill": every element = value
    value: float


def initial_value(name: str, shape: tuple, family: Family, residual_scale: float) -> Init:
    """How the tensor `name` of `shape` is drawn. Works on Hugging Face names and on vLLM's
    fused ones (qkv_proj, gate_up_proj): both keep the (out, in) layout and the words
    "norm", "o_proj", "down_proj"."""
    ends_branch = any(part in name for part in family.branch_ends)
    if "norm" in name:
        gain = residual_scale if ends_branch else 1.0
        return Init("fill", gain - 1.0 if family.gemma_norms else gain)
    if len(shape) == 1:
        return Init("normal", BIAS_STD)
    return Init("normal", shape[-1] ** -0.5 * (residual_scale if ends_branch else 1.0))


def name_seed(name: str, seed: int) -> int:
    return seed + zlib.crc32(name.encode())


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Hugging Face parameter name -> full (unsharded) shape, in checkpoint order."""
    family = family_of(config)
    hidden = config["hidden_size"]
    num_heads, num_kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // num_heads
    intermediate, vocab = config["intermediate_size"], config["vocab_size"]
    layer_shapes = {
        "self_attn.q_proj.weight": (num_heads * head_dim, hidden),
        "self_attn.k_proj.weight": (num_kv_heads * head_dim, hidden),
        "self_attn.v_proj.weight": (num_kv_heads * head_dim, hidden),
        "self_attn.o_proj.weight": (hidden, num_heads * head_dim),
        "mlp.gate_proj.weight": (intermediate, hidden),
        "mlp.up_proj.weight": (intermediate, hidden),
        "mlp.down_proj.weight": (hidden, intermediate),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
    }
    if family.qkv_bias:
        layer_shapes.update({
            "self_attn.q_proj.bias": (num_heads * head_dim,),
            "self_attn.k_proj.bias": (num_kv_heads * head_dim,),
            "self_attn.v_proj.bias": (num_kv_heads * head_dim,)})
    if family.gemma_norms:
        layer_shapes.update({"pre_feedforward_layernorm.weight": (hidden,),
                             "post_feedforward_layernorm.weight": (hidden,)})
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for layer in range(config["num_hidden_layers"]):
        shapes.update({f"model.layers.{layer}.{suffix}": shape
                       for suffix, shape in layer_shapes.items()})
    shapes["model.norm.weight"] = (hidden,)
    if not config.get("tie_word_embeddings", family.tied_by_default):
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def draw(name: str, shape: tuple, init: Init, seed: int, device, dtype):
    """The tensor, drawn in float32 on `device` (the same seed gives different numbers on
    CPU and CUDA), returned in `dtype` on the CPU."""
    import torch

    if init.kind == "fill":
        values = torch.full(shape, init.value, dtype=torch.float32, device=device)
    else:
        generator = torch.Generator(device=device)
        generator.manual_seed(name_seed(name, seed))
        values = torch.randn(shape, generator=generator, dtype=torch.float32, device=device)
        values *= init.value
    return values.to(dtype).cpu()


def plan_shards(shapes: dict, bytes_per_element: int, max_shard_bytes: int) -> list[list]:
    """Tensor names grouped, in order, into files of at most max_shard_bytes (a larger
    tensor gets a file of its own)."""
    shards, current, current_bytes = [], [], 0
    for name, shape in shapes.items():
        size = bytes_per_element
        for extent in shape:
            size *= extent
        if current and current_bytes + size > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(name)
        current_bytes += size
    if current:
        shards.append(current)
    return shards


def checkpoint_config(config_dir: Path, overrides: dict, dtype_name: str) -> dict:
    config = json.loads((Path(config_dir) / "config.json").read_text())
    config.update(overrides)
    config["torch_dtype"] = dtype_name
    return config


def write_checkpoint(config_dir, out_dir, overrides: dict | None = None, seed: int = 0,
                     residual_scale: float = 1.0, dtype_name: str = "bfloat16",
                     device: str = "cpu", max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                     log=print) -> Path:
    """Write config.json and the safetensors file(s) (+ index when sharded) to out_dir;
    returns out_dir. A checkpoint already there with the same stamp is reused."""
    import torch

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16,
              "float32": torch.float32}
    if dtype_name not in dtypes:
        raise ValueError(f"dtype {dtype_name} is not supported; supported: "
                         f"{', '.join(dtypes)}")
    dtype = dtypes[dtype_name]
    config = checkpoint_config(config_dir, overrides or {}, dtype_name)
    family = family_of(config)
    shapes = tensor_shapes(config)
    out_dir = Path(out_dir)
    stamp = {"source": str(Path(config_dir).resolve()), "config": config, "seed": seed,
             "residual_scale": residual_scale, "device_type": torch.device(device).type,
             "max_shard_bytes": max_shard_bytes}
    from safetensors.torch import save_file

    stamp_path = out_dir / STAMP_NAME
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        log(f"random checkpoint: reusing {out_dir}")
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [stamp_path, *out_dir.glob("*.safetensors"),
                  out_dir / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)

    shards = plan_shards(shapes, dtype.itemsize, max_shard_bytes)
    file_names = (["model.safetensors"] if len(shards) == 1 else
                  [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                   for i in range(len(shards))])
    total_bytes, weight_map, start = 0, {}, time.perf_counter()
    for file_name, names in zip(file_names, shards):
        tensors = {name: draw(name, shapes[name],
                              initial_value(name, shapes[name], family, residual_scale),
                              seed, device, dtype)
                   for name in names}
        save_file(tensors, str(out_dir / file_name), metadata={"format": "pt"})
        shard_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        total_bytes += shard_bytes
        weight_map.update(dict.fromkeys(names, file_name))
        log(f"random checkpoint: {file_name}: {len(names)} tensors, "
            f"{shard_bytes / 2**30:.2f} GiB ({time.perf_counter() - start:.0f} s)")
    if len(shards) > 1:
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=1))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    stamp_path.write_text(json.dumps(stamp))
    return out_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config_dir", help="folder with the config.json to follow")
    parser.add_argument("out_dir")
    parser.add_argument("--overrides", default="{}",
                        help='JSON object merged into the config, e.g. '
                             '\'{"num_hidden_layers": 8}\'')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--residual-scale", type=float, default=1.0)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda",
                        help="where to draw (cuda is fast; falls back to cpu without one)")
    args = parser.parse_args()
    import torch

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("random checkpoint: no CUDA device, drawing on the CPU", flush=True)
        device = "cpu"
    write_checkpoint(args.config_dir, args.out_dir, json.loads(args.overrides), args.seed,
                     args.residual_scale, args.dtype, device,
                     log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
