"""Retrieval-augmented generation: a prompt that numbers the retrieved chunks as sources [1], [2], ...
and a greedy answer from a Hugging Face causal LM that cites them, decoded so that it does not loop
(repetition penalty, no repeated n-gram) and ends with the answer (EOS / end of turn, blank line)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import InputError, SettingsError
from core.retrieval.search import Hit

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "Answer the question using only the numbered sources. Cite the sources you use like [1] or [2]. "
    "If the sources do not contain the answer, say that you do not know."
)


@dataclass
class RagSettings:
    """How the prompt is built and the answer generated."""

    max_new_tokens: int = 128  # tokens generated after the prompt (greedy, no sampling)
    max_chars_per_source: int = 1200  # longer chunks are cut so the prompt fits a small model
    repetition_penalty: float = 1.2  # logits of tokens the answer already used are divided by this (1 = off);
    # small models otherwise loop on the manuals' wording
    no_repeat_ngram_size: int = 4  # no run of this many tokens appears twice in the answer (0 = off)
    stop_at_blank_line: bool = True  # an answer ends at its first blank line (small models ramble on)

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 2048:
            raise SettingsError(
                f"max_new_tokens must be between 1 and 2048, got {self.max_new_tokens}; try 128."
            )
        if self.max_chars_per_source < 50:
            raise SettingsError(
                f"max_chars_per_source must be at least 50, got {self.max_chars_per_source}; try 1200."
            )
        if not 1.0 <= self.repetition_penalty <= 3.0:
            raise SettingsError(
                f"repetition_penalty must be between 1 and 3, got {self.repetition_penalty}; "
                "try 1.2 (1 = off)."
            )
        if self.no_repeat_ngram_size < 0 or self.no_repeat_ngram_size == 1:
            raise SettingsError(
                f"no_repeat_ngram_size must be 0 (off) or at least 2, got {self.no_repeat_ngram_size}; try 4."
            )

    def generation_kwargs(self, tokenizer: Any, model: Any, n_prompt: int) -> dict[str, Any]:
        """The decoding settings `model.generate` is called with: greedy, the answer-only rules
        (`AnswerOnlyRules`: the sources may be quoted, the answer may not repeat itself), and where to
        stop."""
        from transformers import LogitsProcessorList

        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": False,
            "logits_processor": LogitsProcessorList(
                [AnswerOnlyRules(n_prompt, self.repetition_penalty, self.no_repeat_ngram_size)]
            ),
            "eos_token_id": end_token_ids(tokenizer, model),
        }
        if self.stop_at_blank_line:
            kwargs.update(stop_strings=[BLANK_LINE], tokenizer=tokenizer)
        return kwargs


class AnswerOnlyRules:
    """Repetition penalty and no-repeated-n-gram over the generated tokens only. Transformers' own
    `repetition_penalty` / `no_repeat_ngram_size` also count the prompt, which for RAG forbids quoting
    the sources (a file path of 4+ tokens could never be written out)."""

    def __init__(self, n_prompt: int, penalty: float, ngram: int) -> None:
        self.n_prompt, self.penalty, self.ngram = n_prompt, penalty, ngram

    def __call__(self, input_ids: Any, scores: Any) -> Any:  # [B, T], [B, V] -> [B, V]
        import torch

        for row in range(input_ids.shape[0]):
            answer = input_ids[row, self.n_prompt :].tolist()
            if answer and self.penalty != 1.0:
                seen = torch.tensor(sorted(set(answer)), device=scores.device)
                s = scores[row, seen]
                scores[row, seen] = torch.where(s < 0, s * self.penalty, s / self.penalty)
            n = self.ngram
            if n and len(answer) >= n - 1:
                tail = answer[len(answer) - n + 1 :]
                for start in range(len(answer) - n + 1):
                    if answer[start : start + n - 1] == tail:
                        scores[row, answer[start + n - 1]] = -float("inf")
        return scores


BLANK_LINE = "\n\n"


def end_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Tokens that end an answer: the tokenizer's EOS (for chat models, the template's end-of-turn,
    e.g. SmolLM2's <|im_end|>) and any the model's generation config adds."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        for token in value if isinstance(value, list) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return ids


@dataclass(frozen=True)
class RagPrompt:
    """The prompt in both shapes: chat messages and one plain string."""

    system: str
    user: str  # the numbered sources followed by the question
    sources: list[Hit]  # source [i] is sources[i - 1]

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]

    @property
    def plain(self) -> str:
        """For models without a chat template."""
        return f"{self.system}\n\n{self.user}\nAnswer:"


@dataclass(frozen=True)
class RagAnswer:
    answer: str  # generated text only, without the prompt
    prompt_text: str  # exactly what the model read (after the chat template, if any)
    sources: list[Hit]  # the hits given to the model, numbered from 1
    cited: list[int]  # source numbers the answer mentions, e.g. [1, 3]; only ones that exist
    n_prompt_tokens: int
    used_chat_template: bool
    stopped: str = ""  # why generation ended: "end of answer", "blank line" or "token limit"
    n_new_tokens: int = 0


def build_rag_prompt(question: str, hits: Sequence[Hit], settings: RagSettings | None = None) -> RagPrompt:
    """Number the hits as sources [1]..[n] (with doc name and chunk) above the question."""
    settings = settings or RagSettings()
    if not isinstance(question, str) or not question.strip():
        raise InputError("Type a question to answer.")
    if not hits:
        raise InputError("There are no sources to answer from; index documents and search first.")
    blocks = []
    for i, hit in enumerate(hits, start=1):
        text = hit.text.strip()
        if len(text) > settings.max_chars_per_source:
            text = text[: settings.max_chars_per_source].rstrip() + " ..."
        blocks.append(f"[{i}] ({hit.doc_name}, chunk {hit.chunk_index})\n{text}")
    user = "Sources:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question.strip()}"
    return RagPrompt(system=SYSTEM_PROMPT, user=user, sources=list(hits))


def cited_sources(answer: str, n_sources: int) -> list[int]:
    """Source numbers cited in `answer` as [k] (also [1, 2] or [1][2]), in order, only 1..n_sources."""
    found: list[int] = []
    for group in re.findall(r"\[([\d,\s]+)\]", answer):
        for number in re.findall(r"\d+", group):
            k = int(number)
            if 1 <= k <= n_sources and k not in found:
                found.append(k)
    return found


@dataclass(frozen=True)
class PromptText:
    """A RagPrompt as the model reads it: after the tokenizer's chat template, if it has one."""

    text: str
    used_chat_template: bool  # True: `text` already holds the special tokens the template adds


def render_prompt(prompt: RagPrompt, tokenizer: Any) -> PromptText:
    """The exact text the model will read for `prompt` (chat template if the tokenizer has one)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        return PromptText(text=text, used_chat_template=True)
    return PromptText(text=prompt.plain, used_chat_template=False)


def answer_with_lm(
    model: Any,
    tokenizer: Any,
    question: str,
    hits: Sequence[Hit],
    settings: RagSettings | None = None,
) -> RagAnswer:
    """Ask a causal LM the question over the hits, greedily, and return its answer and sources.

    Uses the tokenizer's chat template when it has one, else the plain prompt."""
    settings = settings or RagSettings()
    rendered = render_prompt(build_rag_prompt(question, hits, settings), tokenizer)
    return answer_from_text(model, tokenizer, rendered, hits, settings)


def answer_from_text(
    model: Any,
    tokenizer: Any,
    prompt: PromptText,
    sources: Sequence[Hit],
    settings: RagSettings | None = None,
) -> RagAnswer:
    """Generate greedily after exactly `prompt.text` (e.g. a prompt the user edited); citations [k]
    in the answer are matched against `sources`."""
    import torch

    settings = settings or RagSettings()
    text = prompt.text
    if not text.strip():
        raise InputError("The prompt is empty; search again to rebuild it from the retrieved chunks.")
    # A templated prompt already holds its special tokens; adding them again would double the BOS.
    encoded = tokenizer(text, add_special_tokens=not prompt.used_chat_template, return_tensors="pt")
    input_ids = encoded["input_ids"]  # [1, T]
    n_prompt = int(input_ids.shape[1])
    config = model.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if context and n_prompt + settings.max_new_tokens > context:
        raise InputError(
            f"The prompt is {n_prompt} tokens and {settings.max_new_tokens} more are to be generated, "
            f"but the model reads at most {context}; use fewer sources, shorter chunks or fewer new tokens."
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    ends = end_token_ids(tokenizer, model)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=torch.ones_like(input_ids).to(device),
            pad_token_id=pad_id,
            **settings.generation_kwargs(tokenizer, model, n_prompt),
        )  # [1, T + new]
    new = output[0, n_prompt:]
    generated = tokenizer.decode(new, skip_special_tokens=True)
    if new.numel() and int(new[-1]) in ends:
        stopped = "end of answer"
    elif settings.stop_at_blank_line and BLANK_LINE in generated:
        stopped = "blank line"
    else:
        stopped = "token limit"
    answer = generated.split(BLANK_LINE)[0].strip() if settings.stop_at_blank_line else generated.strip()
    log.info("RAG answer: %d prompt tokens, %d new (%s)", n_prompt, new.numel(), stopped)
    return RagAnswer(
        answer=answer,
        prompt_text=text,
        sources=list(sources),
        cited=cited_sources(answer, len(sources)),
        n_prompt_tokens=n_prompt,
        used_chat_template=prompt.used_chat_template,
        stopped=stopped,
        n_new_tokens=int(new.numel()),
    )
