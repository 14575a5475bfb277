"""The text a run trains on: joined, tokenized, split into a training part and a held-out tail that never
share a token position, cut into [seq_len]-token sequences, and batched in a seeded order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from core.errors import InputError
from core.training.config import TrainConfig


@dataclass(frozen=True)
class DataSummary:
    """How the text turned into training and held-out sequences."""

    n_documents: int  # non-empty texts joined (with an end-of-text token between them)
    n_tokens: int  # tokens in the joined text
    n_train_tokens: int  # tokens before the split point (the training part)
    n_eval_tokens: int  # tokens after the split point (the held-out tail)
    n_train_sequences: int  # [seq_len]-token training sequences cut from the training part
    n_eval_sequences: int  # [seq_len]-token sequences cut from the held-out tail
    seq_len: int
    n_unused_tokens: int  # leftovers too short to fill a sequence at the end of each part


@dataclass(frozen=True)
class TrainData:
    """Token sequences for training and held-out evaluation; the two never share a token position."""

    train: torch.Tensor  # [n_train_sequences, seq_len] int64 token ids from token_ids[:split_index]
    eval: torch.Tensor  # [n_eval_sequences, seq_len] int64 token ids from token_ids[split_index:]
    token_ids: torch.Tensor  # [n_tokens] the whole joined text
    split_index: int  # first token of the held-out tail
    summary: DataSummary


def prepare_data(texts: str | Sequence[str], tokenizer: Any, config: TrainConfig) -> TrainData:
    """Tokenize `texts` (one pasted text or several files' texts), hold out the tail, cut sequences.

    The held-out part is the last `eval_fraction` of the joined tokens, a contiguous portion of the
    text, so evaluation measures text the model never trained on. Raises InputError when the text is
    empty or too short for one sequence in each part.
    """
    if isinstance(texts, str):
        texts = [texts]
    documents = [t for t in texts if t and t.strip()]
    if not documents:
        raise InputError("There is no text to train on: paste some text or add a file that contains text.")

    separator = tokenizer.eos_token_id
    ids: list[int] = []
    for i, document in enumerate(documents):
        if i and separator is not None:
            ids.append(separator)  # documents are separate: do not learn to continue one into the next
        ids.extend(tokenizer(document, add_special_tokens=False, verbose=False)["input_ids"])

    n, seq_len = len(ids), config.seq_len
    n_eval = round(n * config.eval_fraction) if config.eval_fraction > 0 else 0
    n_train = n - n_eval
    if n_train < seq_len:
        held = f" after holding out {n_eval} for evaluation" if n_eval else ""
        raise InputError(
            f"The text is too short to train on: it has {n} tokens ({n_train} for training{held}), "
            f"less than one sequence of seq_len={seq_len}. Add more text or lower seq_len."
        )
    if config.eval_fraction > 0 and n_eval < seq_len:
        raise InputError(
            f"The held-out part is too short: eval_fraction={config.eval_fraction} of {n} tokens is "
            f"{n_eval} tokens, less than one sequence of seq_len={seq_len}. Add more text, lower "
            "seq_len, raise eval_fraction, or set eval_fraction to 0 to train without held-out loss."
        )

    token_ids = torch.tensor(ids, dtype=torch.long)
    n_train_seq, n_eval_seq = n_train // seq_len, n_eval // seq_len
    train = token_ids[: n_train_seq * seq_len].view(n_train_seq, seq_len)
    held_out = token_ids[n_train : n_train + n_eval_seq * seq_len].view(n_eval_seq, seq_len)
    summary = DataSummary(
        n_documents=len(documents),
        n_tokens=n,
        n_train_tokens=n_train,
        n_eval_tokens=n_eval,
        n_train_sequences=n_train_seq,
        n_eval_sequences=n_eval_seq,
        seq_len=seq_len,
        n_unused_tokens=n - (n_train_seq + n_eval_seq) * seq_len,
    )
    return TrainData(train=train, eval=held_out, token_ids=token_ids, split_index=n_train, summary=summary)


class _Sequences(Dataset):
    """Rows of a [N, T] token tensor, one sequence per item."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows  # [N, T]

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]


def train_batches(data: TrainData, config: TrainConfig) -> DataLoader:
    """[batch_size, seq_len] batches of the training sequences, reshuffled each epoch from a generator
    seeded with `config.seed` (apart from torch's global RNG, so the order never depends on the UI)."""
    order = torch.Generator().manual_seed(config.seed)
    return DataLoader(_Sequences(data.train), batch_size=config.batch_size, shuffle=True, generator=order)
