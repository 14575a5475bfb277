"""Fine-tuned checkpoints on disk: atomic saves of a loadable HF model directory plus its settings and
loss history under `data_dir()/checkpoints/<name>/`, the listing the model picker shows, and the
clean-up of what interrupted saves leave behind."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import InputError, ModelLoadError
from core.paths import data_dir

log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
HISTORY_FILE = "history.json"
# A directory counts as a checkpoint only when all of these are present.
REQUIRED_FILES = ("config.json", "model.safetensors", SETTINGS_FILE, HISTORY_FILE)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # used with fullmatch: "$" would accept "\n"
_SCRATCH_PREFIX = "."  # temp and retired directories start with a dot and are never listed
# Scratch folders beside the checkpoints, ".<name>.<kind>-<random>":
#   tmp  a save being written (complete or not); never promoted, since the save did not finish
#   old  a previous checkpoint stepped aside for a new one; always complete (renamed, never edited)
#   del  a folder being deleted (a retired "old" one, or a deleted checkpoint); never restored
_SCRATCH = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|del)-[^.]+$")


@dataclass(frozen=True)
class CheckpointInfo:
    """One saved fine-tuning run, as the model picker lists it."""

    name: str  # directory name under checkpoints/
    path: Path  # a model directory `load_model(str(path))` / `from_pretrained` can load
    base_model: str  # what was fine-tuned (a spec such as "gpt2" or a directory)
    steps: int  # optimizer steps taken when this was saved
    final_loss: float | None  # training loss at the last step (None: saved before any step)
    created: str  # ISO-8601 UTC time of the save


@dataclass
class LoadedCheckpoint:
    """A checkpoint loaded back: the model (eval mode, eager attention), its tokenizer and records."""

    model: Any
    tokenizer: Any
    info: CheckpointInfo
    settings: dict  # settings.json: the TrainConfig, the data summary, the base model
    history: list[dict]  # history.json: one TrainStep dict per step


def checkpoints_dir(root: Path | None = None) -> Path:
    """The folder holding every checkpoint (created if missing)."""
    path = Path(root) if root is not None else data_dir() / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(name: str) -> str:
    """Return `name` if it is a safe directory name; InputError with the rule otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(
            f"Checkpoint name {name!r} cannot be used: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (for example 'gpt2-poems')."
        )
    return name


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, allow_nan=True), encoding="utf-8")


def save_checkpoint(
    model: Any,
    tokenizer: Any,
    name: str,
    settings: dict,
    history: Sequence[dict],
    root: Path | None = None,
) -> CheckpointInfo:
    """Write `model`, `tokenizer`, settings.json and history.json to checkpoints/<name>/ atomically.

    Everything is written into a temporary sibling directory first; only a complete directory is
    renamed into place, so a crash mid-save leaves the previous checkpoint (or none), never a
    half-written one. `settings` should hold "base_model", "steps" and "final_loss".
    """
    parent = checkpoints_dir(root)
    target = parent / check_name(name)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    settings = {**settings, "created": created}
    with _exclusive(parent):
        clean_up(parent, _locked=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{name}.tmp-", dir=parent))
        try:
            # transformers 5 always writes safetensors (its `safe_serialization=` flag is gone).
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            _write_json(tmp / HISTORY_FILE, list(history))
            _write_json(tmp / SETTINGS_FILE, settings)  # written last: its presence marks a whole save
            _swap_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("saved checkpoint %s (step %s)", target, settings.get("steps"))
    return _info(target, settings)


def _scratch_name(target: Path, kind: str) -> Path:
    return target.with_name(f"{_SCRATCH_PREFIX}{target.name}.{kind}-{uuid.uuid4().hex[:8]}")


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished `tmp` to `target`, retiring an older `target` first.

    A directory cannot be renamed over a non-empty one, so the old one steps aside to ".old-", the
    new one takes its place, and only then is the old one renamed to ".del-" and deleted. Every step
    is one rename, so a kill at any point leaves either `target` whole (new or old) or no `target`
    and a whole ".old-" copy that `clean_up` puts back; a half-deleted folder is always a ".del-".
    """
    retired = None
    if target.exists():
        retired = _scratch_name(target, "old")
        os.replace(target, retired)
    try:
        os.replace(tmp, target)
    except BaseException:
        if retired is not None:
            os.replace(retired, target)  # put the previous checkpoint back
        raise
    if retired is not None:
        _delete(retired, target.name)


def _delete(path: Path, name: str) -> None:
    """Remove checkpoint `name`'s folder `path` (the checkpoint or a retired copy of it), renamed to
    ".del-" first so a kill mid-way never leaves a half-deleted folder under a name that is restored."""
    doomed = _scratch_name(path.with_name(name), "del")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


@contextmanager
def _exclusive(parent: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the checkpoints folder's lock (an flock on the folder itself) for a save, a delete or a
    clean-up; yields False at once, without the lock, when `wait` is off and someone else holds it.

    Saves in other threads and other processes (the command line) take it too, so a clean-up never
    mistakes a save in progress for leftovers. The kernel drops the lock of a killed process.
    """
    fd = os.open(parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def clean_up(root: Path | None = None, *, _locked: bool = False) -> list[str]:
    """Tidy what killed saves and deletes left in the checkpoints folder; returns what it did.

    A ".old-" copy whose checkpoint is missing (a kill between the two renames of a save) is renamed
    back into place; every other scratch folder (".tmp-", ".del-", an ".old-" whose checkpoint is
    there) is deleted. Each is logged. Skipped, and retried at the next listing, while another
    thread or process is saving or deleting.
    """
    parent = checkpoints_dir(root)
    leftovers = sorted(p for p in parent.iterdir() if _SCRATCH.match(p.name) and p.is_dir())
    if not leftovers:
        return []
    if not _locked:
        with _exclusive(parent, wait=False) as got:
            if not got:
                log.debug("checkpoints are being saved: clean-up of %s postponed", parent)
                return []
            return clean_up(parent, _locked=True)
    done = []
    # Newest first: if several copies of one checkpoint were retired, the latest one comes back.
    retired = sorted(
        (p for p in leftovers if _SCRATCH.match(p.name)["kind"] == "old"),
        key=lambda p: p.stat().st_mtime_ns,
        reverse=True,
    )
    for path in retired:
        target = parent / _SCRATCH.match(path.name)["name"]
        if not target.exists() and is_checkpoint(path):
            try:
                os.replace(path, target)
            except OSError as e:
                log.error("could not restore checkpoint %s from %s: %s", target.name, path.name, e)
                continue
            log.warning("restored checkpoint %s from %s, left by an interrupted save", target.name, path.name)
            done.append(f"restored {target.name} from {path.name}")
    for path in leftovers:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed %s, left by an interrupted save or delete", path.name)
            done.append(f"removed {path.name}")
    return done


def _info(path: Path, settings: dict) -> CheckpointInfo:
    loss = settings.get("final_loss")
    return CheckpointInfo(
        name=path.name,
        path=path,
        base_model=str(settings.get("base_model", "?")),
        steps=int(settings.get("steps", 0)),
        final_loss=None if loss is None else float(loss),
        created=str(settings.get("created", "")),
    )


def is_checkpoint(path: Path) -> bool:
    """True when `path` holds every file a complete save writes."""
    return path.is_dir() and all((path / f).exists() for f in REQUIRED_FILES)


def list_checkpoints(root: Path | None = None) -> list[CheckpointInfo]:
    """Every complete checkpoint, newest first, after tidying leftovers of interrupted saves
    (`clean_up`); half-written and scratch directories are never listed."""
    parent = checkpoints_dir(root)
    clean_up(parent)
    found = []
    for path in parent.iterdir():
        if path.name.startswith(_SCRATCH_PREFIX) or not is_checkpoint(path):
            continue
        try:
            settings = json.loads((path / SETTINGS_FILE).read_text(encoding="utf-8"))
            found.append(_info(path, settings))
        except (OSError, ValueError, TypeError) as e:
            log.warning("skipping unreadable checkpoint %s: %s", path, e)
    return sorted(found, key=lambda c: (c.created, c.name), reverse=True)


def resolve_checkpoint(name_or_path: str | Path, root: Path | None = None) -> Path:
    """The directory of a checkpoint given by name or path; ModelLoadError if it is not complete."""
    candidate = Path(name_or_path)
    if not candidate.is_dir():
        parent = checkpoints_dir(root)
        clean_up(parent)
        candidate = parent / str(name_or_path)
    if not is_checkpoint(candidate):
        raise ModelLoadError(
            f"No complete checkpoint at {candidate}: it needs {', '.join(REQUIRED_FILES)}. "
            "Pick one from the list of saved checkpoints."
        )
    return candidate


def load_checkpoint(name_or_path: str | Path, root: Path | None = None) -> LoadedCheckpoint:
    """Load a checkpoint's model (eval mode, eager attention), tokenizer, settings and history."""
    path = resolve_checkpoint(name_or_path, root)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, use_safetensors=True, attn_implementation="eager"
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        settings = json.loads((path / SETTINGS_FILE).read_text(encoding="utf-8"))
        history = json.loads((path / HISTORY_FILE).read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; the user needs one message
        raise ModelLoadError(f"Could not load checkpoint {path.name}: {type(e).__name__}: {e}") from e
    model.eval()
    return LoadedCheckpoint(model, tokenizer, _info(path, settings), settings, history)


def delete_checkpoint(name: str, root: Path | None = None) -> None:
    """Remove checkpoints/<name>/ (retired first, so a crash never leaves a partial directory)."""
    parent = checkpoints_dir(root)
    target = parent / check_name(name)
    with _exclusive(parent):
        if not target.exists():
            raise InputError(f"There is no checkpoint called {name!r}.")
        # ".del-", not ".old-": a crash mid-delete must not be restored as a half-deleted checkpoint.
        _delete(target, name)
