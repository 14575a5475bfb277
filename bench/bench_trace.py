"""Cost of the full trace against a plain eager forward pass with attentions and hidden states.

    python bench/bench_trace.py [--models bundled-smollm2 gpt2-shape] [--lengths 64 512]

`gpt2-shape` is GPT-2 small's exact architecture (124M, 12 layers) with random weights: the same work
per token as GPT-2, which no package here ships the weights of.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import timeit  # noqa: E402
from core.inspection.trace import TraceConfig, run_trace  # noqa: E402
from core.model.loading import gpt2_tokenizer, load_model, wrap  # noqa: E402

WORDS = "vectors flow through every layer of the model while attention mixes them together".split()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bundled-smollm2", "gpt2-shape"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[64, 512])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    print("| model | T | plain forward (ms) | full trace (ms) | trace / plain |")
    print("|---|---:|---:|---:|---:|")
    for spec in args.models:
        loaded = build(spec)
        for n in args.lengths:
            text = text_of_tokens(loaded, n)
            cfg = TraceConfig(max_tokens=n)
            ids = torch.as_tensor(loaded.tokenizer(text)["input_ids"][:n])[None]

            def plain(loaded=loaded, ids=ids):
                with torch.inference_mode():
                    return loaded.model(
                        ids, output_attentions=True, output_hidden_states=True, use_cache=False
                    )

            def traced(loaded=loaded, text=text, cfg=cfg):
                return run_trace(loaded, text, cfg)

            # Interleave the two so drift in machine speed hits both alike.
            t_plain = timeit(plain, repeat=args.repeat)
            t_trace = timeit(traced, repeat=args.repeat)
            t_plain = min(t_plain, timeit(plain, repeat=args.repeat))
            print(
                f"| {loaded.info.name} | {ids.shape[1]} | {1e3 * t_plain:.1f} | {1e3 * t_trace:.1f} | "
                f"{t_trace / t_plain:.2f}× |",
                flush=True,
            )


if __name__ == "__main__":
    main()
