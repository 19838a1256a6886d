"""The random checkpoint behind the GPU tensor-parallel check (tests/random_checkpoint.py),
and the GPU script's own logic (tests/e2e_vllm_compare.py), on the CPU.

The checkpoint is loaded by the real vllm 0.26 into vLLM's own model classes (Llama,
Mistral, Qwen2, Gemma-2 at tiny shapes, built on the CPU) with vLLM's safetensors loader,
whose strict check fails on any parameter the checkpoint does not fill; every loaded
parameter is then compared with the checkpoint tensors it must come from, at TP 1 and, in
two processes, at TP 2 (each rank's block of the same full tensors).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import e2e_vllm_compare
import random_checkpoint
from random_checkpoint import tensor_shapes, write_checkpoint

CONFIGS = Path(__file__).resolve().parent.parent / "fi_backend" / "vllm" / "configs"
needs_safetensors = pytest.mark.skipif(importlib.util.find_spec("safetensors") is None,
                                       reason="safetensors comes with vLLM (CI installs it)")
TINY_LLAMA = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=96, vocab_size=320, num_hidden_layers=2,
                  max_position_embeddings=512)
TINY = {  # head_dim 32: a size vLLM's CPU attention backend accepts
    "llama3_8b": TINY_LLAMA,
    "mistral_7b": dict(TINY_LLAMA, sliding_window=64),
    "qwen2_5_7b": dict(TINY_LLAMA, hidden_size=224, num_attention_heads=7,
                       num_key_value_heads=1, sliding_window=512),   # GQA 7 as Qwen2.5-7B
    "gemma2_9b": dict(TINY_LLAMA, hidden_size=64, head_dim=32, sliding_window=64),
                                                 # head_dim != hidden / heads, as Gemma-2-9B
}


def read_checkpoint(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as file:
            tensors.update({name: file.get_tensor(name) for name in file.keys()})
    return tensors


def write_tiny(config: str, out_dir: Path, **kwargs) -> Path:
    kwargs.setdefault("dtype_name", "float32")
    return write_checkpoint(CONFIGS / config, out_dir, TINY[config], log=lambda line: None,
                            **kwargs)


# --------------------------------------------------------------------------------------
# Loaded by vLLM's model classes


def use_vllm_cpu_platform() -> None:
    """vLLM's front end on its CPU platform where there is no GPU (before vLLM's config
    modules bind `current_platform`)."""
    import vllm.platforms

    if vllm.platforms.current_platform.device_type == "":
        from vllm.platforms.cpu import CpuPlatform

        vllm.platforms.current_platform = CpuPlatform()


def start_world(rank: int, world_size: int, init_file: Path) -> None:
    """The process group a vLLM worker sets up before it builds a model (gloo on the CPU)."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import parallel_state

    with set_current_vllm_config(VllmConfig()):
        parallel_state.init_distributed_environment(
            world_size=world_size, rank=rank, local_rank=rank, backend="gloo",
            distributed_init_method=f"file://{init_file}")
        parallel_state.initialize_model_parallel(world_size, 1)


@pytest.fixture(scope="module")
def vllm_cpu(tmp_path_factory):
    """vLLM on its CPU platform in a world of one process."""
    pytest.importorskip("vllm")  # guard only: CI installs vllm, so these tests run there
    use_vllm_cpu_platform()
    from vllm.distributed import parallel_state

    started = not parallel_state.model_parallel_is_initialized()
    if started:
        start_world(0, 1, tmp_path_factory.mktemp("dist") / "init")
    yield
    if started:
        parallel_state.destroy_model_parallel()
        parallel_state.destroy_distributed_environment()


def no_compiled_activations():
    """The activation layers bind vLLM's compiled op at construction on CPU and CUDA
    platforms; this CUDA build's op library needs a driver, and forward never runs here.
    Returns (module, attribute, stand-in platform) for the caller to patch."""
    import vllm.model_executor.layers.activation as activation
    from vllm.platforms.interface import UnspecifiedPlatform

    return activation, "current_platform", UnspecifiedPlatform()


def vllm_parameters(checkpoint: Path, tensor_parallel_size: int = 1) -> dict:
    """vLLM's model class for the checkpoint's config (this process's TP rank), filled by
    vLLM's safetensors loader (which raises on any parameter left unfilled); its
    parameters by name."""
    from vllm.config import set_current_vllm_config
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.model_executor.model_loader.utils import initialize_model

    config = EngineArgs(model=str(checkpoint), load_format="safetensors",
                        skip_tokenizer_init=True, max_model_len=256, dtype="float32",
                        tensor_parallel_size=tensor_parallel_size,
                        distributed_executor_backend="mp").create_engine_config()
    with set_current_vllm_config(config), torch.device("cpu"):
        model = initialize_model(vllm_config=config)
        get_model_loader(config.load_config).load_weights(model, config.model_config)
    return {name: p.detach() for name, p in model.named_parameters()}


def load_at_tp2_rank(rank: int, checkpoint: Path, init_file: Path, out_dir: Path) -> None:
    """One of two spawned processes: rank `rank` of a TP-2 model, saved to out_dir."""
    use_vllm_cpu_platform()
    start_world(rank, 2, init_file)
    module, attribute, stand_in = no_compiled_activations()
    setattr(module, attribute, stand_in)
    torch.save(vllm_parameters(checkpoint, tensor_parallel_size=2),
               out_dir / f"rank{rank}.pt")


FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
ROW_PARALLEL = ("o_proj", "down_proj")   # their input dim is split across TP ranks


def expected_from_checkpoint(vllm_name: str, checkpoint: dict, used: set, rank: int = 0,
                             world_size: int = 1) -> torch.Tensor:
    """What TP rank `rank` of `world_size` must hold in vLLM's parameter: the checkpoint
    tensors it comes from (several for vLLM's fused projections, in vLLM's order), each cut
    to the rank's block: rows for column-parallel layers and embeddings (whose vocabulary
    is a multiple of 64 here, so vLLM pads nothing), columns for row-parallel ones, norms
    whole."""
    def block(name: str) -> torch.Tensor:
        used.add(name)
        tensor = checkpoint[name]
        if "norm" in name:
            return tensor
        return tensor.chunk(world_size, -1 if name.split(".")[-2] in ROW_PARALLEL
                            else 0)[rank]

    for fused, parts in FUSED.items():
        if f".{fused}." in vllm_name:
            return torch.cat([block(vllm_name.replace(fused, part)) for part in parts])
    return block(vllm_name)


@needs_safetensors
@pytest.mark.parametrize("config,shard_bytes", [
    ("llama3_8b", 64 << 10),   # several files and an index
    ("mistral_7b", None), ("qwen2_5_7b", None), ("gemma2_9b", None)])
def test_vllm_loads_every_parameter_from_the_checkpoint(config, shard_bytes, tmp_path,
                                                        vllm_cpu, monkeypatch):
    extra = {"max_shard_bytes": shard_bytes} if shard_bytes else {}
    checkpoint_dir = write_tiny(config, tmp_path / "ckpt", **extra)
    checkpoint = read_checkpoint(checkpoint_dir)
    assert (checkpoint_dir / "model.safetensors.index.json").exists() == bool(shard_bytes)

    monkeypatch.setattr(*no_compiled_activations())
    parameters = vllm_parameters(checkpoint_dir)
    used = set()
    for name, parameter in parameters.items():
        expected = expected_from_checkpoint(name, checkpoint, used)
        assert parameter.shape == expected.shape, name
        assert torch.equal(parameter, expected), name
    assert used == set(checkpoint), "checkpoint tensors vLLM does not load"


@needs_safetensors
def test_each_tp2_rank_holds_its_block_of_the_full_tensors(tmp_path):
    """Why the TP check loads a checkpoint: at TP 2 each rank's slice of every weight is
    cut from the same full tensor, so TP 1 and TP 2 run one network. Two processes (gloo);
    Qwen2 for its q/k/v biases, GQA 7 and untied lm_head."""
    pytest.importorskip("vllm")
    import torch.multiprocessing

    overrides = dict(TINY["qwen2_5_7b"], hidden_size=448, num_attention_heads=14,
                     num_key_value_heads=2)   # 7 query heads and 1 KV head per rank
    checkpoint_dir = write_checkpoint(CONFIGS / "qwen2_5_7b", tmp_path / "ckpt", overrides,
                                      dtype_name="float32", log=lambda line: None)
    torch.multiprocessing.spawn(load_at_tp2_rank, nprocs=2,
                                args=(checkpoint_dir, tmp_path / "init", tmp_path))
    checkpoint = read_checkpoint(checkpoint_dir)
    for rank in range(2):
        parameters = torch.load(tmp_path / f"rank{rank}.pt")
        used = set()
        for name, parameter in parameters.items():
            expected = expected_from_checkpoint(name, checkpoint, used, rank, 2)
            assert parameter.shape == expected.shape, (rank, name)
            assert torch.equal(parameter, expected), (rank, name)
        assert used == set(checkpoint)


def test_tied_embeddings_follow_the_config(tmp_path):
    gemma = tensor_shapes(json.loads((CONFIGS / "gemma2_9b" / "config.json").read_text()))
    assert "lm_head.weight" not in gemma   # Gemma-2 ties by default (no key in the config)
    llama_config = json.loads((CONFIGS / "llama3_8b" / "config.json").read_text())
    assert tensor_shapes(llama_config)["lm_head.weight"] == (128256, 4096)
    assert "lm_head.weight" not in tensor_shapes(dict(llama_config, tie_word_embeddings=True))


def test_full_size_shapes_of_the_shipped_configs():
    shapes = {name: tensor_shapes(json.loads((CONFIGS / name / "config.json").read_text()))
              for name in ("llama3_8b", "qwen2_5_7b", "gemma2_9b")}
    assert shapes["llama3_8b"]["model.layers.31.self_attn.k_proj.weight"] == (1024, 4096)
    assert shapes["llama3_8b"]["model.layers.31.mlp.down_proj.weight"] == (4096, 14336)
    assert len(shapes["llama3_8b"]) == 1 + 32 * 9 + 2
    assert shapes["qwen2_5_7b"]["model.layers.0.self_attn.q_proj.bias"] == (3584,)
    assert shapes["qwen2_5_7b"]["model.layers.0.self_attn.v_proj.weight"] == (512, 3584)
    assert "model.layers.0.self_attn.o_proj.bias" not in shapes["qwen2_5_7b"]
    assert shapes["gemma2_9b"]["model.layers.41.self_attn.q_proj.weight"] == (4096, 3584)
    assert shapes["gemma2_9b"]["model.layers.41.self_attn.o_proj.weight"] == (3584, 4096)
    assert shapes["gemma2_9b"]["model.layers.0.pre_feedforward_layernorm.weight"] == (3584,)


# --------------------------------------------------------------------------------------
# The values


@needs_safetensors
def test_draws_are_seeded_per_tensor_name(tmp_path):
    one_layer = read_checkpoint(write_checkpoint(
        CONFIGS / "llama3_8b", tmp_path / "a", dict(TINY_LLAMA, num_hidden_layers=1),
        dtype_name="float32", log=lambda line: None))
    two_layers = read_checkpoint(write_tiny("llama3_8b", tmp_path / "b"))
    other_seed = read_checkpoint(write_tiny("llama3_8b", tmp_path / "c", seed=1))
    for name, tensor in one_layer.items():   # the same tensor, whatever else is drawn
        assert torch.equal(tensor, two_layers[name]), name
    q0, q1 = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(two_layers[q0], two_layers[q1])
    assert not torch.equal(two_layers[q0], other_seed[q0])


def std(tensor: torch.Tensor) -> float:
    return tensor.double().std().item()


@needs_safetensors
@pytest.mark.parametrize("residual_scale", [1.0, 0.5])
def test_weights_have_unit_variance_scale(tmp_path, residual_scale):
    """Large enough tensors that the sample std is within 1 % (relative error about
    1/sqrt(2 N), N >= 128k elements)."""
    config = dict(TINY_LLAMA, hidden_size=512, intermediate_size=1024, vocab_size=1024,
                  num_hidden_layers=1)
    weights = read_checkpoint(write_checkpoint(
        CONFIGS / "qwen2_5_7b", tmp_path, dict(config, num_attention_heads=4,
                                               num_key_value_heads=2),
        residual_scale=residual_scale, dtype_name="float32", log=lambda line: None))
    layer = "model.layers.0."
    fan_in_512, fan_in_1024 = 512 ** -0.5, 1024 ** -0.5
    expected_std = {
        "model.embed_tokens.weight": fan_in_512, "lm_head.weight": fan_in_512,
        layer + "self_attn.q_proj.weight": fan_in_512,
        layer + "self_attn.k_proj.weight": fan_in_512,
        layer + "mlp.up_proj.weight": fan_in_512,
        layer + "self_attn.o_proj.weight": residual_scale * fan_in_512,   # branch ends
        layer + "mlp.down_proj.weight": residual_scale * fan_in_1024,
    }
    for name, value in expected_std.items():
        assert std(weights[name]) == pytest.approx(value, rel=0.01), name
        assert abs(weights[name].double().mean().item()) < 0.01 * value, name
    assert std(weights[layer + "self_attn.q_proj.bias"]) == pytest.approx(0.1, rel=0.15)
    for norm in (layer + "input_layernorm.weight", layer + "post_attention_layernorm.weight",
                 "model.norm.weight"):
        assert torch.equal(weights[norm], torch.ones(512)), norm   # identity: x * w


@needs_safetensors
def test_gemma_norms_are_stored_minus_one(tmp_path):
    """Gemma's RMSNorm computes x * (1 + w): identity is w = 0; the post-branch norms end
    the residual branches and carry residual_scale."""
    weights = read_checkpoint(write_tiny("gemma2_9b", tmp_path, residual_scale=0.5))
    layer = "model.layers.1."
    for name in ("input_layernorm", "pre_feedforward_layernorm"):
        assert torch.equal(weights[layer + name + ".weight"], torch.zeros(64)), name
    assert torch.equal(weights["model.norm.weight"], torch.zeros(64))
    for name in ("post_attention_layernorm", "post_feedforward_layernorm"):
        assert torch.equal(weights[layer + name + ".weight"], torch.full((64,), -0.5)), name
    assert weights[layer + "self_attn.o_proj.weight"].shape == (64, 128)
    assert "lm_head.weight" not in weights


@needs_safetensors
def test_bfloat16_checkpoint_is_the_rounded_float32_draw(tmp_path):
    single = read_checkpoint(write_tiny("llama3_8b", tmp_path / "f32"))
    half = read_checkpoint(write_tiny("llama3_8b", tmp_path / "bf16", dtype_name="bfloat16"))
    name = "model.layers.0.mlp.gate_proj.weight"
    assert half[name].dtype == torch.bfloat16
    assert torch.equal(half[name], single[name].to(torch.bfloat16))
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["num_hidden_layers"] == 2


@needs_safetensors
def test_an_unchanged_checkpoint_is_reused_and_a_changed_one_rewritten(tmp_path):
    directory = write_tiny("llama3_8b", tmp_path)
    first = read_checkpoint(directory)
    stamp_time = (directory / random_checkpoint.STAMP_NAME).stat().st_mtime_ns
    lines = []
    write_checkpoint(CONFIGS / "llama3_8b", directory, TINY_LLAMA, dtype_name="float32",
                     log=lines.append)
    assert lines == [f"random checkpoint: reusing {directory}"]
    assert (directory / random_checkpoint.STAMP_NAME).stat().st_mtime_ns == stamp_time
    write_tiny("llama3_8b", directory, seed=3, max_shard_bytes=64 << 10)
    assert not (directory / "model.safetensors").exists()   # the old single file is gone
    rewritten = read_checkpoint(directory)
    assert set(rewritten) == set(first)
    assert not torch.equal(rewritten["lm_head.weight"], first["lm_head.weight"])


def test_unsupported_architecture_and_bias_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["PhiForCausalLM"]}))
    with pytest.raises(ValueError, match=r"\['PhiForCausalLM'\] are not supported; "
                                         r"supported: LlamaForCausalLM"):
        write_checkpoint(tmp_path, tmp_path / "out")
    llama = json.loads((CONFIGS / "llama3_8b" / "config.json").read_text())
    with pytest.raises(ValueError, match="attention_bias / mlp_bias"):
        tensor_shapes(dict(llama, mlp_bias=True))
    assert not (tmp_path / "out").exists()


@needs_safetensors
def test_command_line_writes_a_checkpoint_on_the_cpu(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(Path(random_checkpoint.__file__)), str(CONFIGS / "gemma2_9b"),
         str(tmp_path), "--overrides", json.dumps(TINY["gemma2_9b"]), "--device", "cpu",
         "--dtype", "bfloat16"], capture_output=True, text=True, check=True)
    assert "model.safetensors: 24 tensors" in completed.stdout
    tensors = read_checkpoint(tmp_path)
    assert len(tensors) == 1 + 2 * 11 + 1
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())


# --------------------------------------------------------------------------------------
# e2e_vllm_compare's logic


def run_result(greedy, topk, prompt_logprobs=((-1.0, -2.0),)):
    return {"setup": "test", "prompt_logprobs": [list(p) for p in prompt_logprobs],
            "greedy": greedy, "greedy_topk": topk}


def test_near_tie_rule_and_summary(capsys):
    args = e2e_vllm_compare.parse_args(["--gen-tokens", "3"])
    tie = {"7": -0.70, "8": -0.75, "9": -3.0}
    baseline = run_result([[1, 7, 5], [1, 7, 5], [1, 7, 5]],
                          [[{"1": -0.1}, tie, {"5": -0.1}]] * 3)
    far = {"7": -0.70, "9": -0.72, "8": -2.0}   # 8 is 1.3 nats below the top: no tie
    candidate = run_result([[1, 7, 5], [1, 8, 6], [1, 9, 6]],
                           [[{"1": -0.1}, tie, {"5": -0.1}],
                            [{"1": -0.1}, tie, {"6": -0.1}],
                            [{"1": -0.1}, far, {"6": -0.1}]],
                           prompt_logprobs=((-1.1, -2.05),))
    assert [e2e_vllm_compare.greedy_verdict(p, baseline, candidate, args)
            for p in range(3)] == ["exact", "near_tie", "diverged"]
    result = e2e_vllm_compare.compare("llama3_8b", "CUSTOM tp1", "CUSTOM tp2", baseline,
                                      candidate, args)
    assert result["max_logprob_diff"] == pytest.approx(0.1)
    assert result["mean_logprob_diff"] == pytest.approx(0.075)
    assert (result["greedy_equal"], result["greedy_near_tie"], result["greedy_diverged"]) \
        == (1, 1, 1)
    assert not result["passed"]   # 2/3 < 95 %
    assert "CUSTOM tp2 vs CUSTOM tp1" in capsys.readouterr().out


def test_tp_check_arguments():
    args = e2e_vllm_compare.parse_args(["--configs", "llama3_8b", "--tp-check"])
    assert (args.weights, args.num_layers, args.tp_size, args.tp_backend) == \
        ("checkpoint", e2e_vllm_compare.TP_CHECK_NUM_LAYERS, 2, "CUSTOM")
    assert e2e_vllm_compare.parse_args([]).weights == "redraw"
    for wrong in (["--tp-check", "--weights", "redraw"], ["--tp-check", "--tp-size", "1"],
                  ["--configs", "llama3_8b,gpt2"]):
        with pytest.raises(SystemExit):
            e2e_vllm_compare.parse_args(wrong)


def test_children_run_with_nvlink_multicast_off(monkeypatch, tmp_path):
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")
    monkeypatch.delenv("NVSHMEM_DISABLE_NVLS", raising=False)
    log = tmp_path / "child.log"
    status = e2e_vllm_compare.run_child(
        [sys.executable, "-c", "import os; print([os.environ[k] for k in ('NCCL_NVLS_ENABLE',"
         " 'TORCH_SYMM_MEM_DISABLE_MULTICAST', 'NVSHMEM_DISABLE_NVLS')])"], log, 60)
    assert status == 0
    assert log.read_text().strip() == "['0', '1', '1']"


def test_a_hung_child_is_killed_with_its_process_group(tmp_path):
    log = tmp_path / "child.log"
    status = e2e_vllm_compare.run_child(
        [sys.executable, "-c", "import subprocess, sys, time; worker = subprocess.Popen("
         "[sys.executable, '-c', 'import time; time.sleep(60)']); print(worker.pid, "
         "flush=True); time.sleep(60)"], log, 3)
    assert status is None
    worker_pid = int(log.read_text())
    with pytest.raises(ProcessLookupError):   # the grandchild (a TP worker) went too
        for _ in range(50):
            os.kill(worker_pid, 0)
            time.sleep(0.1)


def test_a_child_that_does_not_exit_after_its_results_is_killed_soon(tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(e2e_vllm_compare, "EXIT_GRACE_S", 1)
    done = tmp_path / "results.json"
    start = time.perf_counter()
    status = e2e_vllm_compare.run_child(
        [sys.executable, "-c", f"import time; open({str(done)!r}, 'w').write('{{}}'); "
         "time.sleep(60)"], tmp_path / "child.log", 50, done_path=done)
    assert status is None
    assert time.perf_counter() - start < 20


def fake_children(calls: list, results_for):
    """Stands in for run_child: records each command; engine jobs write results_for(job)."""
    def run_child(command, log_path, timeout_s, done_path=None):
        calls.append(command)
        if "--job" in command:
            job = e2e_vllm_compare.Job(**json.loads(command[command.index("--job") + 1]))
            Path(job.out_path).write_text(json.dumps(results_for(job)))
        log_path.write_text("random checkpoint: model.safetensors: 75 tensors\n")
        return 0
    return run_child


def test_tp_check_runs_tp1_and_tp2_on_one_checkpoint(tmp_path, monkeypatch, capsys):
    calls = []
    result = run_result([[1, 2, 3]], [[{"1": -0.1}, {"2": -0.1}, {"3": -0.1}]])
    monkeypatch.setattr(e2e_vllm_compare, "run_child", fake_children(calls, lambda job: result))
    out = tmp_path / "summary.json"
    status = e2e_vllm_compare.main(["--configs", "mistral_7b_swa", "--tp-check",
                                    "--checkpoint-dir", str(tmp_path / "ckpt"),
                                    "--save-dir", str(tmp_path / "runs"), "--out", str(out)])
    assert status == 0
    writer, tp1, tp2 = calls
    assert writer[1].endswith("random_checkpoint.py")
    assert json.loads(writer[writer.index("--overrides") + 1]) == \
        {"sliding_window": 256, "num_hidden_layers": 8}
    jobs = [e2e_vllm_compare.Job(**json.loads(c[c.index("--job") + 1])) for c in (tp1, tp2)]
    assert [(j.backend, j.tensor_parallel_size, j.load_format, j.hf_overrides) for j in jobs] \
        == [("CUSTOM", 1, "safetensors", {}), ("CUSTOM", 2, "safetensors", {})]
    assert jobs[0].model_dir == jobs[1].model_dir == str(tmp_path / "ckpt" /
                                                        "mistral_7b_swa-checkpoint")
    summary = json.loads(out.read_text())
    assert summary["mode"] == "tp-check" and summary["passed"]
    assert [(r["baseline"], r["candidate"], r["max_logprob_diff"], r["greedy_equal"])
            for r in summary["results"]] == [("CUSTOM tp1", "CUSTOM tp2", 0.0, 1)]
    assert "mistral_7b_swa: CUSTOM tp2 vs CUSTOM tp1 (test)" in capsys.readouterr().out


def test_a_failed_engine_run_fails_its_comparison(tmp_path, monkeypatch, capsys):
    """Without a GPU the engine process fails: the comparison is a FAIL with the log's
    tail, the summary JSON says so, and the exit status is 1."""
    def no_engine(command, log_path, timeout_s, done_path=None):
        log_path.write_text("line 1\nRuntimeError: no CUDA device\n")
        return 1

    monkeypatch.setattr(e2e_vllm_compare, "run_child", no_engine)
    stale = run_result([[1]], [[{"1": -0.1}]])   # an earlier run's result is not reused
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "llama3_8b-FLASH_ATTN-tp1.json").write_text(json.dumps(stale))
    out = tmp_path / "summary.json"
    status = e2e_vllm_compare.main(["--configs", "llama3_8b", "--save-dir",
                                    str(tmp_path / "runs"), "--out", str(out)])
    assert status == 1
    summary = json.loads(out.read_text())
    assert summary["mode"] == "backends" and not summary["passed"]
    [result] = summary["results"]
    assert (result["case"], result["baseline"], result["candidate"]) == \
        ("llama3_8b", "FLASH_ATTN", "CUSTOM")
    assert "no CUDA device" in result["error"]
    assert "llama3_8b: CUSTOM vs FLASH_ATTN | FAIL | baseline" in capsys.readouterr().out
