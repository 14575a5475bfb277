"""Speed of the station's step-recording generation against Hugging Face's `model.generate` (KV cache both).

    python bench/bench_generate.py [--models bundled-smollm2 gpt2-shape] [--tokens 64] [--repeat 5]
                                   [--modes greedy sample]

Each round times both once, alternating which goes first, so drift in machine speed (other processes
share it) hits both alike; the table reports medians and the median of the per-round ratios.
`gpt2-shape` is GPT-2 small's architecture (124M) with random weights. Target: ours / HF ≥ 0.9.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_trace import build  # noqa: E402
from core.inspection.generation import generate_steps  # noqa: E402
from core.inspection.sampling import SamplingConfig  # noqa: E402

PROMPT = (
    "Vectors flow through every layer of a language model. At the end, the last hidden state is "
    "multiplied by the unembedding matrix and turned into probabilities by a softmax, and"
)
SAMPLE = SamplingConfig(temperature=0.8, top_k=50, top_p=0.9, seed=0)


def hf_generate(loaded, ids: torch.Tensor, n: int, mode: str) -> list[int]:
    """HF's own loop; min_new_tokens is not set, so EOS could end it early (checked by the caller)."""
    kwargs = {"do_sample": False}
    if mode == "sample":
        kwargs = {
            "do_sample": True,
            "temperature": SAMPLE.temperature,
            "top_k": SAMPLE.top_k,
            "top_p": SAMPLE.top_p,
        }
    with torch.inference_mode():
        out = loaded.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            pad_token_id=loaded.tokenizer.pad_token_id,
            **kwargs,
        )
    return out[0, ids.shape[1] :].tolist()


def ours(loaded, n: int, mode: str) -> list[int]:
    config = SamplingConfig(greedy=True) if mode == "greedy" else SAMPLE
    return generate_steps(loaded, PROMPT, n, config, stop_at_eos=False).token_ids.tolist()


def timed(fn) -> tuple[float, list[int]]:
    start = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bundled-smollm2", "gpt2-shape"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["greedy"], choices=["greedy", "sample"])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    n = args.tokens

    print(f"torch threads: {torch.get_num_threads()}, new tokens: {n}, rounds: {args.repeat}\n")
    print("| model | mode | HF generate (tok/s) | generate_steps (tok/s) | ours / HF | same tokens |")
    print("|---|---|---:|---:|---:|---|")
    for spec in args.models:
        loaded = build(spec)
        ids = torch.as_tensor(loaded.tokenizer(PROMPT)["input_ids"])[None]
        for mode in args.modes:
            hf_tokens = hf_generate(loaded, ids, n, mode)  # warm-up both
            our_tokens = ours(loaded, n, mode)
            hf_times, our_times, ratios = [], [], []
            for r in range(args.repeat):
                pair = [
                    ("hf", partial(hf_generate, loaded, ids, n, mode)),
                    ("ours", partial(ours, loaded, n, mode)),
                ]
                if r % 2:
                    pair.reverse()
                got = {name: timed(fn) for name, fn in pair}
                t_hf, hf_tokens = got["hf"]
                t_ours, our_tokens = got["ours"]
                hf_times.append(len(hf_tokens) / t_hf)
                our_times.append(len(our_tokens) / t_ours)
                ratios.append(our_times[-1] / hf_times[-1])
            same = "yes" if hf_tokens == our_tokens else ("n/a (sampled)" if mode == "sample" else "NO")
            if len(hf_tokens) != n:
                same += f" (HF stopped at {len(hf_tokens)})"
            print(
                f"| {loaded.info.name} | {mode} | {statistics.median(hf_times):.1f} | "
                f"{statistics.median(our_times):.1f} | {statistics.median(ratios):.2f} | {same} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
