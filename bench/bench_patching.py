"""Cost of a full activation-patching sweep against the same number of plain forward passes.

    python bench/bench_patching.py [--models bundled-smollm2] [--site resid_in] [--repeat 3]

The sweep runs one patch per batch row (layers × positions rows, `rows_per_batch` rows per forward);
the plain side runs the corrupted prompt through the same batches with no hooks. The ratio is what the
hooks and the copying cost on top of the forwards (target: at most 1.3×).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import timeit  # noqa: E402
from core.experiments.hooks import rows_per_batch  # noqa: E402
from core.experiments.patching import patch_sweep, prepare  # noqa: E402
from core.model.loading import load_model  # noqa: E402

CLEAN = "The capital of France is"
CORRUPTED = "The capital of Italy is"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bundled-smollm2"])
    parser.add_argument("--site", default="resid_in")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    print("| model | site | runs (L × T) | plain forwards (s) | patching sweep (s) | sweep / plain |")
    print("|---|---|---:|---:|---:|---:|")
    for spec in args.models:
        loaded = load_model(spec)
        setup = prepare(loaded, CLEAN, CORRUPTED, args.site)
        T = len(setup.corrupted_ids)
        n_runs = loaded.info.n_layer * T
        batch = rows_per_batch(T)
        device = next(loaded.model.parameters()).device
        prompt = torch.as_tensor(setup.corrupted_ids, device=device)[None]

        def plain(prompt=prompt, n_runs=n_runs, batch=batch, model=loaded.model) -> None:
            with torch.inference_mode():
                for start in range(0, n_runs, batch):
                    rows = min(batch, n_runs - start)
                    model(input_ids=prompt.expand(rows, -1), use_cache=False, logits_to_keep=1)

        plain_s = timeit(plain, repeat=args.repeat, warmup=1)
        sweep_s = timeit(
            lambda loaded=loaded, setup=setup: patch_sweep(loaded, setup), repeat=args.repeat, warmup=1
        )
        print(
            f"| {loaded.info.name} | {args.site} | {n_runs} | {plain_s:.3f} | {sweep_s:.3f} | "
            f"{sweep_s / plain_s:.2f}× |"
        )


if __name__ == "__main__":
    main()
