"""Time and peak memory of the full trace against a plain eager forward with attentions and hidden states.

    python bench/bench_trace.py [--models bundled-smollm2 gpt2-shape] [--lengths 64 512] [--repeat 7]

Time: the two calls alternate, `--repeat` times each after one warm-up, and the ratio is of their
medians, so drift in machine speed hits both alike. Memory: each call runs once in a fresh Python
process; its peak resident set size (Linux VmHWM, reset just before the call, so loading the model
does not count) is reported whole and as the rise above the resident size before the call. RSS covers
torch's CPU tensors, which live in ordinary process memory.

`gpt2-shape` is GPT-2 small's exact architecture (124M, 12 layers) with random weights: the same work
per token as GPT-2, which no package here ships the weights of.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.inspection.trace import TraceConfig, run_trace  # noqa: E402
from core.model.loading import gpt2_tokenizer, load_model, wrap  # noqa: E402

WORDS = "vectors flow through every layer of the model while attention mixes them together".split()
CALLS = ("plain", "trace")


def build(spec: str):
    if spec == "gpt2-shape":
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        return wrap(
            GPT2LMHeadModel(GPT2Config()), gpt2_tokenizer(), spec, "GPT-2 small shape (random weights)"
        )
    return load_model(spec)


def text_of_tokens(loaded, n: int) -> str:
    words, i = [], 0
    while True:
        words.append(WORDS[i % len(WORDS)])
        i += 1
        text = " ".join(words)
        if len(loaded.tokenizer(text)["input_ids"]) >= n:
            return text


def calls(loaded, n: int) -> dict:
    """The two calls compared, on the same `n`-token text: name -> zero-argument function."""
    text = text_of_tokens(loaded, n)
    ids = torch.as_tensor(loaded.tokenizer(text)["input_ids"][:n])[None]
    config = TraceConfig(max_tokens=n)

    def plain():
        with torch.inference_mode():
            return loaded.model(ids, output_attentions=True, output_hidden_states=True, use_cache=False)

    def trace():
        return run_trace(loaded, text, config)

    return {"plain": plain, "trace": trace}


def interleaved_medians(fns: dict, repeat: int) -> dict:
    """Median seconds of each function, the functions taking turns, after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# --------------------------------------------------------------------------- peak memory


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_peak(spec: str, n: int, call: str) -> dict:
    """In this (fresh) process: peak RSS of one `call`, reset just before it. Linux only."""
    torch.set_grad_enabled(False)
    fn = calls(build(spec), n)[call]
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        raise SystemExit("peak memory needs Linux's /proc/self/clear_refs and VmHWM; not available here")
    clear_refs.write_text("5")  # resets the high-water mark to the current resident size
    before = _status_kb("VmRSS")
    result = fn()
    peak = _status_kb("VmHWM")
    del result
    return {"before_mb": before / 1024, "peak_mb": peak / 1024, "rise_mb": (peak - before) / 1024}


def peak_in_fresh_process(spec: str, n: int, call: str) -> dict:
    command = [sys.executable, __file__, "--peak-of", call, "--models", spec, "--lengths", str(n)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bundled-smollm2", "gpt2-shape"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[64, 512])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-memory", action="store_true", help="time only")
    parser.add_argument("--peak-of", choices=CALLS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.peak_of:
        print(json.dumps(measure_peak(args.models[0], args.lengths[0], args.peak_of)))
        return
    torch.set_grad_enabled(False)

    print("| model | T | plain forward (ms) | full trace (ms) | trace / plain (medians) |")
    print("|---|---:|---:|---:|---:|")
    memory_rows = []
    for spec in args.models:
        loaded = build(spec)
        for n in args.lengths:
            t = interleaved_medians(calls(loaded, n), args.repeat)
            print(
                f"| {loaded.info.name} | {n} | {1e3 * t['plain']:.1f} | {1e3 * t['trace']:.1f} | "
                f"{t['trace'] / t['plain']:.2f}× |",
                flush=True,
            )
            if not args.no_memory:
                peaks = {c: peak_in_fresh_process(spec, n, c) for c in CALLS}
                memory_rows.append((loaded.info.name, n, peaks))
        del loaded

    if memory_rows:
        print()
        print("Peak RSS of one call in a fresh process (MB; rise = peak − resident size before the call)")
        print()
        print("| model | T | plain peak | trace peak | plain rise | trace rise | trace / plain (rise) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, n, m in memory_rows:
            p, t = m["plain"], m["trace"]
            print(
                f"| {name} | {n} | {p['peak_mb']:.0f} | {t['peak_mb']:.0f} | {p['rise_mb']:.0f} | "
                f"{t['rise_mb']:.0f} | {t['rise_mb'] / p['rise_mb']:.2f}× |"
            )


if __name__ == "__main__":
    main()
