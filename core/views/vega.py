"""Charts as Vega-Lite specs, built once per input.

Building an Altair chart and turning it into a spec validates every piece against the Vega-Lite JSON
schema: 20–60 ms per chart, most of a warm page's script time. The builders in `core.views` are
decorated with `memoized_chart`, so the same inputs give back the same chart object (built and
validated the first time only), and `to_vega_lite` converts it once, without validating again, with
its data kept aside as frames named by a hash of their values (Streamlit sends them as Arrow tables).

Entries are keyed by a digest of the builder's arguments, i.e. of the numbers drawn: a chart is
never handed out for inputs it was not built from. Arguments the digest cannot read (say, an object
of an unknown kind) make the builder run as if undecorated.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

CAPACITY = 96  # charts kept, least recently used dropped first; each holds its data frame
SPEC_ATTR = "_vectorlab_vega_lite"  # where a chart keeps its converted spec

F = TypeVar("F", bound=Callable[..., Any])


class Undigestible(TypeError):
    """An argument whose content the digest cannot read: the builder runs uncached."""


def _feed(h, value: Any) -> None:
    """Feed `value`'s type and content into the hash `h`; raise Undigestible for unknown kinds."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, enum.Enum, Path)):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, np.generic):
        h.update(f"np.{value.dtype}:{value.item()!r};".encode())
    elif isinstance(value, np.ndarray):
        if value.dtype == object:
            h.update(f"objarray{value.shape}[".encode())
            for item in value.ravel():
                _feed(h, item)
            h.update(b"]")
        else:
            h.update(f"ndarray:{value.dtype.str}:{value.shape};".encode())
            h.update(np.ascontiguousarray(value).view(np.uint8).data)
    elif isinstance(value, pd.DataFrame):
        h.update(
            f"frame:{list(map(str, value.columns))}:{list(map(str, value.dtypes))}:{value.shape};".encode()
        )
        h.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
    elif isinstance(value, pd.Series):
        h.update(f"series:{value.name!r}:{value.dtype};".encode())
        h.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        h.update(f"{type(value).__name__}[".encode())
        for item in items:
            _feed(h, item)
        h.update(b"]")
    elif isinstance(value, dict):
        h.update(b"dict{")
        for k, v in value.items():
            _feed(h, k)
            _feed(h, v)
        h.update(b"}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(f"{type(value).__module__}.{type(value).__qualname__}(".encode())
        for f in dataclasses.fields(value):
            h.update(f.name.encode())
            _feed(h, getattr(value, f.name))
        h.update(b")")
    elif type(value).__module__ == "torch" and hasattr(value, "detach"):  # a tensor, without importing torch
        _feed(h, value.detach().cpu().numpy())
    else:
        raise Undigestible(f"cannot digest a {type(value).__name__}")


def digest(*args: Any, **kwargs: Any) -> str:
    """A hash of the arguments' types and contents (arrays by their bytes, frames by their values)."""
    h = hashlib.blake2b(digest_size=20)
    _feed(h, args)
    _feed(h, dict(sorted(kwargs.items())))
    return h.hexdigest()


_cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
_cache_lock = threading.Lock()


def memoized_chart(builder: F) -> F:
    """Give back the chart built earlier from the same arguments (shared by every session, so callers
    derive new charts with Altair's methods, which copy, and never assign to a returned one)."""
    name = f"{builder.__module__}.{builder.__qualname__}"

    @functools.wraps(builder)
    def wrapper(*args, **kwargs):
        try:
            key = (name, digest(*args, **kwargs))
        except Undigestible:
            return builder(*args, **kwargs)
        with _cache_lock:
            chart = _cache.get(key)
            if chart is not None:
                _cache.move_to_end(key)
                return chart
        chart = builder(*args, **kwargs)
        with _cache_lock:
            _cache[key] = chart
            while len(_cache) > CAPACITY:
                _cache.popitem(last=False)
        return chart

    wrapper.uncached = builder  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def clear_memo() -> None:
    with _cache_lock:
        _cache.clear()


# Altair's data transformers and themes are process-wide settings: one conversion at a time.
_convert_lock = threading.Lock()


def _named_datasets(data: Any, datasets: dict[str, pd.DataFrame]) -> dict[str, str]:
    """Altair data transformer: keep the frame aside under a hash of its values (Streamlit sends it
    to the browser as an Arrow table; a stable name lets the browser reuse what it has)."""
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    name = "data_" + digest(frame)
    datasets[name] = frame
    return {"name": name}


def to_vega_lite(chart) -> dict:
    """The chart's Vega-Lite spec with its data as named datasets (frames), converted once per chart
    object (kept on it) and without validating again: the chart validated its parts when built.
    Treat the result as read-only; `st.vega_lite_chart` copies before it changes anything."""
    spec = getattr(chart, SPEC_ATTR, None)
    if spec is not None:
        return spec
    import altair as alt

    datasets: dict[str, pd.DataFrame] = {}
    with _convert_lock:
        alt.data_transformers.register("vectorlab_named", _named_datasets)
        with alt.theme.enable("none"), alt.data_transformers.enable("vectorlab_named", datasets=datasets):
            spec = chart.to_dict(validate=False)
    spec["datasets"] = {**spec.get("datasets", {}), **datasets}
    # Drawn on a canvas, not as SVG: a heatmap is thousands of cells, and as SVG each is a DOM node the
    # browser must style and lay out on every page switch. Saved SVGs (to_svg) are rendered apart.
    usermeta = spec.setdefault("usermeta", {})
    usermeta["embedOptions"] = {**usermeta.get("embedOptions", {}), "renderer": "canvas"}
    try:
        object.__setattr__(chart, SPEC_ATTR, spec)
    except AttributeError:  # a chart type that refuses new attributes: converted again next time
        pass
    return spec
