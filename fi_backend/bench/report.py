"""Results of fi-bench: the JSON document, its schema, markdown tables and PNG plots.

Results document (one per command and output folder, `<out>/<kind>.json`):

    {
      "schema": "fi-bench-results/1",
      "kind": "e2e" | "serve" | "kernels",
      "created_utc": "2026-11-27T10:00:00Z",
      "host": {"gpu", "vllm", "torch", "flashinfer", "fi_backend_commit"},   # strings or null
      "settings": {...},                         # the command's options, as run
      "runs": [...]                              # one per (model, backend) or kernel case
    }

e2e run: {"model", "backend", "status": "ok"|"skipped"|"failed", "reason": str|null,
          "engine_init_s": seconds for LLM(...) incl. torch.compile, CUDA graphs and JIT | null,
          "workloads": [{"workload", "num_requests", "prompt_len", "shared_prefix_len",
                         "output_len", "warmup_s", "repeats", "timer", "output_tokens",
                         "duration_s", "output_tokens_per_s",
                         "ttft_ms": LAT, "itl_ms": LAT, "tpot_ms": LAT,
                         "vs_ours": {"itl_mean", "ttft_mean", "output_tokens_per_s"} | null}]}
serve run: {"model", "backend", "status", "reason", "server_start_s",
            "workloads": [{"workload", "num_prompts", "prompt_len", "shared_prefix_len",
                           "output_len", "rates": [{"request_rate": req/s | null (= all at once),
                           "completed", "duration_s", "output_tokens_per_s",
                           "ttft_ms": LAT, "itl_ms": LAT, "tpot_ms": LAT}]}]}
kernels run: {"case", "group", "backend", "status", "reason", "time_us": float|null,
              "fraction_of_ceiling": float|null (decode: of the copy rate, prefill: of the
              matmul rate), "params": {"tflops"?}}; the kernels document also has
              "ceilings": {"copy_gbs", "matmul_tflops", "device", "sms"}.
LAT = {"mean", "p50", "p99"} in milliseconds (null when nothing was measured).
A backend that could not run has status "skipped" or "failed" and a reason: never a zero.
`vs_ours` = this backend's value ÷ ours (ITL 1.20 means this backend is 20 % slower than ours).
"""

import datetime
import json
import math
from pathlib import Path

from .host import BACKEND_LABELS, OURS

SCHEMA_ID = "fi-bench-results/1"

_NUM = ["number", "null"]
_LATENCY = {"type": "object", "required": ["mean", "p50", "p99"],
            "properties": {k: {"type": _NUM} for k in ("mean", "p50", "p99")}}
_STATUS = {"type": "string", "enum": ["ok", "skipped", "failed"]}
_RUN_COMMON = {"status": _STATUS, "reason": {"type": ["string", "null"]},
               "backend": {"type": "string"}}
_E2E_WORKLOAD = {
    "type": "object",
    "required": ["workload", "num_requests", "prompt_len", "output_len", "output_tokens_per_s",
                 "ttft_ms", "itl_ms", "warmup_s"],
    "properties": {
        "workload": {"type": "string"}, "num_requests": {"type": "integer"},
        "prompt_len": {"type": "integer"}, "shared_prefix_len": {"type": "integer"},
        "output_len": {"type": "integer"}, "warmup_s": {"type": _NUM},
        "output_tokens_per_s": {"type": _NUM}, "duration_s": {"type": _NUM},
        "ttft_ms": _LATENCY, "itl_ms": _LATENCY, "tpot_ms": _LATENCY,
        "vs_ours": {"type": ["object", "null"]},
    },
}
_SERVE_RATE = {
    "type": "object",
    "required": ["request_rate", "ttft_ms", "itl_ms", "output_tokens_per_s"],
    "properties": {"request_rate": {"type": _NUM}, "completed": {"type": ["integer", "null"]},
                   "output_tokens_per_s": {"type": _NUM}, "ttft_ms": _LATENCY,
                   "itl_ms": _LATENCY, "tpot_ms": _LATENCY},
}
_RUN_SCHEMAS = {
    "e2e": {"type": "object", "required": ["model", "backend", "status", "reason", "workloads"],
            "properties": {**_RUN_COMMON, "model": {"type": "string"},
                           "engine_init_s": {"type": _NUM},
                           "workloads": {"type": "array", "items": _E2E_WORKLOAD}}},
    "serve": {"type": "object", "required": ["model", "backend", "status", "reason", "workloads"],
              "properties": {**_RUN_COMMON, "model": {"type": "string"},
                             "server_start_s": {"type": _NUM},
                             "workloads": {"type": "array", "items": {
                                 "type": "object", "required": ["workload", "rates"],
                                 "properties": {"workload": {"type": "string"},
                                                "rates": {"type": "array",
                                                          "items": _SERVE_RATE}}}}}},
    "kernels": {"type": "object", "required": ["case", "group", "backend", "status", "time_us"],
                "properties": {**_RUN_COMMON, "case": {"type": "string"},
                               "group": {"type": "string"}, "time_us": {"type": _NUM},
                               "fraction_of_ceiling": {"type": _NUM},
                               "params": {"type": "object"}}},
}


def results_schema(kind: str) -> dict:
    """JSON Schema (draft 2020-12 subset) of a results document of `kind`."""
    if kind not in _RUN_SCHEMAS:
        raise ValueError(f"results kind {kind!r} unknown; known: {', '.join(_RUN_SCHEMAS)}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["schema", "kind", "created_utc", "host", "settings", "runs"],
        "properties": {
            "schema": {"const": SCHEMA_ID}, "kind": {"const": kind},
            "created_utc": {"type": "string"}, "host": {"type": "object"},
            "settings": {"type": "object"},
            "runs": {"type": "array", "items": _RUN_SCHEMAS[kind]},
        },
    }


_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool,
               "null": type(None)}


def _matches_type(value, type_name: str) -> bool:
    if type_name in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return type_name == "number" or isinstance(value, int)
    return isinstance(value, _JSON_TYPES[type_name])


def _check(value, schema: dict, path: str) -> None:
    if "const" in schema and value != schema["const"]:
        raise ValueError(f"{path}: {value!r} should be {schema['const']!r}")
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_matches_type(value, t) for t in allowed):
            raise ValueError(f"{path}: {value!r} is not of type {' or '.join(allowed)}")
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise ValueError(f"{path}: required key {key!r} is missing")
        for key, sub_schema in schema.get("properties", {}).items():
            if key in value:
                _check(value[key], sub_schema, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]")


def validate_results(document: dict) -> None:
    """Raises ValueError naming the first place where `document` breaks its schema."""
    if not isinstance(document, dict) or document.get("kind") not in _RUN_SCHEMAS:
        kind = document.get("kind") if isinstance(document, dict) else None
        raise ValueError(f"$.kind: {kind!r} is not one of {list(_RUN_SCHEMAS)}")
    _check(document, results_schema(document["kind"]), "$")
    for i, run in enumerate(document["runs"]):
        if run["status"] != "ok" and not run.get("reason"):
            raise ValueError(f"$.runs[{i}]: status {run['status']!r} needs a reason")


def new_document(kind: str, host: dict, settings: dict) -> dict:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"schema": SCHEMA_ID, "kind": kind, "created_utc": now, "host": host,
            "settings": settings, "runs": []}


def _run_key(run: dict) -> tuple:
    return (run.get("model"), run.get("backend"), run.get("case"))


def merge_runs(previous_runs: list[dict], new_runs: list[dict]) -> list[dict]:
    """Runs of an earlier invocation in the same folder stay unless measured again, so a
    benchmark can be run one backend (or model) per command and still give one table."""
    replaced = {_run_key(r) for r in new_runs}
    return [r for r in previous_runs if _run_key(r) not in replaced] + new_runs


def add_ratios_to_ours(document: dict) -> None:
    """Fills `vs_ours` of every e2e workload whose model also has an ok run of ours."""
    ours = {(r["model"], w["workload"]): w for r in document["runs"]
            if r["backend"] == OURS and r["status"] == "ok" for w in r["workloads"]}
    for run in document["runs"]:
        for workload in run["workloads"]:
            base = ours.get((run["model"], workload["workload"]))
            workload["vs_ours"] = None if base is None else {
                "itl_mean": _ratio(workload["itl_ms"]["mean"], base["itl_ms"]["mean"]),
                "ttft_mean": _ratio(workload["ttft_ms"]["mean"], base["ttft_ms"]["mean"]),
                "output_tokens_per_s": _ratio(workload["output_tokens_per_s"],
                                              base["output_tokens_per_s"]),
            }


def _ratio(value, base):
    if value is None or base is None or base == 0:
        return None
    return value / base


def write_document(document: dict, path: Path) -> None:
    validate_results(document)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def load_document(path: Path) -> dict:
    document = json.loads(Path(path).read_text())
    validate_results(document)
    return document


# ----------------------------------------------------------------------------- tables

def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _backend_order(backend: str) -> int:
    return list(BACKEND_LABELS).index(backend) if backend in BACKEND_LABELS else len(BACKEND_LABELS)


def _label(backend: str) -> str:
    return BACKEND_LABELS.get(backend, backend)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _not_run_rows(runs: list[dict], width: int) -> list[list[str]]:
    """One row per run that is not ok: what stopped it (rows above hold what it finished)."""
    return [["all", _label(r["backend"]), f"{r['status']}: {r['reason']}"] + [""] * (width - 3)
            for r in runs if r["status"] != "ok"]


def e2e_markdown(document: dict) -> str:
    sections = []
    for model in dict.fromkeys(r["model"] for r in document["runs"]):
        runs = sorted((r for r in document["runs"] if r["model"] == model),
                      key=lambda r: _backend_order(r["backend"]))
        header = ["workload", "backend", "TTFT mean ms", "ITL mean ms", "ITL p50 ms",
                  "ITL p99 ms", "out tok/s", "ITL ÷ ours", "tok/s ÷ ours", "warm-up s"]
        rows = []
        workload_names = dict.fromkeys(w["workload"] for r in runs for w in r["workloads"])
        for name in workload_names:
            for run in runs:
                for w in (w for w in run["workloads"] if w["workload"] == name):
                    vs = w.get("vs_ours") or {}
                    rows.append([
                        f"{name} ({w['num_requests']}×{w['prompt_len']}→{w['output_len']})",
                        _label(run["backend"]), _fmt(w["ttft_ms"]["mean"], 1),
                        _fmt(w["itl_ms"]["mean"]), _fmt(w["itl_ms"]["p50"]),
                        _fmt(w["itl_ms"]["p99"]), _fmt(w["output_tokens_per_s"], 0),
                        _fmt(vs.get("itl_mean")), _fmt(vs.get("output_tokens_per_s")),
                        _fmt(w.get("warmup_s"), 1)])
        rows += _not_run_rows(runs, len(header))
        init = ", ".join(f"{_label(r['backend'])} {_fmt(r.get('engine_init_s'), 1)} s"
                         for r in runs if r["status"] == "ok")
        sections.append(f"### {model} (end to end, vLLM offline)\n\n" + _table(header, rows)
                        + f"\n\nEngine init (weights, torch.compile, CUDA graphs, JIT): {init or '–'}"
                        + "\n" + _targets_markdown(runs))
    return "\n\n".join(sections)


# Issue 7's targets: ours ÷ backend, mean inter-token latency.
E2E_TARGETS = {("FLASH_ATTN", None): 1.0, ("FLASH_ATTN", "long"): 0.95,
               ("FLASH_ATTN", "shared-prefix"): 0.95, ("TRITON_ATTN", "batch"): 0.8}


def _targets_markdown(runs: list[dict]) -> str:
    by_backend = {r["backend"]: {w["workload"]: w for w in r["workloads"]}
                  for r in runs if r["status"] == "ok"}
    if OURS not in by_backend:
        return ""
    rows = []
    for workload, ours in by_backend[OURS].items():
        for backend in ("FLASH_ATTN", "TRITON_ATTN"):
            target = E2E_TARGETS.get((backend, workload), E2E_TARGETS.get((backend, None)))
            theirs = by_backend.get(backend, {}).get(workload)
            if target is None or theirs is None:
                continue
            ratio = _ratio(ours["itl_ms"]["mean"], theirs["itl_ms"]["mean"])
            met = "–" if ratio is None else ("yes" if ratio <= target else "NO")
            rows.append([workload, f"ours ÷ {backend}", _fmt(ratio), f"≤ {target:.2f}", met])
    if not rows:
        return ""
    return "\nTargets (mean ITL, issue 7):\n\n" + _table(
        ["workload", "ratio", "value", "target", "met"], rows)


def serve_markdown(document: dict) -> str:
    sections = []
    for model in dict.fromkeys(r["model"] for r in document["runs"]):
        runs = sorted((r for r in document["runs"] if r["model"] == model),
                      key=lambda r: _backend_order(r["backend"]))
        header = ["workload", "rate req/s", "backend", "TTFT p50 ms", "TTFT p99 ms",
                  "ITL mean ms", "ITL p50 ms", "ITL p99 ms", "out tok/s", "ITL p50 ÷ ours"]
        ours_itl = {(w["workload"], rate["request_rate"]): rate["itl_ms"]["p50"]
                    for r in runs if r["backend"] == OURS and r["status"] == "ok"
                    for w in r["workloads"] for rate in w["rates"]}
        rows = []
        for run in runs:
            for w in run["workloads"]:
                for rate in w["rates"]:
                    rate_label = "inf" if rate["request_rate"] is None else _fmt(rate["request_rate"], 1)
                    rows.append([w["workload"], rate_label, _label(run["backend"]),
                                 _fmt(rate["ttft_ms"]["p50"], 1), _fmt(rate["ttft_ms"]["p99"], 1),
                                 _fmt(rate["itl_ms"]["mean"]), _fmt(rate["itl_ms"]["p50"]),
                                 _fmt(rate["itl_ms"]["p99"]), _fmt(rate["output_tokens_per_s"], 0),
                                 _fmt(_ratio(rate["itl_ms"]["p50"], ours_itl.get(
                                     (w["workload"], rate["request_rate"]))))])
        rows.sort(key=lambda row: (row[0], float("inf") if row[1] == "inf" else float(row[1])))
        rows += [[row[0], "", *row[1:-1]] for row in _not_run_rows(runs, len(header))]
        sections.append(f"### {model} (online serving, vllm bench serve)\n\n" + _table(header, rows))
    return "\n\n".join(sections)


def kernels_markdown(document: dict) -> str:
    sections = []
    for group in dict.fromkeys(r["group"] for r in document["runs"]):
        runs = [r for r in document["runs"] if r["group"] == group]
        backends = sorted(dict.fromkeys(r["backend"] for r in runs), key=_backend_order)
        cases = list(dict.fromkeys(r["case"] for r in runs))
        cell = {(r["case"], r["backend"]): r for r in runs}
        rows = []
        for case in cases:
            ours = cell.get((case, OURS))
            row = [case]
            for backend in backends:
                r = cell.get((case, backend))
                if r is None:
                    row.append("")
                elif r["status"] != "ok":
                    row.append(r["status"])
                else:
                    text = _fmt(r["time_us"], 1)
                    if r.get("fraction_of_ceiling") is not None:
                        text += f" ({r['fraction_of_ceiling']:.2f})"
                    if ours is not None and ours["status"] == "ok" and backend != OURS:
                        text += f" ×{_fmt(_ratio(r['time_us'], ours['time_us']))}"
                    row.append(text)
            rows.append(row)
        reasons = sorted({f"{_label(r['backend'])}: {r['reason']}" for r in runs
                          if r["status"] != "ok" and r.get("reason")})
        note = ("\n\nNot measured: " + "; ".join(reasons)) if reasons else ""
        sections.append(f"### kernels: {group} — µs (fraction of ceiling) ×(time ÷ ours)\n\n"
                        + _table(["case"] + [_label(b) for b in backends], rows) + note)
    return "\n\n".join(sections)


def markdown(document: dict) -> str:
    render = {"e2e": e2e_markdown, "serve": serve_markdown, "kernels": kernels_markdown}
    host = document["host"]
    head = (f"GPU: {host.get('gpu') or '–'}; vLLM {host.get('vllm') or '–'}, "
            f"torch {host.get('torch') or '–'}, flashinfer {host.get('flashinfer') or '–'}, "
            f"fi_backend {host.get('fi_backend_commit') or '–'}; {document['created_utc']}")
    ceilings = document.get("ceilings") or {}
    if ceilings.get("copy_gbs") and ceilings.get("matmul_tflops"):
        head += (f"\n\nCeilings on this card: device-to-device copy {ceilings['copy_gbs']:.0f} GB/s"
                 f" (read + write), bf16 matmul {ceilings['matmul_tflops']:.0f} TFLOP/s. Decode "
                 "fractions are of the copy rate, prefill fractions of the matmul rate.")
    return head + "\n\n" + render[document["kind"]](document) + "\n"


# ----------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def plot_e2e(document: dict, out_dir: Path) -> list[Path]:
    """Per model: mean ITL (bar, p50–p99 whisker) and output tokens/s per workload and backend."""
    plt = _pyplot()
    paths = []
    for model in dict.fromkeys(r["model"] for r in document["runs"]):
        # A failed run keeps the workloads it finished: they are measurements too.
        runs = sorted((r for r in document["runs"] if r["model"] == model and r["workloads"]),
                      key=lambda r: _backend_order(r["backend"]))
        if not runs:
            continue
        names = list(dict.fromkeys(w["workload"] for r in runs for w in r["workloads"]))
        shapes = {w["workload"]: f"{w['num_requests']}×{w['prompt_len']}→{w['output_len']}"
                  for r in runs for w in r["workloads"]}
        fig, (ax_itl, ax_tps) = plt.subplots(1, 2, figsize=(13, 4.8))
        width = 0.8 / len(runs)
        for i, run in enumerate(runs):
            by_name = {w["workload"]: w for w in run["workloads"]}
            xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(names))]
            itl = [_nan(by_name.get(n, {}).get("itl_ms", {}).get("mean")) for n in names]
            p50 = [_nan(by_name.get(n, {}).get("itl_ms", {}).get("p50")) for n in names]
            p99 = [_nan(by_name.get(n, {}).get("itl_ms", {}).get("p99")) for n in names]
            tps = [_nan(by_name.get(n, {}).get("output_tokens_per_s")) for n in names]
            ax_itl.bar(xs, itl, width, label=_label(run["backend"]))
            ax_itl.vlines(xs, p50, p99, colors="black", linewidth=1)
            ax_tps.bar(xs, tps, width, label=_label(run["backend"]))
        for ax, title in ((ax_itl, "inter-token latency, ms (bar mean, line p50–p99)"),
                          (ax_tps, "output tokens/s")):
            ax.set_xticks(range(len(names)), [f"{n}\n{shapes[n]}" for n in names])
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
        ax_itl.legend()
        fig.suptitle(f"{model}: vLLM offline, dummy weights ({document['host'].get('gpu') or '?'})")
        _note_not_run(fig, [r for r in document["runs"] if r["model"] == model])
        paths.append(_save_figure(plt, fig, out_dir / f"e2e_{_slug(model)}.png"))
    return paths


def plot_serve(document: dict, out_dir: Path) -> list[Path]:
    """Per model and workload: TTFT and ITL (p50 solid, p99 dashed) against request rate."""
    plt = _pyplot()
    paths = []
    runs_ok = [r for r in document["runs"] if r["status"] == "ok"]
    for model in dict.fromkeys(r["model"] for r in runs_ok):
        runs = sorted((r for r in runs_ok if r["model"] == model),
                      key=lambda r: _backend_order(r["backend"]))
        for name in dict.fromkeys(w["workload"] for r in runs for w in r["workloads"]):
            fig, (ax_ttft, ax_itl) = plt.subplots(1, 2, figsize=(12, 4.5))
            tick_labels = {}
            for run in runs:
                for w in (w for w in run["workloads"] if w["workload"] == name):
                    # "all at once" (rate null) is drawn past the largest finite rate.
                    finite = [r["request_rate"] for r in w["rates"] if r["request_rate"] is not None]
                    inf_x = 2 * max(finite) if finite else 1.0
                    points = sorted(((inf_x if r["request_rate"] is None else r["request_rate"]), r)
                                    for r in w["rates"])
                    xs = [x for x, _ in points]
                    tick_labels.update({x: "all" if r["request_rate"] is None else f"{x:g}"
                                        for x, r in points})
                    for ax, key in ((ax_ttft, "ttft_ms"), (ax_itl, "itl_ms")):
                        line, = ax.plot(xs, [_nan(r[key]["p50"]) for _, r in points], marker="o",
                                        label=f"{_label(run['backend'])} p50")
                        ax.plot(xs, [_nan(r[key]["p99"]) for _, r in points], linestyle="--",
                                color=line.get_color(), label=f"{_label(run['backend'])} p99")
            for ax, title in ((ax_ttft, "time to first token, ms"),
                              (ax_itl, "inter-token latency, ms")):
                ax.set_xscale("log")
                ax.set_xticks(sorted(tick_labels), [tick_labels[x] for x in sorted(tick_labels)])
                ax.minorticks_off()
                ax.set_xlabel("request rate, req/s ('all': every request at once)")
                ax.set_title(title)
                ax.grid(alpha=0.3)
            ax_itl.legend(fontsize=8)
            fig.suptitle(f"{model}, {name}: vllm serve ({document['host'].get('gpu') or '?'})")
            _note_not_run(fig, [r for r in document["runs"] if r["model"] == model])
            paths.append(_save_figure(plt, fig,
                                      out_dir / f"serve_{_slug(model)}_{_slug(name)}.png"))
    return paths


def plot_kernels(document: dict, out_dir: Path) -> list[Path]:
    """Per group: time per case (bars) for each backend, log scale."""
    plt = _pyplot()
    paths = []
    for group in dict.fromkeys(r["group"] for r in document["runs"]):
        runs = [r for r in document["runs"] if r["group"] == group and r["status"] == "ok"]
        if not runs:
            continue
        cases = list(dict.fromkeys(r["case"] for r in runs))
        backends = sorted(dict.fromkeys(r["backend"] for r in runs), key=_backend_order)
        cell = {(r["case"], r["backend"]): r["time_us"] for r in runs}
        fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(cases)), 4.5))
        width = 0.8 / len(backends)
        for i, backend in enumerate(backends):
            xs = [j + (i - (len(backends) - 1) / 2) * width for j in range(len(cases))]
            ax.bar(xs, [_nan(cell.get((c, backend))) for c in cases], width, label=_label(backend))
        ax.set_xticks(range(len(cases)), cases, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("µs")
        ax.set_title(f"kernels: {group} ({document['host'].get('gpu') or '?'})")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save_figure(plt, fig, out_dir / f"kernels_{_slug(group)}.png"))
    return paths


def _save_figure(plt, fig, path: Path) -> Path:
    """Lays out, writes (110 dpi) and closes `fig`; returns `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _note_not_run(fig, runs: list[dict]) -> None:
    """Backends without bars are named under the figure, so absence never reads as zero."""
    missing = [f"{_label(r['backend'])} {r['status']}" for r in runs if r["status"] != "ok"]
    if missing:
        fig.text(0.01, 0.005, "incomplete or not measured (see table): " + ", ".join(missing),
                 fontsize=8, color="dimgray")


def _nan(value):
    return float("nan") if value is None else value


def plot(document: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"e2e": plot_e2e, "serve": plot_serve, "kernels": plot_kernels}[document["kind"]](
        document, out_dir)


def publish(document: dict, out_dir: Path, stdout) -> list[Path]:
    """Validates and writes `<out>/<kind>.json`, `<out>/<kind>.md` and the plots; prints the
    tables. Returns the files written."""
    if document["kind"] == "e2e":
        add_ratios_to_ours(document)
    json_path = out_dir / f"{document['kind']}.json"
    write_document(document, json_path)
    text = markdown(document)
    md_path = out_dir / f"{document['kind']}.md"
    md_path.write_text(text)
    stdout.write(text)
    return [json_path, md_path] + plot(document, out_dir)
