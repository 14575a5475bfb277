"""Everything kept across reruns follows the model's identity and its inputs: a checkpoint saved again
under the same name is read again, a generation is never shown under another model, no result sits in
session state outside `ui.state.keep_result`; and an unusable data directory is one clear message."""

from __future__ import annotations

import ast
import errno
import gc
import importlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from test_pages import ROOT, TIMEOUT, app_test, assert_clean, metrics

from core import paths
from core.errors import DataDirError, ModelLoadError
from core.model import tokenizer_cache
from core.model.loading import directory_identity, hub_identity, load_model
from core.model.store import LOAD_SWITCH_INTERVAL_S, ModelStore
from core.training.checkpoints import save_checkpoint
from ui import cores, state

TEXT = "The cat sat on the mat and the cat"
OTHER = "another model…"


def _save_run(loaded, root: Path, steps: int) -> Path:
    """Save `loaded` as the checkpoint 'my-finetune' (the page's default name), as a run would."""
    settings = {"base_model": "tiny GPT-2", "steps": steps, "final_loss": None}
    return save_checkpoint(loaded.model, loaded.tokenizer, "my-finetune", settings, [], root=root).path


def _sharpen(loaded) -> None:
    """Other weights of the same shapes: the tied embedding ×30 makes every logit 30× larger."""
    with torch.no_grad():
        loaded.model.transformer.wte.weight.mul_(30.0)


# ---------------------------------------------------------------- a checkpoint saved again


def test_store_reads_a_checkpoint_again_when_it_is_saved_again(tmp_path, tiny_gpt2):
    path = _save_run(tiny_gpt2, tmp_path, steps=1)
    store = ModelStore()
    first = store.get(str(path))
    assert store.get(str(path)) is first  # files unchanged: served from memory, not read again
    _sharpen(tiny_gpt2)
    assert _save_run(tiny_gpt2, tmp_path, steps=2) == path  # same name, same folder
    second = store.get(str(path))
    assert second is not first
    assert second.info.identity != first.info.identity
    assert second.info.identity == directory_identity(path)
    wte = tiny_gpt2.model.transformer.wte.weight
    assert torch.equal(second.model.transformer.wte.weight, wte)
    assert not torch.equal(first.model.transformer.wte.weight, wte)


def test_directory_identity_changes_with_any_rewritten_file(tmp_path, tiny_gpt2_dir):
    copy = tmp_path / "model"
    copy.mkdir()
    for f in Path(tiny_gpt2_dir).iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    before = directory_identity(copy)
    assert directory_identity(copy) == before  # stat calls only, stable while nothing changes
    assert directory_identity(tiny_gpt2_dir) != before  # same bytes, another folder
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes())
    assert directory_identity(copy) != before  # rewritten with the same bytes: a new save
    assert directory_identity(tmp_path / "gone").startswith("dir:missing:")


def test_hub_identity_follows_the_cached_snapshot(tmp_path, tiny_gpt2_dir, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert hub_identity("gpt2") == "hub:gpt2:not-cached"
    root = tmp_path / "models--gpt2"
    for sha in ("0" * 40, "1" * 40):
        snapshot = root / "snapshots" / sha
        snapshot.mkdir(parents=True)
        for f in Path(tiny_gpt2_dir).iterdir():
            (snapshot / f.name).write_bytes(f.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    old = hub_identity("gpt2")
    assert old == "hub:" + directory_identity(root / "snapshots" / ("0" * 40))
    (root / "refs" / "main").write_text("1" * 40)  # a newer revision was downloaded
    assert hub_identity("gpt2") == "hub:" + directory_identity(root / "snapshots" / ("1" * 40)) != old


def test_pages_show_a_checkpoint_saved_again_not_the_old_weights(tmp_path, tiny_gpt2):
    from core.inspection.sampling import SamplingConfig, reshape
    from core.inspection.trace import run_trace

    path = _save_run(tiny_gpt2, tmp_path, steps=1)
    output = app_test("pages/5_output.py", str(path), TEXT).run()
    tokens = app_test("pages/1_tokens.py", str(path), TEXT).run()
    assert_clean(output)
    assert_clean(tokens)
    before = metrics(output)["Entropy (model)"]

    _sharpen(tiny_gpt2)
    _save_run(tiny_gpt2, tmp_path, steps=2)
    output.run()
    tokens.run()
    assert_clean(output)
    assert_clean(tokens)
    dist = reshape(run_trace(load_model(str(path)), TEXT).last_logits, SamplingConfig())
    assert metrics(output)["Entropy (model)"] == f"{dist.entropy_before.bits:.2f} bits" != before
    # The trace and the vocabulary come from the same (new) weights: E[ids] is exactly the trace's.
    assert any("max |trace's token vectors − E[ids]| = 0.00e+00" in c.value for c in tokens.caption)


# ---------------------------------------------------------------- results and the model switch


def _switch_model(at: AppTest, model_dir) -> AppTest:
    """Pick a model in the sidebar the way a user does: 'another model…', then its folder."""
    if at.selectbox(key=state.MODEL_CHOICE).value != OTHER:
        at.selectbox(key=state.MODEL_CHOICE).select(OTHER).run()
    return at.text_input(key=state.MODEL_CUSTOM).input(str(model_dir)).run()


def _generation_caption(at: AppTest) -> list[str]:
    return [c.value for c in at.caption if re.match(r"\d+ tokens in ", c.value)]


def test_generation_is_not_shown_under_another_model(tiny_gpt2_dir, tiny_llama_dir):
    at = app_test("pages/5_output.py", str(tiny_gpt2_dir), TEXT).run()
    at.slider(key="gen_n").set_value(5).run()
    at.button(key="gen_go").click().run()
    assert_clean(at)
    assert len(_generation_caption(at)) == 1

    _switch_model(at, tiny_llama_dir)  # same text, same settings, another model
    assert_clean(at)
    assert metrics(at)["Heads"] == "4"  # the sidebar card: the tiny Llama is loaded
    assert _generation_caption(at) == []
    assert not any(m.value.startswith("Step ") for m in at.markdown)
    assert any(c.value.startswith("The model, the text or the settings changed") for c in at.caption)

    _switch_model(at, tiny_gpt2_dir)  # back to the model and inputs it was made for
    assert_clean(at)
    assert len(_generation_caption(at)) == 1


def test_generation_is_dropped_when_its_settings_change(tiny_gpt2_dir):
    at = app_test("pages/5_output.py", str(tiny_gpt2_dir), TEXT).run()
    at.slider(key="gen_n").set_value(5).run()
    at.button(key="gen_go").click().run()
    assert len(_generation_caption(at)) == 1
    at.slider(key="gen_n").set_value(6).run()
    assert_clean(at)
    assert _generation_caption(at) == []


def test_training_before_and_after_stay_with_the_model_the_run_started_from(
    job, tiny_gpt2_dir, tiny_llama_dir
):
    at = AppTest.from_file(str(ROOT / "pages" / "8_training.py"), default_timeout=TIMEOUT)
    at.session_state[state.MODEL_SPEC] = str(tiny_gpt2_dir)
    at.run()
    at.number_input(key="train_steps").set_value(2).run()
    at.text_input(key="train_ckpt").input("").run()
    at.button(key="train_start").click().run()
    assert job.wait(120)
    at.run()
    assert_clean(at)
    kl_before_switch = _metric(at, "KL(after ‖ before)")

    # Another model in the sidebar changes neither side of the comparison: "before" is the run's base.
    _switch_model(at, tiny_llama_dir)
    assert_clean(at)
    assert _metric(at, "KL(after ‖ before)") == kl_before_switch
    assert any(s.value.startswith("5 · Before and after") for s in at.subheader)
    assert any("started from other weights than the sidebar's model has now" in i.value for i in at.info)


def _metric(at: AppTest, label: str) -> str:
    [value] = [m.value for m in at.metric if m.label == label]
    return value


# ---------------------------------------------------------------- no result outside the helper

# Session keys written directly, by file: the sidebar's and the pages' widget mirrors (a widget's
# value copied to a plain key so it survives other pages, and the widget re-seeded from it), inputs
# the user submitted, and one message shown once. Results never appear here: they go through
# ui.state.keep_result, keyed by the model's identity and their inputs.
DIRECT_WRITES = {
    "ui/state.py": {
        "MODEL_SPEC",  # the picked model (an input)
        "TEXT",  # the shared text (an input)
        "MODEL_OTHER",  # the picker is on "another model…"
        "name",  # keep_result itself
        "plain",  # persist(): a widget's remembered value
        "widget_key",  # persist(): the widget re-seeded from it
    },
    "ui/sidebar.py": {
        "state.MODEL_SPEC",
        "state.MODEL_OTHER",
        "state.MODEL_CHOICE",
        "state.MODEL_CUSTOM",
    },
    "ui/search_state.py": {
        "COLLECTION",  # the chosen collection (an input)
        "QUERY",  # the submitted question (an input)
        "TOP_K",  # its k (an input)
        "KEPT_PREFIX + widget_key",  # kept(): a widget's remembered value
        "widget_key",  # kept(): the widget re-seeded from it
        "plain",
    },
    "ui/search/lab.py": {
        "QUESTIONS",  # the user's questions and answer passages (an input)
        "RUNNING",  # a run is in progress (a flag, not a result)
    },
    "ui/search/store.py": {
        "COLLECTION",
        "QUERY",
        "ACTION_MESSAGE",  # what the last delete did, popped and shown on the next run
        "search_state.RECOVERY_SHOWN",  # removed incomplete uploads already told about, told once
        "'search_collection'",  # widgets re-seeded from the plain keys above, or reset
        "'search_new_collection'",
        "'search_collection_confirm'",
    },
    "ui/search/add_documents.py": {
        "ACTION_MESSAGE",
        "search_state.INDEXING",  # uploads being indexed, so a stopped run can say which were cut off
        "'search_preview_doc'",
    },
    "ui/search/documents.py": {"QUERY", "ACTION_MESSAGE", "'search_doc'"},
    "ui/search/results.py": {"QUERY", "TOP_K", "'search_query_input'", "'search_k'"},
    "ui/search/rag.py": {
        "'rag_prompt'",  # the editable prompt, seeded from the search it was built for
    },
}


def _session_writes(source: str) -> list[tuple[int, str]]:
    """(line, key expression) of every write into st.session_state in `source`."""

    def is_session_state(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "session_state"

    writes = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Subscript) and is_session_state(target.value):
                writes.append((node.lineno, ast.unparse(target.slice)))
            elif isinstance(target, ast.Attribute) and is_session_state(target.value):
                writes.append((node.lineno, repr(target.attr)))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and is_session_state(node.func.value)
            and node.func.attr in ("setdefault", "update", "__setitem__")
        ):
            key = ast.unparse(node.args[0]) if node.func.attr != "update" and node.args else "update(...)"
            writes.append((node.lineno, key))
    return writes


def test_no_result_is_kept_in_session_state_outside_keep_result():
    files = sorted((ROOT / "pages").glob("*.py")) + sorted((ROOT / "ui").rglob("*.py"))
    stray = []
    for file in files:
        relative = file.relative_to(ROOT).as_posix()
        allowed = DIRECT_WRITES.get(relative, set())
        for line, key in _session_writes(file.read_text(encoding="utf-8")):
            if key.replace('"', "'") not in allowed:
                stray.append(f"{relative}:{line} writes session_state[{key}]")
    assert stray == [], "keep results with ui.state.keep_result (or list a widget mirror here)"


# ---------------------------------------------------------------- the data directory


def _message(path: Path, why: str) -> str:
    return (
        f"The data directory {path} cannot be used: {why}. Set VECTORLAB_DATA_DIR to a folder Vector Lab "
        f"can write to (it is created if missing), or unset it to use {paths.DEFAULT_DATA_DIR}."
    )


def test_data_dir_is_created_and_leaves_no_probe_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(tmp_path / "new" / "data"))
    assert paths.data_dir() == tmp_path / "new" / "data"
    assert list((tmp_path / "new" / "data").iterdir()) == []


def test_data_dir_that_is_a_file(tmp_path, monkeypatch):
    file = tmp_path / "data.txt"
    file.write_text("not a folder")
    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(file))
    with pytest.raises(DataDirError, match=re.escape(_message(file, "it is a file, not a folder"))):
        paths.data_dir()


def test_data_dir_under_a_file(tmp_path, monkeypatch):
    file = tmp_path / "data.txt"
    file.write_text("not a folder")
    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(file / "sub"))
    why = f"it cannot be created: {file} is a file, not a folder"
    with pytest.raises(DataDirError, match=re.escape(_message(file / "sub", why))):
        paths.data_dir()


def test_read_only_data_dir(tmp_path, monkeypatch):
    """Tests run as root, which writes through read-only permission bits; so the refusal a read-only
    folder gives (EACCES on creating a file in it) is simulated at the write probe."""

    class ReadOnly:
        @staticmethod
        def TemporaryFile(dir):  # noqa: N802 - stands in for tempfile.TemporaryFile
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(paths, "tempfile", ReadOnly)
    with pytest.raises(
        DataDirError, match=re.escape(_message(tmp_path, "it is not writable: Permission denied"))
    ):
        paths.data_dir()


@pytest.fixture
def data_dir_is_a_file(tmp_path, monkeypatch) -> str:
    file = tmp_path / "data.txt"
    file.write_text("not a folder")
    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(file))
    monkeypatch.delenv("CHROMA_HOST", raising=False)
    monkeypatch.delenv("CHROMA_PORT", raising=False)
    return _message(file, "it is a file, not a folder")


@pytest.mark.parametrize(
    "page",
    [
        "pages/home.py",
        "pages/1_tokens.py",
        "pages/2_positions.py",
        "pages/3_attention.py",
        "pages/4_layers.py",
        "pages/5_output.py",
        "pages/6_embeddings.py",
    ],
)
def test_model_stations_work_without_the_data_dir(page, tiny_gpt2_dir, data_dir_is_a_file):
    at = app_test(page, str(tiny_gpt2_dir), TEXT).run()
    assert_clean(at)
    assert any("Fine-tuned checkpoints are not listed" in c.value for c in at.sidebar.caption)


@pytest.mark.parametrize("page", ["pages/7_search.py", "pages/8_training.py"])
def test_pages_that_write_say_why_the_data_dir_cannot_be_used(page, tiny_gpt2_dir, data_dir_is_a_file):
    at = app_test(page, str(tiny_gpt2_dir), TEXT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == [data_dir_is_a_file]  # once, on the page


# ---------------------------------------------------------------- the model store across sessions


def _fake_model(spec: str):
    """A stand-in for a loaded model: the store only reads `info.identity` (memory: never stale)."""
    from types import SimpleNamespace

    return SimpleNamespace(info=SimpleNamespace(spec=spec, source=spec, identity=f"memory:{spec}"))


class _SlowLoader:
    """Loads any spec at once except `slow`, whose load waits until `release` is set."""

    def __init__(self, slow: str) -> None:
        self.slow = slow
        self.started = threading.Event()  # the slow load is under way
        self.release = threading.Event()  # the slow load may finish
        self.calls: list[str] = []

    def __call__(self, spec: str, progress=None):
        self.calls.append(spec)
        if spec == self.slow:
            self.started.set()
            assert self.release.wait(WAIT), "the slow load was never released"
        return _fake_model(spec)


WAIT = 60  # seconds before a waiting test gives up instead of hanging; no assertion is about time


def test_a_slow_load_blocks_neither_another_loaded_model_nor_another_load():
    loader = _SlowLoader(slow="A")
    store = ModelStore(capacity=3, loader=loader)
    b = store.get("B")
    slow = threading.Thread(target=store.get, args=("A",))
    slow.start()
    try:
        assert loader.started.wait(WAIT)
        served = {}
        done = threading.Event()

        def other_session() -> None:
            served["B"] = store.get("B")  # already loaded: served from memory
            served["C"] = store.get("C")  # not loaded yet: loads now, while A is still loading
            done.set()

        threading.Thread(target=other_session, daemon=True).start()
        assert done.wait(WAIT), "a get of another spec waited for the slow load"
        assert not loader.release.is_set()  # A was still loading all along
        assert served["B"] is b
        assert served["C"].info.spec == "C"
    finally:
        loader.release.set()
        slow.join(WAIT)
    assert store.get("A").info.spec == "A"
    assert loader.calls == ["B", "A", "C"]  # each spec loaded once


def test_two_sessions_asking_for_one_spec_share_one_load():
    loader = _SlowLoader(slow="A")
    store = ModelStore(loader=loader)
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.get("A"))) for _ in range(2)]
    threads[0].start()
    assert loader.started.wait(WAIT)
    threads[1].start()
    loader.release.set()
    for t in threads:
        t.join(WAIT)
    assert loader.calls == ["A"]
    assert results[0] is results[1]


def test_the_store_drops_the_least_recently_used_model():
    loader = _SlowLoader(slow="none")
    store = ModelStore(capacity=2, loader=loader)
    store.get("A")
    store.get("B")
    store.get("A")  # A is now the most recently used
    store.get("C")  # one too many: B goes
    assert store.cached_specs() == ["A", "C"]
    store.get("B")
    assert loader.calls == ["A", "B", "C", "B"]
    assert store.cached_specs() == ["C", "B"]


@pytest.fixture
def switch_interval():
    """Restores the interpreter's switch interval (a process-wide setting) after the test."""
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


@pytest.mark.parametrize("interval", [0.005, LOAD_SWITCH_INTERVAL_S / 2])
def test_a_load_runs_with_the_short_switch_interval_and_never_lengthens_it(switch_interval, interval):
    sys.setswitchinterval(interval)
    seen = []

    def loader(spec, progress=None):
        seen.append(sys.getswitchinterval())  # in the load's own thread, while it loads
        return _fake_model(spec)

    ModelStore(loader=loader).get("A")
    expected = min(interval, LOAD_SWITCH_INTERVAL_S)
    assert seen == [pytest.approx(expected, rel=1e-3)]  # the interpreter keeps it in whole microseconds
    assert sys.getswitchinterval() == pytest.approx(expected, rel=1e-3)


# ---------------------------------------------------------------- loading in the background


def _wait_until_done(store: ModelStore, spec: str):
    """`store.start(spec)` once its load is over (it never waits itself)."""
    done = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        status = store.start(spec)
        if not status.loading:
            return status
        done.wait(0.01)
    raise AssertionError(f"the load of {spec} did not end")


def test_start_returns_at_once_and_get_waits_for_that_load_with_its_progress():
    loader = _SlowLoader(slow="A")
    reported = threading.Event()

    def reporting_loader(spec, progress):
        progress(0.5, "half-way through A")
        return loader(spec, progress)

    store = ModelStore(loader=reporting_loader)
    status = store.start("A")  # returns while A is still loading
    assert status.loading and status.model is None and status.error is None
    assert loader.started.wait(WAIT)
    assert store.start("A").message == "half-way through A"
    seen, got = [], {}

    def waiting_session() -> None:
        got["A"] = store.get("A", lambda f, m: (seen.append((f, m)), reported.set()))

    getter = threading.Thread(target=waiting_session)
    getter.start()
    try:
        assert reported.wait(WAIT)  # the waiting get passes the running load's progress on
        assert "A" not in got  # and has not returned: A is not loaded yet
        assert seen[0] == (0.5, "half-way through A")
    finally:
        loader.release.set()
        getter.join(WAIT)
    assert got["A"].info.spec == "A"
    assert loader.calls == ["A"]  # one load, begun by start, shared by get
    done = store.start("A")
    assert done.model is got["A"] and not done.loading and done.fraction == 1.0


def test_a_failed_load_keeps_its_error_for_start_and_get_tries_again():
    calls = []

    def loader(spec, progress):
        calls.append(spec)
        if len(calls) == 1:
            raise ModelLoadError(f"Could not load '{spec}': first try")
        return _fake_model(spec)

    store = ModelStore(loader=loader)
    store.start("X")
    status = _wait_until_done(store, "X")
    assert isinstance(status.error, ModelLoadError)
    assert str(status.error) == "Could not load 'X': first try"
    assert store.start("X").error is status.error  # kept and reported, not tried again by start
    assert calls == ["X"]
    assert store.get("X").info.spec == "X"  # asking for the model tries again
    assert calls == ["X", "X"]
    assert store.start("X").error is None


def test_get_raises_the_loads_error_to_every_waiting_session():
    def failing(spec, progress):
        raise ModelLoadError(f"'{spec}' is not a directory. Give a folder that holds a saved model.")

    store = ModelStore(loader=failing)
    message = "'nowhere' is not a directory. Give a folder that holds a saved model."
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        store.get("nowhere")
    assert _wait_until_done(store, "nowhere").error is not None


def test_start_sees_a_checkpoint_saved_again_and_loads_it_in_the_background(tmp_path, tiny_gpt2):
    path = str(_save_run(tiny_gpt2, tmp_path, steps=1))
    store = ModelStore()
    first = store.get(path)
    assert store.start(path).model is first  # files unchanged: loaded, nothing started
    _sharpen(tiny_gpt2)
    _save_run(tiny_gpt2, tmp_path, steps=2)
    status = _wait_until_done(store, path)  # the identity differs: read again in the background
    assert status.model is not first
    assert status.model.info.identity == directory_identity(path) != first.info.identity
    assert store.get(path) is status.model


def test_the_landing_page_draws_while_the_model_loads_and_a_station_gets_it(tiny_gpt2_dir, monkeypatch):
    gate, at_gate = threading.Event(), threading.Event()

    def gated_load(spec, progress):  # the real load of the tiny model, held until the gate opens
        progress(0.1, "Waiting at the gate…")
        at_gate.set()
        assert gate.wait(WAIT), "the gate was never opened"
        return load_model(spec, progress)

    store = ModelStore(loader=gated_load)
    monkeypatch.setattr(state, "_store", lambda: store)
    store.start(str(tiny_gpt2_dir))  # as the sidebar would; the page then finds it under way
    assert at_gate.wait(WAIT)
    home = app_test("pages/home.py", str(tiny_gpt2_dir)).run()
    assert_clean(home)
    assert home.title[0].value == "Vector Lab"
    assert [p.value for p in home.sidebar.get("progress")] == [10]  # the card shows the load's progress
    assert "Parameters" not in metrics(home)
    gate.set()
    station = app_test("pages/1_tokens.py", str(tiny_gpt2_dir)).run()  # waits for the same load
    assert_clean(station)
    assert station.title[0].value.startswith("1 ·")
    assert metrics(station)["Layers"] == "2"
    home.run()
    assert metrics(home)["Layers"] == "2"  # the landing page's next run shows the card
    assert store.cached_specs() == [str(tiny_gpt2_dir)]


IMPORT_SPY = """
import sys, threading
importers = {}

class Spy:
    def find_spec(self, name, path=None, target=None):
        if name in ("torch", "transformers"):
            importers.setdefault(name, threading.current_thread().name)

sys.meta_path.insert(0, Spy())
from streamlit.testing.v1 import AppTest
from ui import cores, state

at = AppTest.from_file("pages/home.py", default_timeout=120)
at.session_state[state.MODEL_SPEC] = sys.argv[1]
at.run()
assert not at.exception, at.exception
print(sorted(importers.items()))
state._store().get(sys.argv[1])  # the background load, which does import them
print(sorted(importers.items()))
"""


def _fresh_python(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
    """`script` run with `args` in a fresh interpreter from the project root (as a server process
    starts), required to exit cleanly; its completed process, stdout and stderr as text."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=None if env is None else {**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_landing_page_leaves_torch_and_transformers_to_the_loading_thread(tiny_gpt2_dir):
    spec = str(tiny_gpt2_dir)
    result = _fresh_python(IMPORT_SPY, spec)
    during, after = result.stdout.strip().splitlines()[-2:]
    loader = f"load {spec}"
    assert set(ast.literal_eval(during)) <= {("torch", loader), ("transformers", loader)}
    assert ast.literal_eval(after) == [("torch", loader), ("transformers", loader)]


# ---------------------------------------------------------------- widgets across pages, shared caches


def _persisted_page() -> None:
    """A page with one remembered slider, drawn only while `show` is on (as if on another page)."""
    import streamlit as st

    from ui import state

    if st.session_state.get("show", True):
        n_layer = st.session_state.get("n_layer", 12)
        st.slider("Layer", 0, n_layer - 1, **state.persist("layer", 3, allowed=range(n_layer)))


def test_a_persisted_widget_keeps_its_value_while_another_page_is_shown():
    at = AppTest.from_function(_persisted_page, default_timeout=TIMEOUT).run()
    assert at.slider(key="layer").value == 3
    at.slider(key="layer").set_value(7).run()
    at.session_state["show"] = False  # another page: Streamlit forgets the widget's own state
    at.run()
    assert "layer" not in at.session_state
    at.session_state["show"] = True
    at.run()
    assert not at.exception
    assert at.slider(key="layer").value == 7


def test_a_remembered_value_the_widget_no_longer_allows_goes_back_to_the_default():
    at = AppTest.from_function(_persisted_page, default_timeout=TIMEOUT).run()
    at.slider(key="layer").set_value(9).run()
    at.session_state["n_layer"] = 6  # another model, with fewer layers
    at.run()
    assert not at.exception
    assert at.slider(key="layer").value == 3


def test_the_token_page_remembers_its_settings_across_stations(tiny_gpt2_dir):
    at = app_test("app.py", str(tiny_gpt2_dir), TEXT).run()
    at.switch_page("pages/1_tokens.py").run()
    at.slider(key="tok_k").set_value(5).run()
    at.switch_page("pages/3_attention.py").run()
    at.switch_page("pages/1_tokens.py").run()
    assert_clean(at)
    assert at.slider(key="tok_k").value == 5


def test_derived_values_are_cached_by_the_functions_identity(tiny_gpt2):
    from core.inspection.attention import all_heads_check, head_patterns
    from core.inspection.trace import run_trace

    trace = run_trace(tiny_gpt2, TEXT)
    assert state.function_id(head_patterns) == "core.inspection.attention.head_patterns"
    patterns = state.derived(head_patterns, tiny_gpt2, trace)
    check = state.derived(all_heads_check, tiny_gpt2, trace)  # same model and text, another function
    assert type(patterns).__name__ == "HeadPatterns" and type(check).__name__ == "CheckResult"
    assert state.derived(head_patterns, tiny_gpt2, trace) is patterns
    with pytest.raises(TypeError, match=re.escape("cache a module-level function, not <function")):
        state.derived(lambda t: t.n_tokens, tiny_gpt2, trace)


READ_ONLY = "assignment destination is read-only"


def test_cached_arrays_shared_by_sessions_are_read_only(tiny_gpt2):
    from core.inspection.attention import head_patterns
    from core.inspection.trace import run_trace

    strings, norms, rows = state.vocabulary(tiny_gpt2)
    with pytest.raises(ValueError, match=re.escape(READ_ONLY)):
        norms[0] = 0.0
    with pytest.raises(ValueError, match=re.escape(READ_ONLY)):
        rows[0, 0] = 0.0
    with pytest.raises(TypeError):
        strings[0] = "x"  # a tuple
    trace = run_trace(tiny_gpt2, TEXT)
    lens = state.logit_lens(tiny_gpt2, trace, [0, 1])
    with pytest.raises(ValueError, match=re.escape(READ_ONLY)):
        lens.top_probs[0, 0, 0] = 0.0
    patterns = state.derived(head_patterns, tiny_gpt2, trace)
    with pytest.raises(ValueError, match=re.escape(READ_ONLY)):
        patterns.previous[0, 0] = 0.0
    # Marked through views: the model's own weights stay trainable.
    assert tiny_gpt2.model.get_input_embeddings().weight.detach().numpy().flags.writeable


# ---------------------------------------------------------------- the collector after loads


@pytest.fixture
def collector_off():
    """The cyclic collector off for the test (a process-wide setting), nothing left frozen after it."""
    was_on = gc.isenabled()
    gc.disable()
    gc.unfreeze()
    yield
    gc.unfreeze()
    if was_on:
        gc.enable()


def _wait_for_load_threads() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("load "):
            thread.join(WAIT)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_model_dropped_from_the_store_is_freed_without_the_collector(
    collector_off, family, tiny_gpt2_dir, tiny_llama_dir
):
    """What freezing after a load relies on: frozen objects are freed by reference counting alone, so
    a model must hold no reference cycle, or dropping it would keep its weights (its tokenizer may
    stay, shared with models whose tokenizer files are the same)."""
    first, other = (tiny_gpt2_dir, tiny_llama_dir) if family == "gpt2" else (tiny_llama_dir, tiny_gpt2_dir)
    store = ModelStore(capacity=1)
    loaded = store.get(str(first))
    weights, tokenizer = weakref.ref(next(loaded.model.parameters())), weakref.ref(loaded.tokenizer)
    del loaded
    store.get(str(other))  # one model kept: the first is dropped
    _wait_for_load_threads()
    assert store.cached_specs() == [str(other)]
    assert weights() is None
    assert tokenizer() is None or any(
        t is tokenizer() for t in tokenizer_cache._tokenizers.values()
    )  # shared


def test_a_load_that_imports_code_freezes_what_is_alive_others_not(collector_off, tmp_path, monkeypatch):
    name = "vectorlab_test_fresh_module"
    (tmp_path / f"{name}.py").write_text("LONG_LIVED = [[1], [2]]\n")
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, name, raising=False)

    def importing(spec, progress=None):
        importlib.import_module(name)
        return _fake_model(spec)

    ModelStore(loader=lambda spec, progress=None: _fake_model(spec)).get("A")
    _wait_for_load_threads()
    assert gc.get_freeze_count() == 0
    ModelStore(loader=importing).get("B")
    _wait_for_load_threads()
    assert gc.get_freeze_count() > 0
    assert not any(o is sys.modules[name].LONG_LIVED for o in gc.get_objects())  # frozen: never scanned


# ---------------------------------------------------------------- torch's threads across sessions


@pytest.mark.parametrize(
    ("sessions", "n_cores", "expected"), [(1, 2, 2), (2, 2, 1), (3, 8, 7), (2, 1, 1), (1, 1, 1)]
)
def test_a_session_leaves_one_core_to_the_others_while_they_are_connected(sessions, n_cores, expected):
    assert cores.threads_for(sessions, n_cores) == expected


@pytest.fixture
def torch_threads():
    """Restores torch's thread count (this thread's, and the one later threads start with)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_share_cores_sets_this_thread_and_the_threads_started_after_it(torch_threads, monkeypatch):
    alone = cores.cores()
    monkeypatch.setattr(cores, "connected_sessions", lambda: 2)
    n = cores.share_cores()
    assert n == max(1, alone - 1) == torch.get_num_threads()
    seen = []
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert seen == [n]
    monkeypatch.setattr(cores, "connected_sessions", lambda: 1)
    assert cores.share_cores() == alone == torch.get_num_threads()


def test_outside_a_server_one_session_is_counted():
    assert cores.connected_sessions() == 1


def _priority_in_a_thread(sessions: int, monkeypatch) -> tuple[bool, tuple, tuple]:
    """yield_to_other_sessions in a fresh thread (its priority cannot be raised again): whether it
    lowered, and the thread's (nice value, scheduling policy) before and after."""
    monkeypatch.setattr(cores, "connected_sessions", lambda: sessions)
    seen = []

    def run():
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid), os.sched_getscheduler(tid)
        lowered = cores.yield_to_other_sessions()
        seen.append((lowered, before, (os.getpriority(os.PRIO_PROCESS, tid), os.sched_getscheduler(tid))))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_long_work_yields_to_other_sessions_only_while_they_are_connected(monkeypatch):
    lowered, before, after = _priority_in_a_thread(1, monkeypatch)
    assert not lowered and after == before
    lowered, before, after = _priority_in_a_thread(2, monkeypatch)
    if before[0] >= cores.LONG_WORK_NICE or before[1] == os.SCHED_IDLE:
        pytest.skip("the tests already run at that priority or lower")
    assert lowered and after == (cores.LONG_WORK_NICE, os.SCHED_IDLE)  # runs only on an idle core
    this = threading.get_native_id()  # other threads keep theirs
    assert (os.getpriority(os.PRIO_PROCESS, this), os.sched_getscheduler(this)) == before


@pytest.mark.parametrize("on_before", [True, False])
def test_the_collector_is_off_during_a_load_and_as_it_was_after(on_before):
    seen = []

    def loader(spec, progress=None):
        seen.append(gc.isenabled())  # in the load's own thread, while it loads
        return _fake_model(spec)

    was_on = gc.isenabled()
    (gc.enable if on_before else gc.disable)()
    try:
        ModelStore(loader=loader).get("A")
        _wait_for_load_threads()
        assert seen == [False]
        assert gc.isenabled() is on_before
    finally:
        (gc.enable if was_on else gc.disable)()


def test_the_collector_stays_off_until_the_last_of_two_loads_is_over():
    loader = _SlowLoader(slow="A")
    store = ModelStore(loader=loader)
    assert gc.isenabled()
    store.start("A")
    assert loader.started.wait(WAIT)
    store.get("B")  # a second load, begun and over while A's runs
    assert not gc.isenabled()
    loader.release.set()
    store.get("A")
    _wait_for_load_threads()
    assert gc.isenabled()


def test_a_load_longer_than_the_limit_runs_with_the_collector_on(monkeypatch):
    from core.model import store as store_module

    monkeypatch.setattr(store_module, "COLLECTOR_PAUSE_LIMIT_S", 0.05)
    loader = _SlowLoader(slow="A")
    store = ModelStore(loader=loader)
    store.start("A")
    assert loader.started.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while not gc.isenabled() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gc.isenabled()  # while A still loads
    loader.release.set()
    store.get("A")
    _wait_for_load_threads()
    assert gc.isenabled()


SERVER_STARTS = """
import asyncio, json, sys, threading

import core.inspection.tokens
import core.inspection.trace
import serve
from ui import state

async def main():
    spec = state.default_spec()
    before = state._store().cached_specs()
    async with serve._load_while_starting(None):  # the server's start, no session anywhere
        for thread in threading.enumerate():
            if thread.name == serve.PREPARING:
                await asyncio.to_thread(thread.join, float(sys.argv[1]))
    after = state._store().cached_specs()

    def traced_again(*args, **kwargs):
        raise AssertionError("the default text was traced again")

    core.inspection.trace.run_trace = traced_again  # what a page's trace computes on a cache miss
    core.inspection.tokens.vocab_strings = traced_again  # what the vocabulary reads on a miss
    loaded = state._store().get(spec)
    trace = state._trace(state.model_key(loaded), state.DEFAULT_TEXT, state.TRACE_TOKENS, loaded)
    strings, _, _ = state.vocabulary(loaded)
    assert len(strings) == loaded.info.vocab_size
    print(json.dumps({"before": before, "after": after, "spec": spec, "tokens": trace.token_ids.tolist()}))

asyncio.run(main())
"""


COMPONENT_SEARCH = """
import json

from streamlit.components.v2 import manifest_scanner
from streamlit.components.v2.component_manager import BidiComponentManager

searches = []
manifest_scanner.scan_component_manifests = lambda *args, **kwargs: searches.append(1) or []
BidiComponentManager().discover_and_register_components()  # what Streamlit's runtime calls as it starts
before = len(searches)
import serve  # noqa: E402

BidiComponentManager().discover_and_register_components()
print(json.dumps({"before": before, "after": len(searches) - before}))
"""


def test_the_server_skips_streamlits_search_for_installed_components():
    """serve.py leaves out the runtime's read of every installed package's metadata (Vector Lab has no
    custom components): Streamlit searches without it, not once serve.py is loaded."""
    out = _fresh_python(COMPONENT_SEARCH, env={"HF_HUB_OFFLINE": "1"}, timeout=TIMEOUT)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"before": 1, "after": 0}


def test_the_server_prepares_the_default_model_and_text_before_any_session(tiny_gpt2_dir):
    """serve.py (what `make run` serves) loads the default model, traces the default text and reads
    the vocabulary as the server starts: the first page opened finds them, with no browser session
    ever connected. A fresh process, as a server is."""
    env = {"VECTORLAB_MODEL": str(tiny_gpt2_dir), "HF_HUB_OFFLINE": "1"}
    out = _fresh_python(SERVER_STARTS, str(TIMEOUT), env=env, timeout=TIMEOUT + 60)
    assert "missing ScriptRunContext" not in out.stderr  # nothing it does tries to draw on a page
    assert "Loading weights" not in out.stderr  # transformers' own bar: the pages show the progress
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["before"] == [] and seen["after"] == [seen["spec"]] == [str(tiny_gpt2_dir)]
    loaded = load_model(str(tiny_gpt2_dir))
    assert seen["tokens"] == loaded.tokenizer(state.DEFAULT_TEXT)["input_ids"]
