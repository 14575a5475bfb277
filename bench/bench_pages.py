"""Warm page reruns against one forward pass: the model and trace are cached, a slider moves.

    python bench/bench_pages.py [--model bundled-smollm2] [--tokens 64]

Each page is opened once under Streamlit's AppTest (model load + trace, not timed), then a widget is
changed and the rerun timed; the baseline is one plain eager forward pass of the same text.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from bench.bench_trace import text_of_tokens  # noqa: E402
from bench.common import timeit  # noqa: E402
from core.model.loading import load_model  # noqa: E402
from ui import state  # noqa: E402

# page → (widget kind, key, two values to alternate between)
MOVES = {
    "pages/1_tokens.py": ("slider", "tok_k", (5, 12)),
    "pages/2_positions.py": ("slider", "rope_n", (32, 64)),
    "pages/3_attention.py": ("selectbox", "att_head", (0, 1)),
    "pages/4_layers.py": ("slider", "norm_layer", (1, 2)),
    "pages/5_output.py": ("slider", "out_top_p", (0.9, 0.5)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled-smollm2")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    loaded = load_model(args.model)
    text = text_of_tokens(loaded, args.tokens)
    ids = torch.as_tensor(loaded.tokenizer(text)["input_ids"])[None]

    def forward():
        with torch.inference_mode():
            loaded.model(ids, use_cache=False)

    t_forward = timeit(forward, repeat=args.repeat)
    print(f"model {loaded.info.name}, {ids.shape[1]} tokens, one forward pass: {1e3 * t_forward:.0f} ms\n")
    print("| page | warm rerun (ms) | rerun / forward |")
    print("|---|---:|---:|")
    for page, (kind, key, values) in MOVES.items():
        at = AppTest.from_file(str(ROOT / page), default_timeout=600)
        at.session_state[state.MODEL_SPEC] = args.model
        at.session_state[state.TEXT] = text
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        times = []
        for i in range(args.repeat + 1):
            widget = getattr(at, kind)(key=key)
            value = values[i % 2]
            (widget.select(value) if kind == "selectbox" else widget.set_value(value))
            start = time.perf_counter()
            at.run()
            if i:  # the first move may fill a cache for the new value
                times.append(time.perf_counter() - start)
            assert not at.exception, [e.value for e in at.exception]
        t_page = statistics.median(times)
        print(f"| {Path(page).stem} | {1e3 * t_page:.0f} | {t_page / t_forward:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
