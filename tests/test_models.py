"""Model loading by spec: the offline GPT-2 tokenizer, local dirs, the HF cache, the bundled SmolLM2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ModelLoadError, UnsupportedModelError
from core.model import loading as models
from core.model.loading import load_model

ROOT = Path(__file__).resolve().parent.parent


def test_gpt2_tokenizer_ids_match_gpt2():
    tok = models.gpt2_tokenizer()
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok(" the")["input_ids"] == [262]
    assert len(tok) == 50257
    assert tok.decode([15496, 995]) == "Hello world"


def test_wrap_describes_both_families(tiny_gpt2, tiny_llama):
    g, ll = tiny_gpt2.info, tiny_llama.info
    assert (g.family, g.n_layer, g.n_head, g.n_kv_head, g.d_model, g.d_head) == ("gpt2", 2, 2, 2, 32, 16)
    assert g.position_scheme == "learned absolute table (wpe)"
    assert (ll.family, ll.n_head, ll.n_kv_head, ll.d_head) == ("llama", 4, 2, 8)
    assert ll.position_scheme.startswith("rotary (RoPE, θ=")
    assert g.n_params == sum(p.numel() for p in tiny_gpt2.model.parameters())
    assert tiny_gpt2.model.config._attn_implementation == "eager"
    assert not tiny_gpt2.model.training


def test_local_directory_loads_same_weights(tiny_gpt2_dir, _tiny_gpt2_master):
    loaded = load_model(str(tiny_gpt2_dir))
    assert loaded.info.family == "gpt2"
    assert loaded.info.reason == "A local model directory."
    a = loaded.model.transformer.wte.weight
    b = _tiny_gpt2_master.model.transformer.wte.weight
    assert (a == b).all()
    assert loaded.tokenizer("Hello world")["input_ids"] == [15496, 995]


def test_unknown_hub_id_says_cache_and_hub(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=1.5: False)
    with pytest.raises(
        ModelLoadError,
        match=re.escape(
            "Could not load 'no-such-org/no-such-model': it is not in the local Hugging Face cache "
            "and the Hub "
            "is unreachable."
        ),
    ):
        load_model("no-such-org/no-such-model")


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(
        ModelLoadError, match=re.escape(f"'{tmp_path}' is not a model directory: it has no config.json.")
    ):
        load_model(str(tmp_path))


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"\0\1")
    with pytest.raises(ModelLoadError, match=re.escape(f"'{f}' is not a directory.")):
        load_model(str(f))


def test_nonsense_spec():
    with pytest.raises(ModelLoadError, match=re.escape("is neither a Hub model id")):
        load_model("a/b/c d")


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import BertConfig

    BertConfig(
        vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    ).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=re.escape("not supported yet: bert")):
        load_model(str(tmp_path))


def test_corrupt_weights_give_a_message(tmp_path, tiny_gpt2_dir):
    for f in tiny_gpt2_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=re.escape(f"Could not load '{tmp_path}'")):
        load_model(str(tmp_path))


def _make_hf_cache(cache: Path, repo: str, source: Path) -> None:
    """Lay out `source` as the Hub cache does for `repo`: models--X/refs/main + snapshots/<sha>/."""
    sha = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / sha
    snap.mkdir(parents=True)
    for f in source.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(sha)


def _load_in_subprocess(env_extra: dict[str, str], spec: str) -> dict:
    # huggingface_hub reads HF_HUB_CACHE at import, so a fresh process is the honest way to point it.
    code = (
        "import json, dataclasses; from core.model.loading import load_model; "
        f"print(json.dumps(dataclasses.asdict(load_model({spec!r}).info)))"
    )
    env = {**os.environ, **env_extra}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gpt2_from_local_hf_cache_and_auto_prefers_it(tmp_path, tiny_gpt2_dir):
    cache = tmp_path / "hub"
    _make_hf_cache(cache, "gpt2", tiny_gpt2_dir)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    named = _load_in_subprocess(env, "gpt2")
    assert (named["family"], named["source"], named["d_model"]) == ("gpt2", "gpt2", 32)
    assert named["reason"] == "From the local Hugging Face cache."
    auto = _load_in_subprocess(env, "auto")
    assert (auto["spec"], auto["family"], auto["n_layer"]) == ("auto", "gpt2", 2)
    assert auto["reason"] == "GPT-2 found — the model the stations were written for."
    # Both name the cached snapshot's files, so a newer download is a new identity (tests/test_state.py).
    assert named["identity"].startswith("hub:dir:") and auto["identity"] == named["identity"]


@pytest.mark.slow
def test_interrupted_conversion_leaves_nothing_loadable(tmp_path, monkeypatch):
    monkeypatch.setenv("VECTORLAB_CACHE_DIR", str(tmp_path))
    from transformers import PreTrainedModel

    def crash(*_a, **_k):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        models.bundled_model_dir()
    assert list(tmp_path.iterdir()) == []  # no half-written model, no temp dir left behind


@pytest.mark.slow
def test_bundled_smollm2_predicts_paris(smollm2):
    from core.inspection.trace import run_trace

    info = smollm2.info
    assert (info.family, info.n_layer, info.n_head, info.n_kv_head, info.d_model) == ("llama", 30, 9, 3, 576)
    assert (Path(info.source) / "model.safetensors").exists()
    trace = run_trace(smollm2, "The capital of France is")
    assert smollm2.tokenizer.decode([trace.top_ids[-1, 0]]).strip() == "Paris"


@pytest.mark.slow
def test_auto_falls_back_to_bundled_offline(smollm2, monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=1.5: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model("auto")
    assert loaded.info.family == "llama"
    assert loaded.info.reason == "GPT-2 was not reachable — using the bundled SmolLM2-135M."
