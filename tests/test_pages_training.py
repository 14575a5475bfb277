"""The training station under AppTest: a short real fine-tune, stop/resume, one job for all sessions."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest
from test_pages import ROOT, TIMEOUT, assert_clean, metrics

from ui import state

PAGE = str(ROOT / "pages" / "8_training.py")


@pytest.fixture
def job(tmp_path, monkeypatch):
    """The process-wide training job, empty before and after each test; checkpoints go to tmp."""
    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(tmp_path))
    training_job = state.training_job()
    training_job.stop()
    training_job.wait(120)
    training_job.discard()
    yield training_job
    training_job.stop()
    training_job.wait(120)
    training_job.discard()


def page(model_dir: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.session_state[state.MODEL_SPEC] = model_dir
    return at


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
    assert snap.history[-1].loss < snap.history[0].loss  # it learned something
    m = metrics(at)
    assert float(m["Loss"]) == pytest.approx(snap.history[-1].loss, abs=1e-4)
    assert float(m["KL(after ‖ before)"].split()[0]) > 0
    assert any("Saved checkpoint 'page-run'" in s.value for s in at.success)
    # The checkpoint is offered by the model picker, and another page can inspect it.
    assert "fine-tuned: page-run" in at.selectbox(key=state.MODEL_CHOICE).options
    checkpoint_dir = tmp_path / "checkpoints" / "page-run"
    tokens = AppTest.from_file(str(ROOT / "pages" / "1_tokens.py"), default_timeout=TIMEOUT)
    tokens.session_state[state.MODEL_SPEC] = str(checkpoint_dir)
    tokens.run()
    assert_clean(tokens)
    # The gradient / Adam panel reads the real optimizer state.
    at.selectbox(key="train_token").select_index(1).run()
    assert_clean(at)
    assert float(metrics(at)["‖gradient of this row‖"]) >= 0
    block_param = next(
        n for n in at.selectbox(key="train_param").options if ".1." in n and n.endswith("weight")
    )
    at.selectbox(key="train_param").select(block_param).run()
    assert_clean(at)
    # With lr 3e-3, Adam's per-weight updates are about lr in size (m̂/√v̂ is of order 1).
    assert 1e-5 < float(metrics(at)["mean |update|"]) <= 3e-3 * 1.01


def test_stop_resume_and_a_second_session_sees_the_same_job(job, tiny_gpt2_dir):
    first = page(str(tiny_gpt2_dir)).run()
    first.number_input(key="train_steps").set_value(2000).run()
    first.button(key="train_start").click().run()
    assert_clean(first)
    assert job.snapshot().status == "running"
    second = page(str(tiny_gpt2_dir)).run()
    assert_clean(second)
    assert second.button(key="train_start").disabled  # one job at a time
    assert not second.button(key="train_stop").disabled
    second.button(key="train_stop").click().run()
    assert job.wait(60)
    snap = job.snapshot()
    assert snap.status == "stopped" and 0 < snap.step < 2000
    first.run()
    assert not first.button(key="train_resume").disabled
    first.button(key="train_resume").click().run()
    assert job.snapshot().status in ("running", "stopping", "stopped")
    job.stop()
    assert job.wait(60)
    resumed = job.snapshot()
    assert resumed.step >= snap.step
    assert [h.step for h in resumed.history] == list(range(1, resumed.step + 1))  # a continuous curve


def test_bad_training_input_gives_messages(job, tiny_gpt2_dir):
    at = page(str(tiny_gpt2_dir)).run()
    at.text_area(key="train_text").input("   ").run()
    assert not at.exception
    assert len(at.main.error) == 1
    assert at.button(key="train_start").disabled
    at.text_area(key="train_text").input("Too short to train on.").run()
    assert not at.exception
    assert "shorter than" in at.main.error[0].value or "too short" in at.main.error[0].value
    assert at.button(key="train_start").disabled


def test_train_on_documents_indexed_for_search(job, tiny_gpt2_dir, tmp_path):
    from core.documents import parse_text
    from core.search import DocumentIndex, close_client, make_client
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
    from core.models import gpt2_tokenizer

    expected = len(gpt2_tokenizer()(text.strip())["input_ids"])
    assert (
        abs(int(metrics(at)["Tokens"].replace(",", "")) - expected) <= 2
    )  # the same text, rebuilt from chunks
