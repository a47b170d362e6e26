#!/usr/bin/env python
"""Throughput benchmark: streamcap against the naive Hugging Face pipeline, on a video captioner
the size of GIT-base-VATEX with random weights (ViT-B/16 at 224 px, 6 frames per window, a 6-layer
768-wide decoder, a 30522-token vocabulary: the real model's FLOPs).

A synthetic stream of 224×224 RGB frames is cut into windows of 6 frames, by default on streamcap's
live grid (--stream live: window 2 s, stride 0.5 s, frames 0.4 s apart: 1, 1, 1, 2 new frames per
window), or 2 frames apart (--stream stride2: 4 of 6 frames shared); every caption is exactly 20
tokens (greedy, EOS suppressed). Each variant runs in its own process (so its peak RSS is its own),
one after another, with the same number of threads:

  naive         transformers: AutoProcessor + GitForCausalLM.generate on every window, all 6 frames
                re-encoded each time (what the usual Hugging Face video-captioning tutorials show)
  fp32          streamcap engine (ONNX Runtime) through caption_batch(keys=...): the frame cache
                means only the new frames of each window pass the vision encoder; the unified
                decoder graph (prefill and steps in one session: the weights once, pre-packed)
  int8          the same with the int8 (dynamically quantised) engine
  raw_ort       ONNX Runtime alone on the fp32 engine's graphs, the engine's techniques (unified
                decoder graph, IO binding, session options): the ceiling
  raw_ort_int8  the same on the int8 graphs

Usage:
  python tools/bench.py                          # full run: 3 rounds × 12 measured windows per variant
  python tools/bench.py --quick                  # tiny model, 4 windows: a CI smoke check (< 2 min)
  python tools/bench.py --json bench.json --markdown bench.md --plot docs/img/benchmark.png

The random checkpoint and its engines are built once into --cache (default
~/.cache/streamcap-bench/, one folder per model config; the full model's export takes minutes).
Method and results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCH_VERSION = 3  # bump when the way checkpoints or engines are built changes (invalidates the cache)
LIVE_WINDOW_S, LIVE_STRIDE_S = 2.0, 0.5  # streamcap's live defaults (window_s, stride_s)
STREAMS = {"live": None, "stride2": 2}  # --stream: frame stride between windows (None: the live grid)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VARIANTS = ("naive", "fp32", "int8", "raw_ort", "raw_ort_int8")
DESCRIPTIONS = {
    "naive": "transformers `generate`, every frame re-encoded",
    "fp32": "streamcap fp32 engine, frame cache, unified decoder graph",
    "int8": "streamcap int8 engine, frame cache",
    "raw_ort": "ONNX Runtime alone, fp32 graphs (ceiling)",
    "raw_ort_int8": "ONNX Runtime alone, int8 graphs (ceiling)",
}
TARGETS = {"fp32_vs_naive": 2.5, "int8_vs_naive": 5.0, "streamcap_vs_raw_ort_max": 1.2,
           "fp32_peak_rss_vs_naive_max": 1.0}
RATIOS = {"fp32_vs_naive": ("fp32", "naive"), "int8_vs_naive": ("int8", "naive"),
          "raw_ort_vs_fp32": ("raw_ort", "fp32"), "raw_ort_int8_vs_int8": ("raw_ort_int8", "int8")}
GOALS = {"fp32_vs_naive": (TARGETS["fp32_vs_naive"], ">="), "int8_vs_naive": (TARGETS["int8_vs_naive"], ">="),
         "raw_ort_vs_fp32": (TARGETS["streamcap_vs_raw_ort_max"], "<="),
         "raw_ort_int8_vs_int8": (TARGETS["streamcap_vs_raw_ort_max"], "<="),
         "fp32_peak_rss_vs_naive": (TARGETS["fp32_peak_rss_vs_naive_max"], "<=")}

# GIT-base(-VATEX) sizes; the quick model keeps the shape of the pipeline at a fraction of the cost
FULL_MODEL = {"name": "git-base", "frames": 6, "image_size": 224, "patch_size": 16,
              "vision": {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072},
              "text": {"hidden": 768, "layers": 6, "heads": 12, "intermediate": 3072, "vocab": 30522}}
QUICK_MODEL = {"name": "git-quick", "frames": 6, "image_size": 64, "patch_size": 16,
               "vision": {"hidden": 128, "layers": 2, "heads": 4, "intermediate": 512},
               "text": {"hidden": 128, "layers": 2, "heads": 4, "intermediate": 512, "vocab": 2000}}


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- model and engines (built once)

def model_key(model: dict) -> str:
    blob = json.dumps({"model": model, "version": BENCH_VERSION}, sort_keys=True).encode()
    return f"{model['name']}-{hashlib.sha256(blob).hexdigest()[:10]}"


def build_tokenizer(vocab_size: int):
    """A word-level fast tokenizer over dummy words (w0, w1, ...): the vocabulary size is what counts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(vocab_size - len(SPECIALS))]
    vocab = {t: i for i, t in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.add_special_tokens(SPECIALS)
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    return fast, vocab


def build_checkpoint(model: dict, folder: Path) -> None:
    """A random-weight GitForCausalLM saved like a real checkpoint (model, tokenizer.json,
    preprocessor_config.json), offline."""
    import torch
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM

    torch.manual_seed(0)
    v, t, size = model["vision"], model["text"], model["image_size"]
    tok, vocab = build_tokenizer(t["vocab"])
    cfg = GitConfig(
        vision_config={"hidden_size": v["hidden"], "intermediate_size": v["intermediate"],
                       "num_hidden_layers": v["layers"], "num_attention_heads": v["heads"],
                       "image_size": size, "patch_size": model["patch_size"]},
        vocab_size=len(vocab), hidden_size=t["hidden"], num_hidden_layers=t["layers"],
        num_attention_heads=t["heads"], intermediate_size=t["intermediate"], max_position_embeddings=1024,
        num_image_with_embedding=model["frames"], pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[CLS]"],
        eos_token_id=vocab["[SEP]"], tie_word_embeddings=False,
    )
    GitForCausalLM(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       do_convert_rgb=True).save_pretrained(folder)


def _stage(folder: Path, what: str, build) -> Path:
    """Build ``folder`` with ``build(folder)`` unless a previous run completed it."""
    done = folder / ".bench-complete"
    if done.is_file():
        log(f"  {what}: cached ({folder})")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log(f"  {what} ...")
    t0 = time.perf_counter()
    build(folder)
    done.write_text("ok\n")
    log(f"  {what}: done in {time.perf_counter() - t0:.0f} s")
    return folder


def prepare_assets(model: dict, cache_root: Path, max_new_tokens: int) -> dict[str, str]:
    """Random checkpoint + fp32 and int8 engines, built once per model config under ``cache_root``."""
    from streamcap.export import export_checkpoint

    root = cache_root.expanduser() / model_key(model)
    log(f"assets in {root}")
    ckpt = _stage(root / "checkpoint", "random GIT checkpoint", lambda f: build_checkpoint(model, f))
    engines = {}
    for precision in ("fp32", "int8"):
        engines[precision] = _stage(
            root / f"engine-{precision}", f"export {precision} engine (minutes for the full model)",
            lambda f, p=precision: export_checkpoint(ckpt, f, precision=p, frames=model["frames"],
                                                     max_new_tokens=max_new_tokens, name=f"bench-{p}"))
    return {"checkpoint": str(ckpt), "fp32": str(engines["fp32"]), "int8": str(engines["int8"])}


# ---------------------------------------------------------------- the stream

def stream_frames(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` random RGB uint8 frames, ``size``×``size`` (smooth noise: cheap and not constant)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    noise = rng.integers(0, 32, size=(n, size, size, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(coarse, math.ceil(size / 8), 1), math.ceil(size / 8), 2)[:, :size, :size]
    return list(np.clip(big.astype(np.int16) + noise - 16, 0, 255).astype(np.uint8))


def window_indices(n_windows: int, k: int, stride: int | None) -> list[list[int]]:
    """Frame indices of each window. ``stride`` frames apart (the old benchmark stream), or with
    ``stride=None`` the product's live default: streamcap.core.windowing's ``aligned`` sampling at
    window 2 s / stride 0.5 s / K frames 2/(K-1) s apart on the stream's grid. The stream's frames
    are that grid's points, so window w takes grid points n-K+1 .. n with n = floor((2 + 0.5 w) /
    0.4) = K-1 + floor(1.25 w) for K = 6: 1, 1, 1, 2 new frames per window, repeating."""
    if stride is not None:
        return [list(range(w * stride, w * stride + k)) for w in range(n_windows)]
    window_s, stride_s = LIVE_WINDOW_S, LIVE_STRIDE_S
    step_s = window_s / (k - 1)
    ends = [math.floor((window_s + w * stride_s) / step_s + 1e-9) for w in range(n_windows)]
    return [list(range(n - k + 1, n + 1)) for n in ends]


# ---------------------------------------------------------------- variants (each in its own process)

def naive_captioner(job: dict, frames: list[np.ndarray]):
    """The tutorial pipeline: processor → generate on the whole window → decode."""
    import torch
    from transformers import AutoProcessor, GitForCausalLM

    torch.set_num_threads(job["threads"])
    processor = AutoProcessor.from_pretrained(job["assets"]["checkpoint"])
    model = GitForCausalLM.from_pretrained(job["assets"]["checkpoint"]).eval()
    n_tok = job["tokens"]

    def caption(idx: list[int]) -> int:
        px = processor(images=[frames[i] for i in idx], return_tensors="pt").pixel_values.unsqueeze(0)
        with torch.inference_mode():
            out = model.generate(pixel_values=px, max_new_tokens=n_tok, min_new_tokens=n_tok, do_sample=False,
                                 num_beams=1)
        if out.shape[1] != n_tok + 1:
            raise RuntimeError(f"generate made {out.shape[1] - 1} tokens, expected {n_tok}")
        processor.batch_decode(out, skip_special_tokens=True)
        return len(idx)

    return caption


def streamcap_captioner(job: dict, frames: list[np.ndarray], precision: str):
    """streamcap's engine as the pipeline calls it: frames named by (stream, index) for the cache."""
    from streamcap.engine.base import load_engine

    engine = load_engine(job["assets"][precision], intra_op_threads=job["threads"])
    n_tok = job["tokens"]

    def caption(idx: list[int]) -> int:
        before = engine.vision_frames_encoded
        engine.caption_batch([[frames[i] for i in idx]], keys=[[("bench", i) for i in idx]],
                             max_new_tokens=n_tok, min_new_tokens=n_tok)
        return engine.vision_frames_encoded - before

    return caption


def raw_ort_captioner(job: dict, frames: list[np.ndarray], precision: str):
    """The same graphs on bare ONNX Runtime, no streamcap code: the ceiling for the engine. It uses
    the engine's techniques: the same session options (threads, bounded spin-waiting), the unified
    decoder graph (one session for the prefill and the steps; the prefill's cache bound as it is at
    every step, only the generated tokens' cache passed on), IO binding (the cache stays in ONNX
    Runtime's OrtValues, never copied to numpy), a feature dict for the frames."""
    import onnxruntime as ort

    from streamcap.engine.onnx import SPIN_WAIT_US

    folder = Path(job["assets"][precision])
    manifest = json.loads((folder / "engine.json").read_text())

    def session(graph: str):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = job["threads"]
        opts.log_severity_level = 3
        # the engine's spin-waiting: bounded to SPIN_WAIT_US (a number, not streamcap code)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        opts.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_WAIT_US))
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return ort.InferenceSession(str(folder / manifest["graphs"][graph]), opts, providers=["CPUExecutionProvider"])

    vision = session("vision_encoder")
    decoder = session("decoder_unified")
    outputs = [o.name for o in decoder.get_outputs()]
    kv = [n[len("present_"):] for n in outputs[1:]]  # key_0, value_0, ...
    dims = {i.name: i.shape for i in decoder.get_inputs()}[f"past_{kv[0]}"]
    empty = np.zeros((1, dims[1], 0, dims[3]), np.float32)
    pre = manifest["preprocessing"]
    mean = np.asarray(pre["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre["std"], np.float32).reshape(1, 3, 1, 1)
    pixels = (np.stack(frames).transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std  # before timing
    bos = np.array([[manifest["bos_token_id"]]], np.int64)
    feats: dict[int, np.ndarray] = {}
    n_tok = job["tokens"]

    def run(feed: dict) -> list:
        binding = decoder.io_binding()
        for name, value in feed.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")
        decoder.run_with_iobinding(binding)
        return binding.get_outputs()

    def caption(idx: list[int]) -> int:
        new = [i for i in idx if i not in feats]
        if new:
            for i, f in zip(new, vision.run(["features"], {"pixel_values": pixels[new]})[0]):
                feats[i] = f
        for i in [i for i in feats if i < idx[0]]:
            del feats[i]
        window = np.stack([feats[i] for i in idx])[None]
        out = run({"features": window, "input_ids": bos, **{f"past_{n}": empty for n in kv},
                   **{f"text_{n}": empty for n in kv}})
        token = out[0].numpy().argmax(-1).astype(np.int64).reshape(1, 1)
        prefix, text = out[1:], [empty] * len(kv)
        no_frames = np.zeros((1, 0, *window.shape[2:]), np.float32)
        for _ in range(n_tok - 1):
            res = run({"features": no_frames, "input_ids": token, **{f"past_{n}": c for n, c in zip(kv, prefix)},
                       **{f"text_{n}": c for n, c in zip(kv, text)}})
            text = res[1:]
            token = res[0].numpy().argmax(-1).astype(np.int64).reshape(1, 1)
        return len(new)

    return caption


def make_captioner(job: dict, frames: list[np.ndarray]):
    v = job["variant"]
    if v == "naive":
        return naive_captioner(job, frames)
    if v in ("fp32", "int8"):
        return streamcap_captioner(job, frames, v)
    return raw_ort_captioner(job, frames, "int8" if v == "raw_ort_int8" else "fp32")


def measure(caption, windows: list[list[int]], warmup: int) -> dict:
    """Warm up, then time each window; windows/s = measured windows / their total time."""
    for idx in windows[:warmup]:
        caption(idx)
    latencies, encoded = [], 0
    t0, c0 = time.perf_counter(), time.process_time()
    for idx in windows[warmup:]:
        t = time.perf_counter()
        encoded += caption(idx)
        latencies.append(time.perf_counter() - t)
    total_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    n = max(1, len(latencies))
    # process CPU (every thread of this variant's process): survives a noisy machine better than wall time
    return {"total_s": total_s, "latencies_s": latencies, "frames_encoded": encoded, "cpu_s": cpu_s,
            "round_s_per_window": [total_s / n], "round_cpu_s_per_window": [cpu_s / n]}


def peak_rss_mb() -> float:
    """This process's peak resident set size. VmHWM, not getrusage's ru_maxrss: Linux carries the
    parent's high-water mark across fork + exec into ru_maxrss, so every child would report at
    least the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(variant: str, job_path: Path, result_path: Path) -> None:
    job = {**json.loads(job_path.read_text()), "variant": variant}
    model = job["model"]
    windows = window_indices(job["windows"] + job["warmup"], model["frames"], job["stride"])
    frames = stream_frames(windows[-1][-1] + 1, model["image_size"])
    t0 = time.perf_counter()
    caption = make_captioner(job, frames)
    load_s = time.perf_counter() - t0
    result = measure(caption, windows, job["warmup"])
    result.update(variant=variant, load_s=load_s, peak_rss_mb=peak_rss_mb())
    result_path.write_text(json.dumps(result))


def run_variant(variant: str, job_path: Path, workdir: Path) -> dict:
    result_path = workdir / f"{variant}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", variant, "--job", str(job_path),
           "--result", str(result_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"variant {variant} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(result_path.read_text())


def merge_rounds(acc: dict | None, raw: dict) -> dict:
    """Pool one more round of a variant: windows and time add up, the peak is the highest."""
    if acc is None:
        return dict(raw)
    return {**acc, "total_s": acc["total_s"] + raw["total_s"], "latencies_s": acc["latencies_s"] + raw["latencies_s"],
            "frames_encoded": acc["frames_encoded"] + raw["frames_encoded"],
            "cpu_s": acc["cpu_s"] + raw["cpu_s"],
            "round_s_per_window": acc["round_s_per_window"] + raw["round_s_per_window"],
            "round_cpu_s_per_window": acc["round_cpu_s_per_window"] + raw["round_cpu_s_per_window"],
            "peak_rss_mb": max(acc["peak_rss_mb"], raw["peak_rss_mb"]), "load_s": min(acc["load_s"], raw["load_s"])}


def summarise(raw: dict) -> dict:
    lat = np.asarray(raw["latencies_s"]) * 1000
    n = len(lat)
    return {"windows": n, "windows_per_s": n / raw["total_s"], "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "peak_rss_mb": raw["peak_rss_mb"],
            "frames_encoded_per_window": raw["frames_encoded"] / n, "load_s": raw["load_s"],
            "cpu_ms_per_window": 1000 * raw["cpu_s"] / n,
            # the best round: the least disturbed by whatever else the machine ran
            "best_round_ms_per_window": 1000 * min(raw["round_s_per_window"]),
            "best_round_cpu_ms_per_window": 1000 * min(raw["round_cpu_s_per_window"])}


# ---------------------------------------------------------------- report

def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": usable_cores(),
            "ram_gib": _ram_gib(), "os": platform.platform(), "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            **{p: _version(p) for p in ("onnxruntime", "torch", "transformers", "numpy")}}


def build_report(results: dict[str, dict], job: dict) -> dict:
    config_keys = ("model", "windows", "warmup", "rounds", "stream", "stride", "tokens", "threads", "quick")
    report: dict = {"machine": machine_info(), "config": {k: job[k] for k in config_keys}, "targets": TARGETS,
                    "variants": results}
    for v, r in results.items():
        report[f"{v}_windows_per_s"] = r["windows_per_s"]
    for key, (a, b) in RATIOS.items():
        report[key] = (results[a]["windows_per_s"] / results[b]["windows_per_s"]
                       if a in results and b in results else None)
        # the same ratio in CPU per window (b's CPU / a's), and from each variant's best round
        report[f"{key}_cpu"] = (results[b]["cpu_ms_per_window"] / results[a]["cpu_ms_per_window"]
                                if a in results and b in results else None)
        report[f"{key}_best_round"] = (results[b]["best_round_ms_per_window"] / results[a]["best_round_ms_per_window"]
                                       if a in results and b in results else None)
    # memory: the fp32 engine's peak resident set against the naive pipeline's (lower is better)
    report["fp32_peak_rss_vs_naive"] = (results["fp32"]["peak_rss_mb"] / results["naive"]["peak_rss_mb"]
                                        if "fp32" in results and "naive" in results else None)
    report["targets_met"] = {key: (report[key] >= goal if op == ">=" else report[key] <= goal)
                             for key, (goal, op) in GOALS.items() if report[key] is not None}
    return report


def _stream_text(c: dict) -> str:
    if c.get("stream", "stride2") == "live" or c.get("stride") is None:
        return (f"`live` (window {LIVE_WINDOW_S:g} s, stride {LIVE_STRIDE_S:g} s, frames on the aligned grid: "
                f"1, 1, 1, 2 new frames per window)")
    return f"`stride{c['stride']}` (windows {c['stride']} frames apart)"


def markdown(report: dict) -> str:
    m, c = report["machine"], report["config"]
    mod = c["model"]
    lines = [
        (f"Machine: {m['cpu']}, {m['usable_cores']} usable cores (os.cpu_count {m['cpu_count']}), "
         f"{m['ram_gib']} GiB RAM, {m['os']}; Python {m['python']}, onnxruntime {m['onnxruntime']}, "
         f"torch {m['torch']}, transformers {m['transformers']}; load average at start {m['load_avg_1m']}."),
        "",
        (f"Model `{mod['name']}` (random weights): ViT {mod['vision']['layers']}×{mod['vision']['hidden']} at "
         f"{mod['image_size']} px / patch {mod['patch_size']}, {mod['frames']} frames per window, decoder "
         f"{mod['text']['layers']}×{mod['text']['hidden']}, vocabulary {mod['text']['vocab']}. Stream "
         f"{_stream_text(c)}, {c['tokens']} tokens per caption, {c['threads']} threads, {c['warmup']} warm-up + "
         f"{c['windows']} measured windows per variant and round, {c.get('rounds', 1)} round(s) with the variants in "
         f"turn (windows pooled)."),
        "",
        "| variant | what runs | windows/s | × naive | CPU ms / window | × naive (CPU) | best round ms / window "
        "| p50 ms | p95 ms | peak RSS MB | frames encoded / window |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    naive = report["variants"].get("naive")
    for v, r in report["variants"].items():
        x = f"{r['windows_per_s'] / naive['windows_per_s']:.2f}×" if naive else "–"
        cpu = r.get("cpu_ms_per_window")
        xc = f"{naive['cpu_ms_per_window'] / cpu:.2f}×" if naive and cpu and naive.get("cpu_ms_per_window") else "–"
        best = r.get("best_round_ms_per_window")
        lines.append(f"| {v} | {DESCRIPTIONS[v]} | {r['windows_per_s']:.3f} | {x} | "
                     f"{cpu:.0f} | {xc} | {best:.0f} | " if cpu is not None and best is not None else
                     f"| {v} | {DESCRIPTIONS[v]} | {r['windows_per_s']:.3f} | {x} | – | – | – | ")
        lines[-1] += (f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['peak_rss_mb']:.0f} | "
                      f"{r['frames_encoded_per_window']:.1f} |")
    lines += ["", "| target | wall (pooled) | CPU | best rounds | goal | met (wall) |", "|---|---:|---:|---:|---:|---|"]
    for k, met in report["targets_met"].items():
        goal, op = GOALS[k]
        cpu, best = report.get(f"{k}_cpu"), report.get(f"{k}_best_round")
        lines.append(f"| {k} | {report[k]:.2f}× | {'%.2f×' % cpu if cpu else '–'} | {'%.2f×' % best if best else '–'} | "
                     f"{op.replace('>=', '≥').replace('<=', '≤')} {goal:g}× | {'yes' if met else '**no**'} |")
    return "\n".join(lines) + "\n"


def _nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 × 10^n at least ``raw`` (axis ticks)."""
    base = 10 ** math.floor(math.log10(raw))
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw)


def plot(report: dict, out: Path, width: int = 900, height: int = 460) -> None:
    """Bar chart of windows/s per variant; targets drawn as dashed ticks on the streamcap bars."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 50, 70
    res = report["variants"]
    names = list(res)
    naive = res.get("naive", {}).get("windows_per_s")
    marks: dict[str, list[tuple[float, str]]] = {n: [] for n in names}
    if naive:
        for v, key in (("fp32", "fp32_vs_naive"), ("int8", "int8_vs_naive")):
            if v in marks:
                marks[v].append((TARGETS[key] * naive, f"target {TARGETS[key]:g}x naive"))
    for v, raw in (("fp32", "raw_ort"), ("int8", "raw_ort_int8")):
        if v in marks and raw in res:
            marks[v].append((res[raw]["windows_per_s"] / TARGETS["streamcap_vs_raw_ort_max"], "raw ORT / 1.2"))
    y_max = 1.15 * max([r["windows_per_s"] for r in res.values()] + [y for ms in marks.values() for y, _ in ms])

    def y_px(y: float) -> int:
        return int(height - bottom - y / y_max * (height - top - bottom))

    cv2.line(img, (left, height - bottom), (width - right, height - bottom), (120, 120, 120), 1)
    step = _nice_step(y_max / 5)
    for tick in np.arange(0, y_max, step):
        yy = y_px(tick)
        cv2.line(img, (left, yy), (width - right, yy), (232, 232, 232), 1)
        cv2.putText(img, f"{tick:g}", (10, yy + 4), font, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
    slot = (width - left - right) / len(names)
    colours = {"naive": (60, 60, 200), "fp32": (200, 120, 40), "int8": (40, 150, 40),
               "raw_ort": (150, 150, 150), "raw_ort_int8": (150, 150, 150)}
    for i, v in enumerate(names):
        x0, x1 = int(left + slot * (i + 0.2)), int(left + slot * (i + 0.8))
        wps = res[v]["windows_per_s"]
        cv2.rectangle(img, (x0, y_px(wps)), (x1, height - bottom), colours.get(v, (100, 100, 100)), -1)
        label = f"{wps:.2f}" + (f" ({wps / naive:.1f}x)" if naive and v != "naive" else "")
        # the value above the bar and above any target mark drawn over it
        top_px = min([y_px(wps)] + [y_px(y) - 16 for y, _ in marks[v]])
        cv2.putText(img, label, (x0, top_px - 6), font, 0.42, (30, 30, 30), 1, cv2.LINE_AA)
        cv2.putText(img, v, (x0, height - bottom + 20), font, 0.5, (40, 40, 40), 1, cv2.LINE_AA)
        for j, (y, text) in enumerate(marks[v]):
            yy = y_px(y)
            for xx in range(x0 - 6, x1 + 6, 10):
                cv2.line(img, (xx, yy), (min(xx + 6, x1 + 6), yy), (0, 0, 0), 2)
            text_y = yy + 14 if j == 0 else yy - 6  # first mark's label below its line, the second's above
            cv2.putText(img, text, (x0, text_y), font, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    m = report["machine"]
    cv2.putText(img, f"windows/s (higher is better) - {report['config']['model']['name']}, "
                     f"{report['config']['threads']} threads", (left, 22), font, 0.5, (30, 30, 30), 1, cv2.LINE_AA)
    cv2.putText(img, f"{m['cpu']}, {m['usable_cores']} cores; onnxruntime {m['onnxruntime']}, torch {m['torch']}",
                (left, 40), font, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), img)


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model and 4 windows (CI smoke check)")
    ap.add_argument("--windows", type=int, help="measured windows per variant (default 12; 4 with --quick)")
    ap.add_argument("--warmup", type=int, default=2, help="windows run before timing starts (default 2)")
    ap.add_argument("--rounds", type=int, help="run the variants in turn this many times and pool the windows, so "
                                               "slow drifts of a shared machine hit every variant alike "
                                               "(default 3; 1 with --quick)")
    ap.add_argument("--stream", choices=sorted(STREAMS), default="live",
                    help="live (default): the product's live grid (window 2 s, stride 0.5 s, 6 frames 0.4 s apart: "
                         "1, 1, 1, 2 new frames per window); stride2: windows 2 frames apart (4 of 6 shared)")
    ap.add_argument("--tokens", type=int, default=20, help="generated tokens per caption (default 20)")
    ap.add_argument("--threads", type=int, default=usable_cores(),
                    help="threads for torch and ONNX Runtime (default: all usable cores)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--cache", type=Path, default=Path("~/.cache/streamcap-bench"),
                    help="where the random checkpoint and engines are kept between runs")
    ap.add_argument("--json", type=Path, help="write the full report here")
    ap.add_argument("--markdown", type=Path, help="write the markdown tables here")
    ap.add_argument("--plot", type=Path, help="write the bar chart (PNG) here")
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: run one variant
    ap.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = set(a.variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(sorted(unknown))}")
    if a.windows is None:
        a.windows = 4 if a.quick else 12
    if a.rounds is None:
        a.rounds = 1 if a.quick else 3
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    if a.windows < 1 or a.warmup < 0 or a.tokens < 1 or a.threads < 1:
        ap.error("--windows, --tokens and --threads must be positive, --warmup non-negative")
    return a


def warn_if_busy(threads: int) -> None:
    """Other work on the cores skews every variant, and torch's OpenMP threads worst of all (their
    spin-waits collapse when a core is taken away: a tenfold slowdown is common)."""
    load = os.getloadavg()[0]
    if load >= 0.5:
        log(f"WARNING: load average {load:.1f} before the benchmark started: other processes are using the CPU; "
            f"the figures (the naive torch ones most of all, with {threads} threads) will not be representative")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.variant:
        child_main(a.variant, a.job, a.result)
        return 0
    t_start = time.perf_counter()
    warn_if_busy(a.threads)
    model = QUICK_MODEL if a.quick else FULL_MODEL
    assets = prepare_assets(model, a.cache, a.tokens)
    job = {"model": model, "assets": assets, "windows": a.windows, "warmup": a.warmup, "rounds": a.rounds,
           "stream": a.stream, "stride": STREAMS[a.stream], "tokens": a.tokens, "threads": a.threads, "quick": a.quick}
    results = {}
    with tempfile.TemporaryDirectory(prefix="streamcap-bench-") as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job))
        pooled: dict[str, dict] = {}
        for rnd in range(a.rounds):
            for v in a.variants:
                log(f"round {rnd + 1}/{a.rounds}: running {v} ({DESCRIPTIONS[v]}) ...")
                raw = run_variant(v, job_path, Path(tmp))
                r = summarise(raw)
                log(f"  {v:<13} {r['windows_per_s']:7.3f} windows/s  p50 {r['p50_ms']:7.0f} ms  "
                    f"p95 {r['p95_ms']:7.0f} ms  peak RSS {r['peak_rss_mb']:6.0f} MB  "
                    f"{r['frames_encoded_per_window']:.1f} frames encoded/window")
                pooled[v] = merge_rounds(pooled.get(v), raw)
        results = {v: summarise(raw) for v, raw in pooled.items()}
    report = build_report(results, job)
    report["bench_wall_s"] = round(time.perf_counter() - t_start, 1)
    table = markdown(report)
    log("\n" + table)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(table)
    if a.plot:
        plot(report, a.plot)
    log(f"done in {report['bench_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
