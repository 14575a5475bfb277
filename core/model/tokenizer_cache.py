"""Tokenizers for loaded models: read from tokenizer.json by the tokenizers library where that gives
the tokenizer AutoTokenizer would build, and shared between models whose tokenizer files are byte for
byte the same. Reading one holds the interpreter (a page of another session cannot run meanwhile)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

# Tokenizer classes that add nothing to the `tokenizers` library's own file, tokenizer.json: read by the
# library itself they give the same tokenizer. AutoTokenizer would build a GPT2Tokenizer by parsing
# the file's whole vocabulary and merges into Python objects first, ~0.25 s for GPT-2 holding the
# interpreter, during which no other session's page can run.
_SERIALIZED_TOKENIZER_CLASSES = frozenset(
    {"GPT2Tokenizer", "GPT2TokenizerFast", "PreTrainedTokenizerFast", "TokenizersBackend"}
)


def local_file(source: str | Path, name: str) -> Path | None:
    """`name` in a model directory, or in the Hugging Face cache's snapshot of a Hub id; None if absent."""
    if Path(source).is_dir():
        found = Path(source) / name
        return found if found.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(str(source), name)
    except ValueError:  # not a valid repo id
        return None
    return Path(cached) if isinstance(cached, str) else None


def _serialized_tokenizer(source: str | Path, config) -> bool:
    """True when `source`'s tokenizer is all in its tokenizer.json (see _SERIALIZED_TOKENIZER_CLASSES)."""
    settings_file = local_file(source, "tokenizer_config.json")
    if local_file(source, "tokenizer.json") is None or settings_file is None:
        return False
    try:
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    name = settings.get("tokenizer_class") or ("GPT2Tokenizer" if config.model_type == "gpt2" else None)
    # settings the GPT-2 class applies on top of the file
    rebuilt = any(settings.get(k) for k in ("add_prefix_space", "add_bos_token", "add_eos_token"))
    return name in _SERIALIZED_TOKENIZER_CLASSES and not rebuilt


# Files a tokenizer is read from (by name prefix); the model's weights and settings are not among them.
_TOKENIZER_FILES = (
    "tokenizer", "special_tokens_map", "added_tokens", "chat_template", "vocab", "merges", "spiece",
)  # fmt: skip
_TOKENIZERS_KEPT = 4
_tokenizers: OrderedDict[str, Any] = OrderedDict()  # content digest -> tokenizer, oldest use first
_tokenizers_lock = threading.Lock()


def tokenizer_digest(source: str | Path, model_type: str) -> str | None:
    """A hash of the tokenizer files' names and bytes in a model directory (or the cached snapshot of
    a Hub id) and of the model type (which picks the tokenizer class when the files do not); None
    when there are none to read."""
    found = local_file(source, "tokenizer_config.json") or local_file(source, "tokenizer.json")
    if found is None:
        return None
    digest = hashlib.sha256(model_type.encode())
    files = sorted(f for f in found.parent.iterdir() if f.name.startswith(_TOKENIZER_FILES) and f.is_file())
    for f in files:
        digest.update(f"\0{f.name}\0".encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def shared_tokenizer(source: str | Path, local_only: bool, config):
    """`source`'s tokenizer, shared with any model loaded before whose tokenizer files are byte for byte
    the same (the GPT-2 family, a fine-tuning run's checkpoints and its base): reading a tokenizer
    holds the interpreter ~0.15 s, during which no other session's page runs. Nothing changes a
    tokenizer once loaded but `wrap`'s padding default, the same for every model."""
    from transformers import AutoTokenizer, TokenizersBackend

    key = tokenizer_digest(source, config.model_type)
    with _tokenizers_lock:
        if key is not None and key in _tokenizers:
            _tokenizers.move_to_end(key)
            return _tokenizers[key]
    if _serialized_tokenizer(source, config):
        tokenizer = TokenizersBackend.from_pretrained(source, local_files_only=local_only)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    if key is not None:
        with _tokenizers_lock:
            tokenizer = _tokenizers.setdefault(key, tokenizer)  # another thread's, if it was first
            _tokenizers.move_to_end(key)
            while len(_tokenizers) > _TOKENIZERS_KEPT:
                _tokenizers.popitem(last=False)
    return tokenizer
