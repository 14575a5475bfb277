"""Shared fixtures: tiny real models built from configs (seeded), the bundled SmolLM2, temp dirs."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
from test_families import BUILDERS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _offline_and_isolated(tmp_path_factory):
    """No test reaches the Hub; everything written goes to a temp data dir (the model cache is kept)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # Under test, show the real exception rather than the redacted message users get.
    os.environ["STREAMLIT_CLIENT_SHOW_ERROR_DETAILS"] = "full"
    os.environ.setdefault("VECTORLAB_DATA_DIR", str(tmp_path_factory.mktemp("vectorlab-data")))
    yield


@pytest.fixture(scope="module")
def tokenizer():
    """GPT-2's real tokenizer (the tiny models use its vocabulary)."""
    from core.model.loading import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family_model(request, tokenizer):
    """One tiny seeded model of every registered family, shared by a test module."""
    from core.model.loading import wrap

    return wrap(BUILDERS[request.param](len(tokenizer)), tokenizer, spec=request.param, name=request.param)


def _tiny_gpt2():
    from tiny_models import tiny_gpt2_model

    from core.model.loading import gpt2_tokenizer, wrap

    tok = gpt2_tokenizer()
    return wrap(tiny_gpt2_model(len(tok)), tok, spec="tiny-gpt2", name="tiny GPT-2")


def _tiny_llama():
    from tiny_models import tiny_llama_model

    from core.model.loading import gpt2_tokenizer, wrap

    tok = gpt2_tokenizer()
    return wrap(tiny_llama_model(len(tok)), tok, spec="tiny-llama", name="tiny Llama")


@pytest.fixture(scope="session")
def _tiny_gpt2_master():
    return _tiny_gpt2()


@pytest.fixture(scope="session")
def _tiny_llama_master():
    return _tiny_llama()


@pytest.fixture
def tiny_gpt2(_tiny_gpt2_master):
    """A fresh copy per test: a test may mutate its model without touching the others'."""
    return copy.deepcopy(_tiny_gpt2_master)


@pytest.fixture
def tiny_llama(_tiny_llama_master):
    return copy.deepcopy(_tiny_llama_master)


@pytest.fixture(params=["gpt2", "llama"])
def tiny_model(request, _tiny_gpt2_master, _tiny_llama_master):
    """Both architecture families, one at a time."""
    master = _tiny_gpt2_master if request.param == "gpt2" else _tiny_llama_master
    return copy.deepcopy(master)


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct (converted once into the model cache). Read-only: do not train it."""
    from core.model.loading import BUNDLED, load_model

    return load_model(BUNDLED)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, _tiny_llama_master):
    """The tiny Llama (grouped-query attention) saved as a local model directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    _tiny_llama_master.model.save_pretrained(path, safe_serialization=True)
    _tiny_llama_master.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(params=["gpt2", "llama"])
def tiny_model_dir(request, tiny_gpt2_dir, tiny_llama_dir) -> str:
    """Both tiny families as local model directories, one at a time (for pages)."""
    return str(tiny_gpt2_dir if request.param == "gpt2" else tiny_llama_dir)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, _tiny_gpt2_master):
    """The tiny GPT-2 saved as a local model directory."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    _tiny_gpt2_master.model.save_pretrained(path, safe_serialization=True)
    _tiny_gpt2_master.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def job(tmp_path, monkeypatch):
    """The process-wide training job, empty before and after the test; checkpoints go to tmp."""
    from ui import state

    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(tmp_path))
    training_job = state.training_job()

    def clear() -> None:
        training_job.stop()
        training_job.wait(120)
        training_job.discard()

    clear()
    yield training_job
    clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item so fixtures can screenshot failures."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
