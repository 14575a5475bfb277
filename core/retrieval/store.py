"""Where the vector index lives: Chroma's collection-name rule, the client (embedded files or a
`chroma run` server) and our registered embedding function, which Chroma always gets instead of its
default one (that would download a model at run time)."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chromadb
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.config import Settings
from chromadb.utils.embedding_functions import register_embedding_function

from core.errors import InputError, SettingsError
from core.paths import data_dir
from core.retrieval.encoders import MINILM_NAME, Embedder, load_sentence_embedder

log = logging.getLogger(__name__)

CHROMA_HOST_ENV = "CHROMA_HOST"  # set (and/or CHROMA_PORT) to use a Chroma server instead of local files
CHROMA_PORT_ENV = "CHROMA_PORT"
EMBEDDING_FUNCTION_NAME = "vectorlab-minilm"
_COLLECTION_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]")  # used with fullmatch


def collection_name_problem(name: object) -> str | None:
    """Why Chroma would refuse `name` for a collection, or None if it is fine. Chroma's rule: 3-512
    characters from [a-zA-Z0-9._-], starting and ending with a letter or digit, no '..', and not an
    IP address."""
    if not isinstance(name, str) or not _COLLECTION_NAME.fullmatch(name):
        return (
            f"collection {name!r} is not a valid Chroma name: use 3-512 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit."
        )
    if ".." in name:
        return f"collection {name!r} is not a valid Chroma name: it must not contain '..'."
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return None
    return f"collection {name!r} is not a valid Chroma name: it must not be an IP address."


# --- Chroma plumbing ------------------------------------------------------------------------------


@register_embedding_function
class VectorLabEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma's view of our encoder. Always passed to collections: Chroma's default would download
    a model at run time. Rebuilt from its config (bundled MiniLM, loaded lazily) when Chroma asks."""

    def __init__(self, embedder: Embedder | None = None) -> None:
        self._embedder = embedder
        self._model = embedder.name if embedder is not None else MINILM_NAME

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_sentence_embedder()
        return self._embedder

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embedder.encode(list(input)))

    @staticmethod
    def name() -> str:
        return EMBEDDING_FUNCTION_NAME

    def get_config(self) -> dict[str, Any]:
        return {"model": self._model}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> VectorLabEmbeddingFunction:
        VectorLabEmbeddingFunction.validate_config(config)
        return VectorLabEmbeddingFunction()

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if config.get("model", MINILM_NAME) != MINILM_NAME:
            raise ValueError(
                f"{EMBEDDING_FUNCTION_NAME} can only rebuild {MINILM_NAME}, not {config.get('model')!r}; "
                "pass the embedder explicitly."
            )

    def default_space(self) -> str:  # type: ignore[override]
        return "cosine"

    def supported_spaces(self) -> list[str]:  # type: ignore[override]
        return ["cosine", "ip", "l2"]


@dataclass(frozen=True)
class StoreLocation:
    """Where `make_client` connects: a Chroma server, or Chroma's files on this machine."""

    kind: str  # "server" or "embedded"
    host: str = ""  # server only
    port: int = 0  # server only
    path: Path | None = None  # embedded only, resolved

    @property
    def key(self) -> str:
        """Names the store in cache keys: two data directories are two stores."""
        return f"server:{self.host}:{self.port}" if self.kind == "server" else f"embedded:{self.path}"

    def describe(self) -> str:
        if self.kind == "server":
            return f"the Chroma server at {self.host}:{self.port} (from {CHROMA_HOST_ENV}/{CHROMA_PORT_ENV})"
        return f"embedded Chroma, files in {self.path}"


def store_location(path: str | Path | None = None) -> StoreLocation:
    """Where `make_client(path)` will connect, worked out without connecting."""
    host = os.environ.get(CHROMA_HOST_ENV, "").strip()
    port_text = os.environ.get(CHROMA_PORT_ENV, "").strip()
    if path is None and (host or port_text):
        try:
            port = int(port_text or 8000)
        except ValueError:
            raise InputError(f"{CHROMA_PORT_ENV} must be a port number, got {port_text!r}.") from None
        return StoreLocation(kind="server", host=host or "localhost", port=port)
    folder = Path(path) if path is not None else data_dir() / "chroma"
    return StoreLocation(kind="embedded", path=folder.resolve())


def make_client(path: str | Path | None = None) -> Any:
    """A Chroma client: embedded at `path` if given; else a server if CHROMA_HOST/CHROMA_PORT are set;
    else embedded under `data_dir()/chroma`. Telemetry is off."""
    settings = Settings(anonymized_telemetry=False)
    location = store_location(path)
    if location.kind == "server":
        host, port = location.host, location.port
        try:
            client = chromadb.HttpClient(host=host, port=port, settings=settings)
            client.heartbeat()
        except Exception as e:
            raise InputError(
                f"Could not reach the Chroma server at {host}:{port} ({e}). Start it with `chroma run "
                f"--port {port}`, or unset {CHROMA_HOST_ENV}/{CHROMA_PORT_ENV} to use local files."
            ) from e
        log.info("Using the Chroma server at %s:%d", host, port)
        return client
    folder = location.path
    assert folder is not None
    folder.mkdir(parents=True, exist_ok=True)
    log.info("Using the local Chroma database in %s", folder)
    return chromadb.PersistentClient(path=str(folder), settings=settings)


def close_client(client: Any) -> None:
    """Release a client's files and connections (safe to call twice)."""
    close = getattr(client, "close", None)
    if callable(close):
        close()


# --- HNSW index settings --------------------------------------------------------------------------

HNSW_LIMITS = {"max_neighbors": (4, 128), "ef_construction": (10, 2000), "ef_search": (10, 5000)}
HNSW_FIXED = ("max_neighbors", "ef_construction")  # Chroma builds the graph with these: fixed at creation
HNSW_CHANGEABLE = ("ef_search",)  # `collection.modify` changes it later; Chroma reads it when it loads
# the graph, so a change shows once the store is opened again (app or `chroma run` restarted)
CHROMA_HNSW_DEFAULTS = {"max_neighbors": 16, "ef_construction": 100, "ef_search": 100}


@dataclass(frozen=True)
class HnswSettings:
    """How Chroma builds and searches a collection's HNSW graph. Defaults chosen by measurement
    (bench/bench_scale.py: recall@10 against exact search on 100k MiniLM vectors of real text)."""

    max_neighbors: int = 32  # M, links per node (Chroma: 16); more = better recall, more memory. Fixed
    ef_construction: int = 200  # candidates kept while linking a new node (Chroma: 100). Fixed
    ef_search: int = 200  # candidates kept per query (Chroma: 100); can be changed on an existing collection
    # (shows once the store is opened again)

    def __post_init__(self) -> None:
        for name, (low, high) in HNSW_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SettingsError(f"HNSW {name} must be a whole number, got {value!r}; try {low}-{high}.")
            if not low <= value <= high:
                raise SettingsError(
                    f"HNSW {name} must be between {low} and {high}, got {value}; the default is "
                    f"{getattr(HnswSettings, name)}."
                )

    def configuration(self, space: str = "cosine") -> dict[str, Any]:
        """Chroma's `configuration=` for a new collection."""
        return {
            "hnsw": {
                "space": space,
                "max_neighbors": self.max_neighbors,
                "ef_construction": self.ef_construction,
                "ef_search": self.ef_search,
            }
        }


def collection_hnsw(collection: Any) -> dict[str, int]:
    """The HNSW settings a collection was built with, as Chroma reports them (its defaults where it
    reports none). Not validated: a collection made elsewhere may use values beyond HNSW_LIMITS."""
    hnsw = (collection.configuration or {}).get("hnsw") or {}
    return {name: int(hnsw.get(name) or default) for name, default in CHROMA_HNSW_DEFAULTS.items()}


def apply_hnsw(collection: Any, wanted: HnswSettings) -> list[str]:
    """Bring an open collection to `wanted` where Chroma allows it (ef_search); returns one note per
    setting that differs but is fixed at creation (the collection keeps its own value)."""
    have = collection_hnsw(collection)
    set_ef_search(collection, wanted.ef_search)
    return [
        f"{name} stays {have[name]} (asked for {getattr(wanted, name)}): it is fixed when the collection "
        "is created; start a new collection to use another value."
        for name in HNSW_FIXED
        if have[name] != getattr(wanted, name)
    ]


def set_ef_search(collection: Any, ef_search: int) -> None:
    """Change an existing collection's ef_search (the one HNSW setting Chroma lets change later).
    Chroma reads it when it loads the collection's graph: a process that already searched this
    collection keeps the old value until the store is opened again (measured with Chroma 1.5.9)."""
    HnswSettings(ef_search=ef_search)  # validates it
    before = collection_hnsw(collection)["ef_search"]
    if before != ef_search:
        collection.modify(configuration={"hnsw": {"ef_search": ef_search}})
        log.info("ef_search of %s: %d -> %d", collection.name, before, ef_search)
