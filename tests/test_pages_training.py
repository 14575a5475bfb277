"""The training station under AppTest: a short real fine-tune, the before/after views after opening the
checkpoint, Adam's state, a diverging run, stop/resume, one job for all sessions."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from test_pages import ROOT, TIMEOUT, assert_clean, metrics

from core.inspection.tokens import readable
from core.model.loading import gpt2_tokenizer
from core.training.checkpoints import list_checkpoints, load_checkpoint
from core.training.jobs import STOPPING
from core.training.loop import FineTuneRun
from ui import state

PAGE = str(ROOT / "pages" / "8_training.py")


def page(model_dir: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.session_state[state.MODEL_SPEC] = model_dir
    return at


def _kl(at: AppTest) -> float:
    return float(metrics(at)["KL(after ‖ before)"].split()[0])


def test_short_finetune_from_the_page(job, tiny_model_dir, tmp_path):
    at = page(tiny_model_dir).run()
    assert_clean(at)
    assert int(metrics(at)["Training sequences"]) > 0
    at.number_input(key="train_steps").set_value(5).run()
    at.number_input(key="train_lr").set_value(3e-3).run()
    at.text_input(key="train_ckpt").input("page-run").run()
    at.button(key="train_start").click().run()
    assert_clean(at)
    assert job.wait(120)
    at.run()
    assert_clean(at)
    snap = job.snapshot()
    assert snap.status == "finished" and snap.step == 5
    run = job.run
    assert run.history[-1].loss < run.history[0].loss  # it learned something
    m = metrics(at)
    assert float(m["Loss"]) == pytest.approx(run.history[-1].loss, abs=1e-4)
    kl = _kl(at)
    assert kl > 0
    assert any("Saved checkpoint 'page-run'" in s.value for s in at.success)
    # The checkpoint is offered by the model picker, and another page can inspect it.
    checkpoint_dir = tmp_path / "checkpoints" / "page-run"
    assert "fine-tuned: page-run" in at.selectbox(key=state.MODEL_CHOICE).options
    tokens = AppTest.from_file(str(ROOT / "pages" / "1_tokens.py"), default_timeout=TIMEOUT)
    tokens.session_state[state.MODEL_SPEC] = str(checkpoint_dir)
    tokens.run()
    assert_clean(tokens)

    # The user opens the checkpoint in the sidebar, as the page invites, and comes back: "before" is
    # still the model the run started from, not whatever is loaded now.
    at.selectbox(key=state.MODEL_CHOICE).set_value(str(checkpoint_dir)).run()
    assert_clean(at)
    assert at.session_state[state.MODEL_SPEC] == str(checkpoint_dir)
    assert _kl(at) == pytest.approx(kl, rel=1e-3) and _kl(at) > 0
    [drift] = [d.value for d in at.dataframe if "‖ΔW‖/‖W‖" in d.value.columns]
    assert (drift["‖ΔW‖/‖W‖"] > 0).all()
    [compared] = [c.value for c in at.caption if c.value.startswith("Before: ")]
    base = run.base_info
    assert compared == (
        f"Before: **{base.name}**, the model this run started from ({base.source}, `{base.identity}`). "
        f"After: **this run's model at step 5**, saved as checkpoint 'page-run' ({checkpoint_dir})."
    )

    # The gradient / Adam panel reads the real optimizer state.
    at.selectbox(key="train_token").select_index(1).run()
    assert_clean(at)
    token_id = at.selectbox(key="train_token").value
    grad_norm = float(np.linalg.norm(run.token_embedding_grad(token_id)))
    assert float(metrics(at)["‖gradient of this row‖"]) == pytest.approx(grad_norm, rel=1e-3)
    token = readable(run.tokenizer.decode([token_id]))  # named by the run's own tokenizer
    assert at.selectbox(key="train_token").options[1] == f"{token} (id {token_id})"
    block_param = next(
        n for n in at.selectbox(key="train_param").options if ".1." in n and n.endswith("weight")
    )
    at.selectbox(key="train_param").select(block_param).run()
    assert_clean(at)
    matrix = dict(run.model.named_parameters())[block_param].dim() == 2
    adam = run.adam_state(block_param, row=0 if matrix else None)  # the page's row input starts at 0
    m = metrics(at)
    assert float(m["mean |m̂|"]) == pytest.approx(np.abs(adam.m_hat).mean(), rel=1e-2)
    assert float(m["mean √v̂"]) == pytest.approx(adam.v_hat_sqrt.mean(), rel=1e-2)
    assert float(m["mean |update|"]) == pytest.approx(np.abs(adam.update).mean(), rel=1e-2)


def test_a_diverging_run_is_flagged_and_saved_only_when_asked(job, tiny_gpt2_dir, tmp_path):
    at = page(str(tiny_gpt2_dir)).run()
    at.number_input(key="train_steps").set_value(30).run()
    at.number_input(key="train_lr").set_value(1.0).run()
    at.text_input(key="train_ckpt").input("wild").run()
    at.button(key="train_start").click().run()
    assert job.wait(120)
    at.run()
    assert not at.exception
    run = job.run
    assert run.status == "diverged" and 0 < run.step < 30
    [error] = [e.value for e in at.main.error]
    assert error.startswith(f"Training diverged at step {run.step}: the mean training loss of the last ")
    assert "The run was stopped and this model was not saved." in error
    assert list_checkpoints(tmp_path / "checkpoints") == []  # nothing reached the model picker
    assert "fine-tuned: wild" not in at.selectbox(key=state.MODEL_CHOICE).options
    at.button(key="train_save_anyway").click().run()
    assert not at.exception
    [info] = list_checkpoints(tmp_path / "checkpoints")
    assert (info.name, info.steps) == ("wild", run.step)
    assert load_checkpoint(info.path).settings["diverged"] is True
    assert any(f"Saved the diverged model as checkpoint 'wild' at {info.path}" in s.value for s in at.success)


def test_stop_resume_and_a_second_session_sees_the_same_job(job, tiny_gpt2_dir, monkeypatch):
    """Stopped from a second session after step 4 of 12 and resumed from the first: exactly 12 steps,
    with the same losses and weights as an uninterrupted run."""
    stop_after, steps = 4, 12
    real_step = FineTuneRun._one_step

    def step_then_hold_for_stop(self):
        record = real_step(self)
        if self.step == stop_after:  # hold the run here until someone has pressed Stop
            deadline = time.monotonic() + 60
            while job.snapshot().status != STOPPING and time.monotonic() < deadline:
                time.sleep(0.01)
        return record

    monkeypatch.setattr(FineTuneRun, "_one_step", step_then_hold_for_stop)
    first = page(str(tiny_gpt2_dir)).run()
    first.number_input(key="train_steps").set_value(steps).run()
    first.button(key="train_start").click().run()
    assert_clean(first)
    assert job.snapshot().status == "running"
    deadline = time.monotonic() + 60
    while job.run.step < stop_after and time.monotonic() < deadline:  # it goes no further until Stop
        time.sleep(0.01)
    second = page(str(tiny_gpt2_dir)).run()
    assert_clean(second)
    assert second.button(key="train_start").disabled  # one job at a time
    assert not second.button(key="train_stop").disabled
    second.button(key="train_stop").click().run()
    assert job.wait(60)
    stopped = job.snapshot()
    assert (stopped.status, stopped.step) == ("stopped", stop_after)
    first.run()
    assert not first.button(key="train_resume").disabled
    first.button(key="train_resume").click().run()
    assert job.wait(120)
    monkeypatch.undo()
    resumed = job.snapshot()
    assert (resumed.status, resumed.step) == ("finished", steps)
    run = job.run
    assert [h.step for h in run.history] == list(range(1, steps + 1))  # a continuous curve
    whole = FineTuneRun(copy.deepcopy(run.base), run.tokenizer, run.data, run.config)
    whole.run()
    assert [h.loss for h in run.history] == [h.loss for h in whole.history]
    for (name, a), b in zip(run.model.named_parameters(), whole.model.parameters(), strict=True):
        assert a.equal(b), name


def test_bad_training_input_gives_messages(job, tiny_gpt2_dir):
    at = page(str(tiny_gpt2_dir)).run()
    at.text_area(key="train_text").input("   ").run()
    assert not at.exception
    assert len(at.main.error) == 1
    assert at.button(key="train_start").disabled
    text = "Too short to train on."
    at.text_area(key="train_text").input(text).run()
    assert not at.exception
    n = len(gpt2_tokenizer()(text)["input_ids"])
    n_eval = round(0.1 * n)  # the page keeps TrainConfig's 10% held-out tail
    assert [e.value for e in at.main.error] == [
        f"The text is too short to train on: it has {n} tokens ({n - n_eval} for training after holding "
        f"out {n_eval} for evaluation), less than one sequence of seq_len=64. Add more text or lower "
        "seq_len."
    ]
    assert at.button(key="train_start").disabled


def test_train_on_documents_indexed_for_search(job, tiny_gpt2_dir, tmp_path):
    from core.retrieval.documents import parse_text
    from core.retrieval.index import DocumentIndex
    from core.retrieval.store import close_client, make_client
    from ui.search_state import sentence_embedder

    client = make_client(tmp_path / "chroma")
    text = "Honeybees dance to tell each other where the flowers are. " * 60
    DocumentIndex(client, sentence_embedder()).add_documents([parse_text(text, name="bees.txt")])
    close_client(client)

    at = page(str(tiny_gpt2_dir)).run()
    at.radio(key="train_source").set_value("documents indexed for search").run()
    assert_clean(at)
    assert [o for o in at.multiselect(key="train_docs").value] and "bees.txt" in at.multiselect(
        key="train_docs"
    ).options
    from core.model.loading import gpt2_tokenizer

    expected = len(gpt2_tokenizer()(text.strip())["input_ids"])
    assert (
        abs(int(metrics(at)["Tokens"].replace(",", "")) - expected) <= 2
    )  # the same text, rebuilt from chunks
