"""The command line: fine-tune a causal LM on text files and save a checkpoint, the same loop the page
runs. `accelerate launch -m core.training.cli ...` (or plain `python -m core.training.cli ...`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from core.errors import InputError, SettingsError, VectorLabError
from core.training.checkpoints import check_name
from core.training.config import LR_SCHEDULES, TrainConfig
from core.training.data import prepare_data
from core.training.divergence import TrainingDivergedError
from core.training.loop import FineTuneRun
from core.training.parts import TRAIN_PARTS
from core.training.results import BaseModelInfo, TrainStep

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="accelerate launch -m core.training.cli",
        description="Fine-tune a causal LM on text files and save a checkpoint "
        "(plain `python -m core.training.cli` runs the same loop in one process).",
    )
    p.add_argument(
        "--model", required=True, help="model spec: a local model directory, a Hub id, bundled-smollm2"
    )
    p.add_argument("--text-file", action="append", required=True, help="a UTF-8 text file (repeat for more)")
    p.add_argument("--out", required=True, help="checkpoint name, saved under <data dir>/checkpoints/NAME")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--train-part", choices=TRAIN_PARTS, default=d.train_part)
    p.add_argument("--n-last-blocks", type=int, default=d.n_last_blocks)
    p.add_argument("--eval-fraction", type=float, default=d.eval_fraction)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-batches", type=int, default=d.eval_batches)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule)
    p.add_argument("--dropout", action="store_true", help="keep the model's dropout on")
    p.add_argument("--no-grad-norms", action="store_true", help="skip per-layer gradient norms")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--diverge-nats", type=float, default=d.diverge_nats)
    p.add_argument("--diverge-window", type=int, default=d.diverge_window)
    p.add_argument(
        "--save-diverged",
        action="store_true",
        help="save the model even when training diverged (it replaces a checkpoint of the same name)",
    )
    return p


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return TrainConfig(**values, track_grad_norms=not args.no_grad_norms)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `accelerate launch -m core.training.cli` / `python -m core.training.cli`."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = _config_from_args(args)
    except SettingsError as e:
        parser.error(str(e))

    try:
        check_name(args.out)
        texts = []
        for name in args.text_file:
            try:
                texts.append(Path(name).read_text(encoding="utf-8", errors="replace"))
            except OSError as e:
                raise InputError(f"Cannot read {name}: {e.strerror or e}") from e
    except VectorLabError as e:
        log.error("error: %s", e)
        return 1

    from accelerate import Accelerator

    from core.model.loading import load_model

    accelerator = Accelerator(cpu=args.cpu)
    say = log.info if accelerator.is_main_process else log.debug
    try:
        loaded = load_model(args.model)
        data = prepare_data(texts, loaded.tokenizer, config)
        s = data.summary
        say(
            "%s: %d tokens -> %d training and %d held-out sequences of %d tokens",
            loaded.info.name,
            s.n_tokens,
            s.n_train_sequences,
            s.n_eval_sequences,
            s.seq_len,
        )
        info = loaded.info
        run = FineTuneRun(
            loaded.model,
            loaded.tokenizer,
            data,
            config,
            base_model=info.name,
            base_info=BaseModelInfo(info.name, info.spec, info.source, info.identity),
            checkpoint_name=args.out,
            accelerator=accelerator,
        )
        say(
            "training %d of %d parameters on %s (%d process%s)",
            run.n_trainable,
            run.n_params,
            accelerator.device,
            accelerator.num_processes,
            "" if accelerator.num_processes == 1 else "es",
        )

        def report(step: TrainStep) -> None:
            held = f"  eval {step.eval_loss:.4f}" if step.eval_loss is not None else ""
            say(
                "step %d/%d  loss %.4f%s  lr %.2g  %.0f tok/s  eta %.1fs",
                step.step,
                config.steps,
                step.loss,
                held,
                step.lr,
                step.tokens_per_s,
                step.eta_s,
            )

        result = run.run(on_step=report)
    except TrainingDivergedError as e:
        log.error("error: %s", e)
        if not args.save_diverged:
            log.error("Pass --save-diverged to save it anyway.")
            return 1
        try:
            saved = run.save_checkpoint(allow_diverged=True)
        except VectorLabError as save_error:
            log.error("error: %s", save_error)
            return 1
        if saved is not None:
            say("saved the diverged model anyway: %s (step %d)", saved.path, saved.steps)
        return 1
    except VectorLabError as e:
        log.error("error: %s", e)
        return 1
    if result.checkpoint is not None:
        say("saved %s (step %d, loss %.4f)", result.checkpoint.path, result.step, result.final_loss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
