"""What the store already holds for the pages: a layer page's stored filters result, a channel's seeds,
its top examples, a model's class images. Shared by the live pages (thumbnails, pre-rendered tiles)
and `cnnvis export-site` (the static atlas).

    page_result(store, ref, "conv1", 0)      # the Result the layer page's job would give, or None
    tiles(res, file_url)                     # [{"channel", "src", "value", "dead"}] of one page
"""

from __future__ import annotations

from collections.abc import Callable

from cnnvis.errors import CnnvisError

PER_PAGE = 16


def _stored(store, spec: dict):
    from cnnvis.jobs import job_key, parse_spec

    try:
        return store.get(job_key(parse_spec(spec)))
    except CnnvisError:
        return None


def page_result(store, ref: str, layer: str, page: int):
    """The stored result of layer page `page` (0-based) at the pages' quick settings, or None."""
    from cnnvis.web import specs

    try:
        spec = specs.layer_page_spec(ref, layer, page, per_page=PER_PAGE)
    except CnnvisError:
        return None
    return _stored(store, spec)


def seed_results(store, ref: str, layer: str, channel: int) -> list:
    """The channel page's three seeds (stored result or None each)."""
    from cnnvis.web import specs

    out = []
    for s in range(3):
        try:
            out.append(_stored(store, specs.channel_spec(ref, layer, channel, seed=s)))
        except CnnvisError:
            out.append(None)
    return out


def tiles(res, file_url: Callable[[str, str], str]) -> list[dict]:
    """The channels of a stored filters result: channel, tile URL (None: dead), value it reached."""
    if res is None:
        return []
    row = (res.data.get("layers") or [{}])[0]
    dead = set(row.get("dead") or [])
    values = row.get("values") or []
    out = []
    for i, c in enumerate(row.get("channels") or []):
        name = f"tile_0_{c}.png"
        v = values[i] if i < len(values) else None
        out.append({"channel": c, "src": file_url(res.key, name) if name in res.files and c not in dead else None,
                    "value": v, "dead": c in dead, "small": (row.get("size") or 999) < 64})
    return out


def top_examples(store, ref: str, dotted: str, channel: int):
    """(result, file name) of a stored top_examples job of this layer that covers `channel`, or None."""
    for row in store.list(kind="top_examples", model=ref):
        sp = row["spec"]
        chans = sp.get("channels")
        if sp.get("layer") == dotted and (chans is None or channel in chans):
            res = store.get(row["key"])
            name = f"channel_{channel:03d}.png"
            if res is not None and name in res.files:
                return res, name
    return None


def class_images(store, ref: str) -> list:
    """Stored class_image results of a model, newest first."""
    out = []
    for row in store.list(kind="class_image", model=ref):
        res = store.get(row["key"])
        if res is not None and res.main:
            out.append(res)
    return out
