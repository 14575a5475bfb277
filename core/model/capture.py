"""Recording eager attention: the q, k, v each attention call receives, after rotary, handed to a callback.

The model's own eager attention does the work; the recording implementation only passes its inputs on
to the callback of the thread that asked, so every other caller of a shared model sees plain eager.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

RECORDING = "vectorlab_recording_eager"  # the attention implementation name while a recording is open

# (module, query [B, H, T, dh], key [B, Hkv, T, dh], value [B, Hkv, T, dh]) -> None
Recorder = Callable[[Any, Any, Any, Any], None]

_local = threading.local()  # .recorder: this thread's callback, if it opened a recording
_lock = threading.Lock()
_open: dict[int, tuple[int, Any]] = {}  # id(config) -> (recordings open on it, implementation before)
_registered = False


def _eager_of(module) -> Callable:
    """The eager attention function of the module's own modeling file."""
    return sys.modules[type(module).__module__].eager_attention_forward


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    """Eager attention, exactly as the model computes it, that shows its inputs to this thread's recorder."""
    recorder = getattr(_local, "recorder", None)
    if recorder is not None:
        recorder(module, query, key, value)
    if getattr(module, "reorder_and_upcast_attn", False):  # GPT-2's own eager variant, chosen by config
        return module._upcast_and_reordered_attn(query, key, value, attention_mask)
    return _eager_of(module)(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(RECORDING, _recording_attention)
    AttentionMaskInterface.register(RECORDING, eager_mask)  # the same additive mask eager gets
    _registered = True


@contextmanager
def recording_attention(model: Any, recorder: Recorder) -> Iterator[None]:
    """While open, attention calls made by this thread on `model` pass their q, k, v to `recorder`.

    The model runs eager attention meanwhile (its weights are returned), and goes back to the
    implementation it had when the last recording on it closes.
    """
    config = model.config
    with _lock:
        _register()
        count, before = _open.get(id(config), (0, config._attn_implementation))
        if count == 0:
            config._attn_implementation = RECORDING
        _open[id(config)] = (count + 1, before)
    outer, _local.recorder = getattr(_local, "recorder", None), recorder
    try:
        yield
    finally:
        _local.recorder = outer
        with _lock:
            count, before = _open.pop(id(config))
            if count > 1:
                _open[id(config)] = (count - 1, before)
            else:
                config._attn_implementation = before
