"""Training throughput: Vector Lab's FineTuneRun (gradient statistics on and off) against a plain
PyTorch loop and Hugging Face `transformers.Trainer` on the same model, data and batch, in fp32 and
with bf16 autocast. Prints a markdown table of tokens/s and ratios from one run.

    .venv/bin/python bench/bench_train.py                      # small GPT-2 from config (random init)
    .venv/bin/python bench/bench_train.py --model bundled-smollm2 --batch-size 2 --seq-len 64 --steps 4
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.training.config import TrainConfig  # noqa: E402
from core.training.data import prepare_data  # noqa: E402
from core.training.loop import FineTuneRun  # noqa: E402

log = logging.getLogger("bench_train")

PARAGRAPH = (
    "The vectors inside a language model are lists of numbers. Each token becomes an embedding, "
    "each block adds its attention and MLP outputs to the residual stream, and the last layer turns "
    "the stream back into a probability for every token in the vocabulary. Training nudges every one "
    "of those numbers a little, in the direction that makes the text more likely. "
)


def cpu_bf16_support() -> dict[str, bool]:
    """Which bfloat16 matrix instructions /proc/cpuinfo advertises (Linux only)."""
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        flags = set()
    return {f: f in flags for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f")}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_model(args):
    """The model to train and its tokenizer: a small GPT-2 from config, or a spec via core.model.loading."""
    if args.model:
        from core.model.loading import load_model

        loaded = load_model(args.model)
        return loaded.model.float(), loaded.tokenizer, loaded.info.name
    from transformers import GPT2Config, GPT2LMHeadModel

    from core.model.loading import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_positions=max(256, args.seq_len),
        # No dropout anywhere, so train mode (Trainer) and eval mode (FineTuneRun) do the same work.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    name = f"GPT-2 from config (d={args.n_embd}, {args.n_layer} layers, {args.n_head} heads)"
    return GPT2LMHeadModel(config), tokenizer, name


def now() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads): CPU time is what other programs on a
    shared machine cannot inflate."""
    return time.perf_counter(), time.process_time()


def steady_tokens_per_s(
    stamps: list[tuple[float, float]], warmup: int, tokens_per_step: int
) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second) over the steps after `warmup`, from
    end-of-step stamps (stamps[0] is the start, stamps[i] the end of step i)."""
    timed = stamps[warmup:]
    tokens = (len(timed) - 1) * tokens_per_step
    return tokens / (timed[-1][0] - timed[0][0]), tokens / (timed[-1][1] - timed[0][1])


def bench_plain(model, data, args, bf16: bool) -> tuple[float, float]:
    """The textbook loop: forward, backward, clip, AdamW step, on the same batches in the same order."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=args.batch_size, shuffle=True, generator=order
    )
    batches = iter(loader)
    stamps = [now()]
    for _ in range(args.warmup + args.steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        stamps.append(now())
    return steady_tokens_per_s(stamps, args.warmup, args.batch_size * args.seq_len)


def bench_ours(model, tokenizer, data, config, args) -> tuple[float, float]:
    stamps = [now()]
    run = FineTuneRun(model, tokenizer, data, config, base_model="bench")
    run.run(on_step=lambda step: stamps.append(now()))
    return steady_tokens_per_s(stamps, args.warmup, args.batch_size * args.seq_len)


def bench_hf_trainer(model, data, args, bf16: bool) -> tuple[float, float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    stamps: list[tuple[float, float]] = []

    class Stamp(TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append(now())

        def on_step_end(self, *a, **k):
            stamps.append(now())

    rows = [{"input_ids": r, "labels": r} for r in data.train]
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            bf16=bf16,
            use_cpu=True,
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
        )
        Trainer(model=model, args=training_args, train_dataset=rows, callbacks=[Stamp()]).train()
    return steady_tokens_per_s(stamps, args.warmup, args.batch_size * args.seq_len)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default="",
        help="a model spec for load_model (default: GPT-2 from config)",
    )
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the table shows medians")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast rows")
    p.add_argument("--no-trainer", action="store_true", help="skip transformers.Trainer")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    base, tokenizer, name = build_model(args)
    total = args.warmup + args.steps
    config = TrainConfig(
        lr=args.lr,
        steps=total,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        eval_fraction=0.0,
        grad_clip=1.0,
    )
    n_tokens_needed = (total + 1) * args.batch_size * args.seq_len
    text = PARAGRAPH * (n_tokens_needed // 60 + 1)
    data = prepare_data(text, tokenizer, config)

    def methods(bf16: bool):
        """(name, thunk) for every loop, each on a fresh copy of the same initial weights."""
        cfg = TrainConfig(**{**config.__dict__, "bf16": bf16})
        off = TrainConfig(**{**cfg.__dict__, "track_grad_norms": False})
        yield "plain PyTorch loop", lambda: bench_plain(copy.deepcopy(base), data, args, bf16)
        yield (
            "FineTuneRun, grad stats on",
            lambda: bench_ours(copy.deepcopy(base), tokenizer, data, cfg, args),
        )
        yield (
            "FineTuneRun, grad stats off",
            lambda: bench_ours(copy.deepcopy(base), tokenizer, data, off, args),
        )
        if not args.no_trainer:
            yield "transformers.Trainer", lambda: bench_hf_trainer(copy.deepcopy(base), data, args, bf16)

    # Repeats interleave the loops, so slow drifts of a shared machine hit all of them alike.
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for repeat in range(args.repeats):
        for bf16 in [False] if args.no_bf16 else [False, True]:
            label = "bf16 autocast" if bf16 else "fp32"
            for method, measure in methods(bf16):
                print(f"… repeat {repeat + 1}/{args.repeats}, {label}: {method}", file=sys.stderr)
                samples.setdefault((method, label), []).append(measure())
    wall = {key: statistics.median(w for w, _ in v) for key, v in samples.items()}
    cpu = {key: statistics.median(c for _, c in v) for key, v in samples.items()}

    flags = cpu_bf16_support()
    n_params = sum(p.numel() for p in base.parameters())
    print(f"## Training throughput — {name}, {n_params / 1e6:.1f}M parameters\n")
    print(f"- CPU: {cpu_name()}, torch threads: {torch.get_num_threads()}, torch {torch.__version__}")
    units = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items())
    print(f"- bf16 matrix units (/proc/cpuinfo): {units}")
    print(
        f"- batch {args.batch_size} × {args.seq_len} tokens, AdamW, clip 1.0, "
        f"{args.steps} timed steps after {args.warmup} warm-up steps, median of {args.repeats} "
        "interleaved repeat(s)\n"
    )
    print(
        "| loop | precision | tokens/s (wall) | spread | tokens per CPU-second "
        "| vs plain PyTorch, wall / CPU | bf16 ÷ fp32, wall / CPU |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for method, label in samples:
        spread = [w for w, _ in samples[(method, label)]]
        plain = ("plain PyTorch loop", label)
        vs_plain = f"{wall[(method, label)] / wall[plain]:.2f}× / {cpu[(method, label)] / cpu[plain]:.2f}×"
        fp32 = (method, "fp32")
        vs_fp32 = (
            f"{wall[(method, label)] / wall[fp32]:.2f}× / {cpu[(method, label)] / cpu[fp32]:.2f}×"
            if label != "fp32"
            else "—"
        )
        print(
            f"| {method} | {label} | {wall[(method, label)]:,.0f} | {min(spread):,.0f}–{max(spread):,.0f} "
            f"| {cpu[(method, label)]:,.0f} | {vs_plain} | {vs_fp32} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
