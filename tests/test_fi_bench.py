"""fi-bench on the CPU: command line, shipped model configs as vLLM sees them, timing maths,
results schema, tables and plots from recorded results, and the `vllm bench serve` wiring."""

import argparse
import copy
import io
import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fi_backend.bench import cli, report, serve
from fi_backend.bench.e2e import token_timing_summary
from fi_backend.bench.host import BACKENDS, OURS, engine_env, git_commit
from fi_backend.bench.progress import ProgressBar
from fi_backend.bench.workloads import WORKLOADS, Workload, shipped_models

DATA = Path(__file__).parent / "data"


def load_fixture(name: str) -> dict:
    return json.loads((DATA / name).read_text())


# ----------------------------------------------------------------------------- command line

def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_e2e_defaults_cover_every_workload_and_backend():
    args = parse("e2e")
    assert [w.name for w in args.workloads] == ["decode", "batch", "long", "shared-prefix"]
    assert args.backends == list(BACKENDS) and args.backends[0] == OURS
    assert not args.serve and args.repeats == 1 and args.out == Path("fi-bench-out")


def test_e2e_options_are_parsed_into_values():
    args = parse("e2e", "--backends", "ours,flash_attn", "--workloads", "long,shared-prefix",
                 "--repeats", "3", "--serve", "--rates", "1,4.5,inf", "--num-prompts", "40",
                 "--gpu-memory-utilization", "0.7", "--eager", "--cascade", "--out", "/tmp/x")
    assert args.backends == [OURS, "FLASH_ATTN"]
    assert [w.name for w in args.workloads] == ["long", "shared-prefix"]
    assert args.rates == [1.0, 4.5, None]
    assert (args.repeats, args.num_prompts, args.gpu_memory_utilization) == (3, 40, 0.7)
    assert args.eager and args.cascade and args.serve and args.out == Path("/tmp/x")
    assert not parse("e2e").cascade


def test_kernels_family_option():
    assert parse("kernels").family == "auto"
    assert parse("kernels", "--family", "sm90").family == "sm90"


@pytest.mark.parametrize("argv, message", [
    (["kernels", "--family", "sm100"], "invalid choice: 'sm100'"),
    (["e2e", "--backends", "FA2"], "backend(s) ['FA2'] unknown"),
    (["e2e", "--workloads", "prefill"], "workload(s) ['prefill'] unknown"),
    (["e2e", "--rates", "0"], "must be > 0"),
    (["e2e", "--rates", "fast"], "is not a number"),
    (["e2e", "--repeats", "0"], "must be >= 1"),
    (["e2e", "--gpu-memory-utilization", "1.5"], "must lie in [0.05, 0.98]"),
    (["e2e", "--models", "no-such-model"], "neither a shipped config"),
])
def test_bad_options_are_usage_errors_that_say_what_is_allowed(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_option_has_help_and_the_gpu_command_line_is_shown(capsys):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"fi-bench {name} {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit):
        parser.parse_args(["e2e", "--help"])
    help_text = capsys.readouterr().out
    assert "fi-bench e2e --out bench-out" in help_text and "setup.sh" in help_text
    for workload in WORKLOADS.values():
        assert workload.name in help_text


@pytest.mark.parametrize("command", ["e2e", "kernels"])
def test_without_a_gpu_one_line_and_a_nonzero_status(command, monkeypatch, capsys):
    monkeypatch.setattr(cli, "cuda_device_name", lambda: None)
    assert cli.main([command]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "no CUDA GPU" in captured.err


# ----------------------------------------------------------------------------- model configs

EXPECTED_MODEL_SHAPES = {
    # loose name -> (query heads, kv heads, head dim, extra attributes that must hold)
    "llama": (32, 8, 128, {}),
    "qwen": (28, 4, 128, {}),
    "mistral": (32, 8, 128, {"sliding_window": lambda v: v is not None and v > 0}),
    "gemma": (16, 8, 256, {"attn_logit_softcapping": lambda v: v is not None and v > 0}),
}


def _shipped_model_for(family: str):
    matches = [(n, d) for n, d in shipped_models().items() if family in n.lower()]
    if not matches:
        pytest.fail(f"no {family} config shipped in fi_backend/vllm/configs")
    return matches[0]


@pytest.mark.parametrize("family", sorted(EXPECTED_MODEL_SHAPES))
def test_shipped_config_loads_as_a_vllm_model_config(family):
    vllm_config = pytest.importorskip("vllm.config")  # vLLM is a dependency; CI installs it
    name, folder = _shipped_model_for(family)
    q_heads, kv_heads, head_dim, extra = EXPECTED_MODEL_SHAPES[family]
    model_config = vllm_config.ModelConfig(model=str(folder), tokenizer=str(folder),
                                           skip_tokenizer_init=True, dtype="bfloat16",
                                           max_model_len=4096)
    assert model_config.get_head_size() == head_dim
    assert model_config.get_total_num_kv_heads() == kv_heads
    assert model_config.hf_text_config.num_attention_heads == q_heads
    for attribute, holds in extra.items():
        value = getattr(model_config.hf_text_config, attribute, None)
        assert holds(value), f"{name}: {attribute} = {value!r}"


def test_default_model_is_shipped():
    assert parse("e2e").models[0][0] in shipped_models()


# ----------------------------------------------------------------------------- timing maths

def test_token_timing_summary_from_engine_timestamps():
    # Request a: tokens at 1.0, 1.1, 1.3 s; request b: first token at 2.0, then two tokens
    # in one output at 2.4 (gap shared evenly: 0.2 s each).
    events = {"a": [(1.0, 1), (1.1, 1), (1.3, 1)], "b": [(2.0, 1), (2.4, 2)]}
    summary = token_timing_summary(events, {"a": 0.5, "b": 1.5}, duration_s=3.0)
    gaps_ms = [100.0, 200.0, 200.0, 200.0]
    assert summary["output_tokens"] == 6 and summary["num_requests"] == 2
    assert summary["output_tokens_per_s"] == pytest.approx(2.0)
    assert summary["itl_ms"]["mean"] == pytest.approx(sum(gaps_ms) / 4)
    assert summary["itl_ms"]["p50"] == pytest.approx(200.0)
    assert summary["ttft_ms"]["mean"] == pytest.approx(1000.0)
    assert summary["tpot_ms"]["mean"] == pytest.approx((150.0 + 200.0) / 2)


def test_workload_prompts_share_exactly_the_prefix():
    workload = Workload("t", num_requests=3, unique_input_len=5, output_len=2, shared_prefix_len=4)
    prompts = workload.prompt_token_ids(vocab_size=50, seed=1)
    assert [len(p) for p in prompts] == [9, 9, 9]
    assert prompts[0][:4] == prompts[1][:4] == prompts[2][:4]
    assert prompts[0][4:] != prompts[1][4:]
    assert all(0 <= t < 50 for p in prompts for t in p)
    assert workload.prompt_token_ids(50, seed=1) == prompts
    assert workload.prompt_token_ids(50, seed=2) != prompts
    assert WORKLOADS["shared-prefix"].max_seq_len == 8192 + 256 + 128


def test_long_workloads_raise_a_short_trained_length_and_nothing_else(tmp_path):
    from fi_backend.bench.workloads import hf_overrides_for

    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 8192,
                                                       "vocab_size": 10}))
    assert hf_overrides_for(tmp_path, WORKLOADS["long"].max_seq_len) == {
        "max_position_embeddings": 32768 + 128}
    assert hf_overrides_for(tmp_path, WORKLOADS["decode"].max_seq_len) == {}


# ----------------------------------------------------------------------------- results

# *_h100_*.json were recorded by `fi-bench e2e` on an H100 (FLASH_ATTN / TRITON_ATTN, ours not
# installed there; the partial one has the long-context crash that hf_overrides_for fixed);
# *_synthetic.json are written by hand so that ratios and targets have known values.
RECORDED = ["fi_bench_e2e_h100_partial.json", "fi_bench_e2e_h100_long_shared.json"]


@pytest.mark.parametrize("fixture", ["fi_bench_e2e_synthetic.json",
                                     "fi_bench_serve_synthetic.json", *RECORDED])
def test_results_match_the_schema(fixture):
    report.validate_results(load_fixture(fixture))


def test_recorded_h100_run_reads_as_measured():
    document = load_fixture("fi_bench_e2e_h100_partial.json")
    flash = next(r for r in document["runs"] if r["backend"] == "FLASH_ATTN")
    decode = next(w for w in flash["workloads"] if w["workload"] == "decode")
    # ../shared/ANCHORS.md: FLASH_ATTN decode-heavy 12.2 ms mean ITL, 3990 tok/s.
    assert decode["itl_ms"]["mean"] == pytest.approx(12.2, rel=0.05)
    assert decode["output_tokens_per_s"] == pytest.approx(3990, rel=0.05)
    assert decode["timer"] == "vllm-request-metrics"
    text = report.markdown(document)
    assert "| all | ours | skipped: fi_backend is not installed as a vLLM plugin" in text
    assert "| all | FLASH_ATTN (FA3) | failed: (EngineCore" in text


@pytest.mark.parametrize("break_it, message", [
    (lambda d: d.pop("host"), "required key 'host'"),
    (lambda d: d["runs"][0].update(status="zero"), "is not one of"),
    (lambda d: d["runs"][2].update(reason=None), "needs a reason"),
    (lambda d: d["runs"][0]["workloads"][0]["itl_ms"].update(p99="fast"), "itl_ms.p99"),
    (lambda d: d["runs"][0]["workloads"][0].update(num_requests=6.5), "not of type integer"),
    (lambda d: d.update(schema="fi-bench-results/0"), "should be"),
])
def test_schema_violations_are_named(break_it, message):
    document = load_fixture("fi_bench_e2e_synthetic.json")
    break_it(document)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        report.validate_results(document)


def test_ratios_to_ours_and_targets_in_the_e2e_table():
    document = load_fixture("fi_bench_e2e_synthetic.json")
    report.add_ratios_to_ours(document)
    flash = next(r for r in document["runs"] if r["backend"] == "FLASH_ATTN")
    decode = flash["workloads"][0]
    assert decode["vs_ours"]["itl_mean"] == pytest.approx(1.25)
    assert decode["vs_ours"]["output_tokens_per_s"] == pytest.approx(0.8)
    text = report.markdown(document)
    assert "| decode (64×1024→256) | FLASH_ATTN (FA3) | 387.5 | 15.00 |" in text
    assert "| all | FLASHINFER | skipped: python module flashinfer is not importable |" in text
    # ours ÷ FLASH_ATTN = 0.80 everywhere, ours ÷ TRITON_ATTN on batch = 0.67.
    assert "| long | ours ÷ FLASH_ATTN | 0.80 | ≤ 0.95 | yes |" in text
    assert "| batch | ours ÷ TRITON_ATTN | 0.67 | ≤ 0.80 | yes |" in text


def test_merge_keeps_other_backends_and_replaces_remeasured_ones():
    runs = load_fixture("fi_bench_e2e_synthetic.json")["runs"]
    remeasured = copy.deepcopy(runs[1])
    remeasured["engine_init_s"] = 1.0
    merged = report.merge_runs(runs, [remeasured])
    assert [r["backend"] for r in merged] == ["CUSTOM", "FLASHINFER", "TRITON_ATTN", "FLASH_ATTN"]
    assert merged[-1]["engine_init_s"] == 1.0


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.mark.parametrize("fixture, expected_files", [
    ("fi_bench_e2e_synthetic.json", ["e2e_llama3_8b.png"]),
    *[(name, ["e2e_llama3_8b.png"]) for name in RECORDED],
    ("fi_bench_serve_synthetic.json", ["serve_llama3_8b_decode.png"]),
])
def test_plots_from_recorded_results(fixture, expected_files, tmp_path):
    pytest.importorskip("matplotlib")
    written = report.plot(load_fixture(fixture), tmp_path)
    assert sorted(p.name for p in written) == expected_files
    for path in written:
        width, height = _png_size(path)
        assert width > 600 and height > 300


def test_publish_writes_json_markdown_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    stdout = io.StringIO()
    written = report.publish(load_fixture("fi_bench_serve_synthetic.json"), tmp_path, stdout)
    assert {p.name for p in written} == {"serve.json", "serve.md", "serve_llama3_8b_decode.png"}
    assert report.load_document(tmp_path / "serve.json")["kind"] == "serve"
    assert stdout.getvalue() == (tmp_path / "serve.md").read_text()
    assert "| decode | inf | FLASH_ATTN (FA3) |" in stdout.getvalue()
    assert "| all |  | TRITON_ATTN | failed: vllm serve did not become healthy" in stdout.getvalue()


def test_report_command_redraws_from_json(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert cli.main(["report", str(DATA / "fi_bench_e2e_synthetic.json"), "--out", str(tmp_path)]) == 0
    assert "### llama3_8b (end to end, vLLM offline)" in capsys.readouterr().out
    assert (tmp_path / "e2e_llama3_8b.png").exists()


# ----------------------------------------------------------------------------- serving wiring

def test_bench_serve_result_is_parsed():
    parsed = serve.parse_bench_result(load_fixture("vllm_bench_serve_result.json"), 8.0)
    assert parsed["itl_ms"] == {"mean": 10.4, "p50": 10.0, "p99": 21.7}
    assert parsed["ttft_ms"]["p99"] == 150.3 and parsed["output_tokens_per_s"] == 1040.2
    assert parsed["completed"] == 128 and parsed["request_rate"] == 8.0


SERVE_SETTINGS = {"port": 18731, "dtype": "bfloat16", "gpu_memory_utilization": 0.85,
                  "enforce_eager": False, "seed": 0, "num_prompts": None}


def test_bench_command_is_accepted_by_vllm_bench_serve(tmp_path):
    bench_serve = pytest.importorskip("vllm.benchmarks.serve")
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    command = serve.bench_command(tmp_path, "m", WORKLOADS["shared-prefix"], 4.0, SERVE_SETTINGS,
                                  tmp_path, "r.json")
    parser = FlexibleArgumentParser()
    bench_serve.add_cli_args(parser)
    args = parser.parse_args(command[command.index("serve") + 1:])
    assert (args.random_prefix_len, args.random_input_len, args.random_output_len) == (8192, 256, 128)
    assert args.request_rate == 4.0 and args.num_prompts == 128 and args.ignore_eos
    assert args.percentile_metrics == "ttft,tpot,itl" and args.metric_percentiles == "50,99"
    # The served name, so that the server's /tokenize knows the model (prompt alignment).
    assert args.model == "m" and args.served_model_name == "m" and args.tokenizer == str(tmp_path)


def test_server_command_is_accepted_by_vllm_serve(tmp_path, monkeypatch):
    cli_args = pytest.importorskip("vllm.entrypoints.openai.cli_args")
    import vllm.platforms
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    # Building vLLM's parser instantiates its config defaults, which ask the platform for a
    # device type; a CPU host with a CUDA build of torch has none. The parse itself is generic.
    monkeypatch.setattr(vllm.platforms.current_platform, "device_type", "cuda")

    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    command = serve.server_command(tmp_path, "m", "FLASH_ATTN", [WORKLOADS["long"]], SERVE_SETTINGS)
    parser = cli_args.make_arg_parser(FlexibleArgumentParser())
    args = parser.parse_args(command[command.index("serve") + 2:])
    assert args.attention_backend == "FLASH_ATTN" and args.load_format == "dummy"
    assert args.max_model_len == 32768 + 128 and args.port == 18731
    assert args.hf_overrides == {"max_position_embeddings": 32768 + 128}
    assert args.disable_cascade_attn is not False  # vLLM's default: cascade off
    command = serve.server_command(tmp_path, "m", "FLASH_ATTN", [WORKLOADS["long"]],
                                   {**SERVE_SETTINGS, "cascade_attention": True})
    assert parser.parse_args(command[command.index("serve") + 2:]).disable_cascade_attn is False


@pytest.mark.parametrize("vocab_size, digits", [(1000, 2), (128256, 3), (256000, 4)])
def test_synthetic_tokenizer_round_trips_and_fits_vllms_character_bound(tmp_path, vocab_size,
                                                                        digits):
    transformers = pytest.importorskip("transformers")

    serve.write_synthetic_tokenizer(tmp_path, vocab_size=vocab_size)
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert serve.token_digits(vocab_size) == digits
    assert tokenizer.encode(serve.token_text(5, digits) + serve.token_text(vocab_size - 1, digits),
                            add_special_tokens=False) == [5, vocab_size - 1]
    ids = np.random.default_rng(0).integers(3, vocab_size, 1024).tolist()
    text = tokenizer.decode(ids)
    assert tokenizer.encode(text, add_special_tokens=False) == ids
    assert tokenizer.num_special_tokens_to_add() == 0
    # vLLM's server refuses, before tokenizing, a prompt of more characters than
    # max_chars_per_token (its longest vocabulary entry) times the tokens it may hold: the
    # HTTP 400 that `vllm bench serve` got with a space-separated word tokenizer.
    max_chars_per_token = max(len(token) for token in tokenizer.get_vocab())
    assert len(text) == digits * len(ids) <= max_chars_per_token * len(ids)


def test_synthetic_tokenizer_gives_random_prompts_of_the_exact_length(tmp_path):
    pytest.importorskip("vllm.benchmarks.datasets")
    from vllm.benchmarks.datasets import RandomDataset
    from vllm.tokenizers import get_tokenizer

    serve.write_synthetic_tokenizer(tmp_path, vocab_size=1000)
    tokenizer = get_tokenizer(str(tmp_path))
    requests = RandomDataset(random_seed=0).sample(tokenizer, num_requests=4, prefix_len=16,
                                                   input_len=48, output_len=8, range_ratio=0.0)
    encoded = [tokenizer.encode(r.prompt, add_special_tokens=False) for r in requests]
    assert [len(ids) for ids in encoded] == [64] * 4
    assert all(ids[:16] == encoded[0][:16] for ids in encoded)
    assert all(len(r.prompt) <= tokenizer.max_chars_per_token * 64 for r in requests)


# ----------------------------------------------------------------------------- progress bar

def test_progress_bar_counts_steps_on_a_plain_stream():
    stream = io.StringIO()
    bar = ProgressBar(4, "fi-bench e2e", stream=stream, width_chars=8)
    bar.advance("one")
    bar.advance("rest", steps=5)
    lines = stream.getvalue().splitlines()
    assert "[##------] 1/4" in lines[1] and lines[1].endswith("one")
    assert "[########] 4/4" in lines[2]


# ----------------------------------------------------------------------------- kernels

BENCH_KERNELS_LOG = """\
[bench] FlashInfer not available: No module named 'flashinfer'
[bench] fa3 failed on decode skewed 1 x 32768 + 63 x 512: RuntimeError: out of memory
"""


def test_bench_kernels_json_becomes_runs_with_reasons_not_zeros():
    from fi_backend.bench.kernels import runs_from_bench_json

    runs = runs_from_bench_json(load_fixture("bench_kernels_output.json"), BENCH_KERNELS_LOG)
    cell = {(r["case"], r["backend"]): r for r in runs}
    assert cell[("1 x 32768", OURS)]["time_us"] == 60.0
    assert cell[("1 x 32768", "FLASH_ATTN")]["fraction_of_ceiling"] == 0.65
    skipped = cell[("1 x 32768", "FLASHINFER")]
    assert (skipped["status"], skipped["time_us"]) == ("skipped", None)
    assert "No module named 'flashinfer'" in skipped["reason"]
    failed = cell[("skewed 1 x 32768 + 63 x 512", "FLASH_ATTN")]
    assert failed["status"] == "failed" and "out of memory" in failed["reason"]
    prefill = cell[("1 x 4096", OURS)]
    assert prefill["params"]["tflops"] == 458.0
    assert prefill["fraction_of_ceiling"] == pytest.approx(458.0 / 790.0)

    document = report.new_document("kernels", {"gpu": "H100"}, {})
    document["ceilings"] = {"copy_gbs": 3029.0, "matmul_tflops": 790.0}
    document["runs"] = runs
    report.validate_results(document)
    text = report.markdown(document)
    assert "| 1 x 32768 | 60.0 (0.74) | 67.7 (0.65) ×1.13 | skipped |" in text
    assert "copy 3029 GB/s" in text


def test_kernel_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from fi_backend.bench.kernels import runs_from_bench_json

    document = report.new_document("kernels", {"gpu": "H100"}, {})
    document["runs"] = runs_from_bench_json(load_fixture("bench_kernels_output.json"))
    written = report.plot(document, tmp_path)
    assert sorted(p.name for p in written) == ["kernels_decode.png", "kernels_prefill.png"]
    assert all(_png_size(p)[0] > 600 for p in written)


def test_kernels_command_runs_the_repository_benchmark():
    from fi_backend.bench import kernels

    assert kernels.BENCH_SCRIPT.is_file()
    command = kernels.bench_command(Path("/tmp/k.json"), quick=True, replays=7, no_compare=False)
    assert command[1:] == [str(kernels.BENCH_SCRIPT), "--out", "/tmp/k.json", "--family", "auto",
                           "--quick", "--replays", "7"]
    command = kernels.bench_command(Path("/tmp/k.json"), quick=False, replays=None,
                                    no_compare=True, family="sm90")
    assert command[1:] == [str(kernels.BENCH_SCRIPT), "--out", "/tmp/k.json", "--family", "sm90",
                           "--no-compare"]


def test_git_commit_names_the_commit_and_flags_a_tree_that_differs_from_it(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "kernel.cu").write_text("v1\n")
    git("add", "kernel.cu")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "v1")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "kernel.cu").write_text("v2\n")  # a work tree newer than its .git
    assert git_commit(tmp_path) == f"{head}-dirty"
    assert git_commit(tmp_path / "not-a-repo") is None


def test_git_commit_declared_in_the_environment_wins_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("FI_BENCH_COMMIT", "7e6a144")
    assert git_commit(tmp_path / "not-a-repo") == "7e6a144 (FI_BENCH_COMMIT)"
    monkeypatch.setenv("FI_BENCH_COMMIT", " ")
    assert git_commit(tmp_path / "not-a-repo") is None


def test_cascade_runs_engines_on_vllms_v1_runner(monkeypatch):
    # vLLM 0.26 cascades only on its V1 model runner; --cascade must select it for every
    # backend's engine, and leave vLLM's own choice alone otherwise.
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    assert engine_env({"cascade_attention": True})["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    assert engine_env({"cascade_attention": True})["FI_BACKEND_CASCADE"] == "1"
    assert "VLLM_USE_V2_MODEL_RUNNER" not in engine_env({"cascade_attention": False})
    assert engine_env({})["HF_HUB_OFFLINE"] == "1"
