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
from core.model import tokenizer_cache
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


TOKENIZER_TEXTS = [
    "Hello world",
    " The capital of France is Paris.",
    "naïve café — 日本語\n\n  two  spaces\tand a tab",
    "<|endoftext|> after the end <|im_start|>user",
    "",
    "ab" * 400,
]


@pytest.mark.parametrize("which", ["gpt2 directory", "bundled"])
def test_a_tokenizer_read_from_its_file_is_the_one_autotokenizer_builds(which, tiny_gpt2_dir, smollm2):
    from transformers import AutoTokenizer

    source = str(tiny_gpt2_dir) if which == "gpt2 directory" else smollm2.info.source
    ours = load_model(source).tokenizer
    auto = AutoTokenizer.from_pretrained(source)
    if which == "gpt2 directory":  # two different ways of building it are compared
        assert type(auto).__name__ == "GPT2Tokenizer" and type(ours).__name__ == "TokenizersBackend"
    assert ours.get_vocab() == auto.get_vocab()
    assert ours.all_special_tokens == auto.all_special_tokens
    assert (ours.bos_token_id, ours.eos_token_id, ours.unk_token_id) == (
        auto.bos_token_id,
        auto.eos_token_id,
        auto.unk_token_id,
    )
    assert ours.chat_template == auto.chat_template
    for text in TOKENIZER_TEXTS:
        for special in (True, False):
            a = ours(text, return_offsets_mapping=True, add_special_tokens=special)
            b = auto(text, return_offsets_mapping=True, add_special_tokens=special)
            assert a["input_ids"] == b["input_ids"] and a["offset_mapping"] == b["offset_mapping"], text
        assert ours.decode(a["input_ids"]) == auto.decode(b["input_ids"])


def test_settings_applied_on_top_of_the_file_keep_autotokenizer(tmp_path, tiny_gpt2_dir):
    """A GPT-2 tokenizer asked to add a prefix space is rebuilt by its class: not read from the file."""
    import shutil

    from transformers import AutoConfig

    folder = tmp_path / "gpt2-prefix-space"
    shutil.copytree(tiny_gpt2_dir, folder)
    config = AutoConfig.from_pretrained(folder)
    assert tokenizer_cache._serialized_tokenizer(folder, config)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "add_prefix_space": True}))
    assert not tokenizer_cache._serialized_tokenizer(folder, config)
    loaded = load_model(str(folder))
    assert type(loaded.tokenizer).__name__ == "GPT2Tokenizer"
    assert loaded.tokenizer("Hello")["input_ids"] == loaded.tokenizer(" Hello")["input_ids"]


def test_models_whose_tokenizer_files_are_the_same_share_one_tokenizer(tmp_path, tiny_gpt2_dir):
    import shutil

    folders = [tmp_path / name for name in ("a", "b", "c")]
    for folder in folders:
        shutil.copytree(tiny_gpt2_dir, folder)
    settings = json.loads((folders[2] / "tokenizer_config.json").read_text())
    (folders[2] / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 77}))
    a, b, c = (load_model(str(folder)) for folder in folders)
    assert a.tokenizer is b.tokenizer and a.model is not b.model
    assert (
        c.tokenizer is not a.tokenizer and c.tokenizer.model_max_length == 77 != a.tokenizer.model_max_length
    )


def test_weights_are_read_ahead_whole_before_transformers_copies_them(tmp_path, tiny_gpt2_dir, monkeypatch):
    """The weight files go through the page cache in calls that let the interpreter go (sendfile to
    /dev/null) before from_pretrained's copies, which hold it: every byte of every shard, first."""
    if not hasattr(os, "sendfile"):
        pytest.skip("no os.sendfile here: the plain-read fallback is tested below")
    from transformers import AutoModelForCausalLM

    for f in tiny_gpt2_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model.safetensors").rename(tmp_path / "model-00001-of-00002.safetensors")
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(os.urandom(3 * 4096 + 5))  # not indexed
    events: list[tuple] = []
    send, from_pretrained = os.sendfile, AutoModelForCausalLM.from_pretrained.__func__

    def spy_send(out_fd, in_fd, offset, count):
        sent = send(out_fd, in_fd, offset, count)
        events.append(("read", os.readlink(f"/proc/self/fd/{in_fd}"), offset, sent))
        return sent

    def spy_from_pretrained(cls, *args, **kwargs):
        events.append(("from_pretrained",))
        return from_pretrained(cls, *args, **kwargs)

    monkeypatch.setattr(os, "sendfile", spy_send)
    monkeypatch.setattr(models, "READ_AHEAD_CHUNK", 4096)  # several calls per file
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy_from_pretrained))
    with pytest.raises(ModelLoadError):  # the index file is missing: transformers finds no weights
        load_model(str(tmp_path))
    assert events[-1] == ("from_pretrained",)
    reads = events[:-1]
    for shard in tmp_path.glob("*.safetensors"):
        spans = sorted((offset, offset + sent) for _, name, offset, sent in reads if name == str(shard))
        covered = 0
        for start, end in spans:
            assert start <= covered
            covered = max(covered, end)
        assert covered == shard.stat().st_size and len(spans) > 1


def test_read_ahead_falls_back_to_plain_reads(tmp_path, monkeypatch):
    if not Path("/proc/self/io").exists():
        pytest.skip("counts the bytes read through /proc/self/io (Linux)")

    def refuse(*args):
        raise OSError(22, "Invalid argument")

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(1 << 20))
    monkeypatch.setattr(os, "sendfile", refuse)

    def bytes_read() -> int:
        fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
        return int(fields["rchar"])

    before = bytes_read()
    models._read_into_page_cache(weights)
    assert bytes_read() - before >= weights.stat().st_size


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
