"""RAG: the numbered-source prompt and greedy answers from a tiny seeded GPT-2, with and without a
chat template, checked against a hand-written greedy loop."""

from __future__ import annotations

import re

import pytest
import torch

from core.errors import InputError, SettingsError
from core.retrieval.rag import (
    PromptText,
    RagSettings,
    answer_from_text,
    answer_with_lm,
    build_rag_prompt,
    cited_sources,
    render_prompt,
)
from core.retrieval.search import Hit
from core.views.search import answer_html
from tests.fixtures_search import _tiny_lm_master, tiny_lm  # noqa: F401  (fixtures)


def make_hit(rank: int, doc: str, text: str) -> Hit:
    return Hit(rank, f"id{rank}", doc, "hash", rank - 1, 0, len(text), text, cosine=0.9, dot=0.9, l2=0.4)


HITS = [
    make_hit(1, "tides.txt", "Tides are caused mainly by the Moon's gravity."),
    make_hit(2, "sundials.txt", "A sundial tells the time from a shadow."),
]


def test_prompt_numbers_the_sources_in_order_above_the_question():
    prompt = build_rag_prompt("  What causes tides? ", HITS)
    assert prompt.user == (
        "Sources:\n\n"
        "[1] (tides.txt, chunk 0)\nTides are caused mainly by the Moon's gravity.\n\n"
        "[2] (sundials.txt, chunk 1)\nA sundial tells the time from a shadow.\n\n"
        "Question: What causes tides?"
    )
    assert "Cite the sources you use like [1] or [2]" in prompt.system
    assert prompt.sources == HITS
    assert prompt.messages == [
        {"role": "system", "content": prompt.system},
        {"role": "user", "content": prompt.user},
    ]
    assert prompt.plain == f"{prompt.system}\n\n{prompt.user}\nAnswer:"


def test_long_sources_are_cut_to_the_setting():
    long_hit = make_hit(1, "long.txt", "word " * 100)
    prompt = build_rag_prompt("q?", [long_hit], RagSettings(max_chars_per_source=50))
    body = prompt.user.split("\n")[3]
    assert body == ("word " * 10).strip() + " ..."


def test_prompt_needs_a_question_and_sources():
    with pytest.raises(InputError, match=re.escape("Type a question to answer.")):
        build_rag_prompt("  ", HITS)
    with pytest.raises(
        InputError, match=re.escape("There are no sources to answer from; index documents and search first.")
    ):
        build_rag_prompt("What causes tides?", [])


def test_citations_are_read_from_the_answer():
    assert cited_sources("Tides follow the Moon [2], see also [1, 3][2] and [7].", 3) == [2, 1, 3]
    assert cited_sources("No citations here.", 3) == []


def greedy_by_hand(model, input_ids: torch.Tensor, n: int) -> torch.Tensor:
    ids = input_ids
    with torch.no_grad():
        for _ in range(n):
            next_id = model(ids).logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
            ids = torch.cat([ids, next_id], dim=1)
    return ids[0, input_ids.shape[1] :]


def test_answer_without_chat_template_is_the_greedy_continuation_of_the_plain_prompt(tiny_lm):  # noqa: F811
    model, tokenizer = tiny_lm
    result = answer_with_lm(model, tokenizer, "What causes tides?", HITS, RagSettings(max_new_tokens=6))
    prompt = build_rag_prompt("What causes tides?", HITS)
    assert not result.used_chat_template
    assert result.prompt_text == prompt.plain
    ids = tokenizer(prompt.plain, return_tensors="pt")["input_ids"]
    assert result.n_prompt_tokens == ids.shape[1]
    expected = tokenizer.decode(greedy_by_hand(model, ids, 6), skip_special_tokens=True).strip()
    assert result.answer == expected
    assert result.sources == HITS
    assert result.cited == cited_sources(result.answer, 2)
    again = answer_with_lm(model, tokenizer, "What causes tides?", HITS, RagSettings(max_new_tokens=6))
    assert again.answer == result.answer  # greedy: no randomness


def test_answer_uses_the_chat_template_when_there_is_one(tiny_lm):  # noqa: F811
    model, tokenizer = tiny_lm
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    result = answer_with_lm(model, tokenizer, "What causes tides?", HITS, RagSettings(max_new_tokens=4))
    prompt = build_rag_prompt("What causes tides?", HITS)
    assert result.used_chat_template
    assert result.prompt_text == f"<|system|>{prompt.system}\n<|user|>{prompt.user}\n<|assistant|>"
    ids = tokenizer(result.prompt_text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    expected = tokenizer.decode(greedy_by_hand(model, ids, 4), skip_special_tokens=True).strip()
    assert result.answer == expected


def test_a_prompt_too_long_for_the_model_is_refused(tiny_lm):  # noqa: F811
    model, tokenizer = tiny_lm  # n_positions = 256
    hits = [make_hit(i, f"d{i}.txt", "many words here " * 40) for i in range(1, 5)]
    with pytest.raises(InputError, match=r"The prompt is \d+ tokens and 128 more are to be generated"):
        answer_with_lm(model, tokenizer, "Why?", hits)


def test_rag_settings_validate_with_a_fix():
    with pytest.raises(
        SettingsError, match=re.escape("max_new_tokens must be between 1 and 2048, got 0; try 128.")
    ):
        RagSettings(max_new_tokens=0)
    with pytest.raises(SettingsError, match=re.escape("max_chars_per_source must be at least 50, got 10")):
        RagSettings(max_chars_per_source=10)


def test_an_edited_prompt_is_answered_as_written(tiny_lm):  # noqa: F811
    model, tokenizer = tiny_lm
    rendered = render_prompt(build_rag_prompt("What causes tides?", HITS), tokenizer)
    assert rendered == PromptText(
        build_rag_prompt("What causes tides?", HITS).plain, used_chat_template=False
    )
    settings = RagSettings(max_new_tokens=5)
    # The unedited prompt gives exactly answer_with_lm's answer.
    same = answer_from_text(model, tokenizer, rendered, HITS, settings)
    assert same == answer_with_lm(model, tokenizer, "What causes tides?", HITS, settings)
    edited = answer_from_text(model, tokenizer, PromptText("Tides [1]", False), HITS, settings)
    assert edited.prompt_text == "Tides [1]"
    assert edited.n_prompt_tokens == len(tokenizer("Tides [1]")["input_ids"])
    with pytest.raises(InputError, match=re.escape("The prompt is empty; search again to rebuild it")):
        answer_from_text(model, tokenizer, PromptText("  \n", False), HITS, settings)


def test_answer_html_escapes_and_links_existing_sources():
    out = answer_html("<b>Moon</b> [1], [2, 7] and [3]", n_sources=2)
    assert "<b>" not in out and "&lt;b&gt;Moon&lt;/b&gt;" in out
    assert '[<a href="#hit-1">1</a>]' in out
    assert '[<a href="#hit-2">2</a>, 7]' in out and "[3]" in out  # only sources that exist are linked
