"""`cnnvis export-site`: a static microscope of what a store holds, written with the live server's
templates (cnnvis.web.pages with StaticUrls): model, layer and channel pages, their images, top
examples and class images. No server, no JavaScript, relative links: any static host serves it.

    summary = export_site(Store("web-cache"), "site/", models=None)   # every model rendered there

Layout: index.html, static/app.css, m/<mid>/index.html, m/<mid>/class.html,
m/<mid>/layer/<layer>/page-<n>.html, m/<mid>/layer/<layer>/channel/<c>.html, files/<key>/<name>
(copies of the stored result files the pages show).
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cnnvis.errors import CnnvisError

MARKER = ".cnnvis-site"  # a folder holding it is an earlier export (replaced); any other non-empty folder is refused
STATIC_NAV = ("model", "class")


class _Urls:
    """StaticUrls that remember every stored file a page shows (to copy into files/)."""

    def __init__(self, depth: int, files: set) -> None:
        from cnnvis.web.pages import StaticUrls

        self._u, self._files = StaticUrls(depth), files

    def __getattr__(self, name):
        return getattr(self._u, name)

    def file(self, key: str, name: str) -> str:
        self._files.add((key, name))
        return self._u.file(key, name)


@dataclass
class LayerAtlas:
    """What the store holds of one layer at the pages' quick settings."""

    dotted: str
    n_channels: int
    pages: dict[int, object] = field(default_factory=dict)  # page index -> Result
    seeds: dict[int, dict[int, object]] = field(default_factory=dict)  # channel -> seed -> Result

    def channels(self) -> list[int]:
        out = set(self.seeds)
        for res in self.pages.values():
            out.update((res.data.get("layers") or [{}])[0].get("channels") or [])
        return sorted(out)


@dataclass
class Summary:
    models: list[str] = field(default_factory=list)
    layer_pages: int = 0
    channel_pages: int = 0
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


def _quick_layers(store, ref: str) -> dict[str, LayerAtlas]:
    """Layer pages and channel seeds of `ref` in the store, as the live pages ask for them."""
    from cnnvis.web import specs

    out: dict[str, LayerAtlas] = {}
    size = specs.quick_size(ref)
    for row in store.list(kind="filters", model=ref):
        sp = row["spec"]
        layers, chans = sp.get("layers") or [], sp.get("channels") or []
        if len(layers) != 1 or not chans or sp.get("steps") != specs.QUICK_STEPS or sp.get("size") != size \
                or sp.get("preset") is not None:
            continue
        try:
            dotted, n = specs.layer_channels(ref, layers[0])
        except CnnvisError:
            continue
        la = out.setdefault(dotted, LayerAtlas(dotted, n))
        page = chans[0] // specs.PER_PAGE
        if sp.get("seed") == 0 and chans == list(range(page * specs.PER_PAGE, min(n, (page + 1) * specs.PER_PAGE))):
            if page not in la.pages:
                res = store.get(row["key"])
                if res is not None:
                    la.pages[page] = res
        elif len(chans) == 1 and sp.get("seed") in (0, 1, 2):
            res = store.get(row["key"])
            if res is not None:
                la.seeds.setdefault(chans[0], {}).setdefault(sp["seed"], res)
    return out


def _models_in(store) -> list[str]:
    seen: dict[str, None] = {}
    for row in store.list(kind="filters"):
        seen.setdefault(row["spec"].get("model"), None)
    for row in store.list(kind="class_image"):
        seen.setdefault(row["spec"].get("model"), None)
    return [m for m in seen if m]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _prepare_out(out: Path) -> Path:
    """A new temp folder beside `out` (renamed onto it at the end); refuses a non-empty `out` that is
    not an earlier export (nothing of the user's is ever overwritten)."""
    if out.exists() and not out.is_dir():
        raise CnnvisError(f"--out {str(out)!r} is a file; give a folder (it is created)")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise CnnvisError(f"--out {str(out)!r} is a non-empty folder that is not a cnnvis export; give a new or "
                          "empty folder")
    if (out / MARKER).is_file():  # an earlier export: replaced whole, unless files were added to it since
        lines = (out / MARKER).read_text(errors="replace").splitlines()
        if len(lines) > 1:  # the list of what it wrote (exports before it listed nothing)
            ours = set(lines[1:]) | {MARKER}
            added = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and
                           str(p.relative_to(out)) not in ours)
            if added:
                raise CnnvisError(f"--out {str(out)!r} is an earlier export, but {len(added)} file(s) were added to it "
                                  f"since ({', '.join(added[:3])}); the export replaces the folder whole: move them "
                                  f"out, or give another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def export_site(store, out: str | os.PathLike, models: list[str] | None = None, progress=None) -> Summary:
    """Write the static atlas of `models` (refs; default: every model with renders in `store`) to `out`.
    `progress(line)`: called with a line per model."""
    from cnnvis.jobs import default_pool
    from cnnvis.web import atlas, specs
    from cnnvis.web.context import ServedModel, layer_rows, mid_for
    from cnnvis.web.pages import NAV, PER_PAGE, layer_info, model_view, render

    out = Path(out).expanduser()
    cache_root = Path(store.root).resolve()
    if out.resolve() == cache_root or cache_root in out.resolve().parents:
        raise CnnvisError(f"--out {str(out)!r} is inside the cache {str(cache_root)!r}; write the site elsewhere")
    refs = [specs.canonical_ref(m) for m in models] if models else _models_in(store)
    if not refs:
        raise CnnvisError(f"the cache {str(cache_root)!r} holds no rendered pages or class images; fill it with "
                          "cnnvis serve or cnnvis render-all first")
    summary = Summary()
    if models:  # a model named that the cache holds nothing of: said (an empty atlas was written without a word)
        have = set(_models_in(store))
        absent = [m for m, r in zip(models, refs) if r not in have]
        if len(absent) == len(refs):
            raise CnnvisError(f"the cache {str(cache_root)!r} holds nothing of {', '.join(absent)}; "
                              f"fill it first: cnnvis render-all --model {absent[0]} --cache {store.root}")
        refs = [r for r in refs if r in have]
        summary.skipped += [f"{m}: the cache holds nothing of it (cnnvis render-all --model {m} fills it)"
                            for m in absent]
    tmp = _prepare_out(out)
    files: set[tuple[str, str]] = set()
    try:
        served: dict[str, ServedModel] = {}
        pool = default_pool()
        for ref in refs:
            try:
                vm = pool.get(ref)
            except CnnvisError as e:
                summary.skipped.append(f"{ref}: {e}")
                continue
            infos = specs.model_layers(pool, ref, vm)
            specs.remember(ref, vm, infos)
            mid = mid_for(ref, set(served))
            served[mid] = ServedModel(mid, ref, vm, layers=layer_rows(infos))
        base = {"nav": NAV, "static_nav": STATIC_NAV, "boot_json": "{}"}
        for mid, m in served.items():
            vm = m.vm
            n_classes = f" · {len(vm.labels)} classes" if vm.labels is not None else ""
            info_line = f"{vm.name} · {vm.task}{n_classes} · input {' × '.join(map(str, vm.input_shape))}"
            common = {**base, "mid": mid, "model_info": info_line}
            layers = _quick_layers(store, m.ref)
            classes = atlas.class_images(store, m.ref)
            # the model page: layers with something stored are links, with their thumbnails
            urls = _Urls(2, files)
            view = model_view(m, store, urls)
            for st in view["stages"]:
                for r in st["rows"]:
                    r["maps"] = r["name"] in layers
            _write(tmp / "m" / mid / "index.html", render("model", **common, **view, urls=urls, active="model",
                                                          title=f"{mid}: layers"))
            _write(tmp / "m" / mid / "class.html", render("class", **common, urls=(u := _Urls(2, files)),
                                                          active="class", title=f"{mid}: class images",
                                                          class_images=[_class_row(r, u) for r in classes]))
            for dotted, la in layers.items():
                info = layer_info(m, dotted)
                n_pages = math.ceil(la.n_channels / PER_PAGE)
                for page in range(n_pages):
                    u = _Urls(4, files)
                    res = la.pages.get(page)
                    chans = list(range(page * PER_PAGE, min(la.n_channels, (page + 1) * PER_PAGE)))
                    tiles = atlas.tiles(res, u.file) if res is not None else []
                    written = set(la.channels())
                    for t in tiles:
                        t["linked"] = True
                    if res is None:  # not rendered: the channels that have seeds stored, the rest as missing
                        tiles = [{"channel": c, "src": None, "value": None, "dead": False, "missing": True,
                                  "linked": c in written} for c in chans]
                    _write(tmp / "m" / mid / "layer" / dotted / f"page-{page + 1}.html",
                           render("layer", **common, urls=u, active="model", title=f"{mid}: {dotted}", layer=dotted,
                                  page_no=page, per_page=PER_PAGE, n_pages=n_pages, info=info, tiles=tiles,
                                  spec_error=None if res is not None else
                                  f"page {page + 1} was not rendered into the store; cnnvis render-all --model "
                                  f"{m.ref} --layers {(info or {}).get('alias') or dotted} fills it"))
                    summary.layer_pages += 1
                for c in la.channels():
                    u = _Urls(5, files)
                    _write(tmp / "m" / mid / "layer" / dotted / "channel" / f"{c}.html",
                           render("channel", **common, urls=u, active="model", title=f"{mid}: {dotted} channel {c}",
                                  layer=dotted, channel=c, info=info, n_channels=la.n_channels,
                                  page_no=c // PER_PAGE, prev_ok=c - 1 in la.channels(), next_ok=c + 1 in la.channels(),
                                  seeds=_seeds(la, c, u), top_src=_top(store, m.ref, dotted, c, u), spec_error=None))
                    summary.channel_pages += 1
            summary.models.append(mid)
            if progress:
                progress(f"{mid}: {len(layers)} layers, {sum(len(la.pages) for la in layers.values())} stored pages, "
                         f"{sum(len(la.channels()) for la in layers.values())} channels, {len(classes)} class images")
        listed = [{"mid": k, "name": m.vm.name, "task": m.vm.task} for k, m in served.items()]
        _write(tmp / "index.html", render("index", **base, mid="", urls=_Urls(0, files), active="",
                                          title="cnnvis atlas", models=listed, skipped=summary.skipped))
        (tmp / "static").mkdir()
        shutil.copy(Path(__file__).parent / "static" / "app.css", tmp / "static" / "app.css")
        for key, name in sorted(files):
            folder = store.folder(key)
            if folder is None or not (folder / name).is_file():
                continue
            dst = tmp / "files" / key / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, dst)
            summary.files += 1
        written = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        (tmp / MARKER).write_text("written by cnnvis export-site; the folder is replaced by the next export, which "
                                  "refuses to if it holds other files than these:\n" + "\n".join(written) + "\n")
        summary.bytes = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _seeds(la: LayerAtlas, c: int, urls) -> list[dict]:
    """The channel page's pictures: its stored seeds, else its tile on the layer page."""
    from cnnvis.web import atlas

    out = []
    for s, res in sorted(la.seeds.get(c, {}).items()):
        t = atlas.tiles(res, urls.file)
        if t:
            out.append({**t[0], "seed": s})
    if not out:
        res = la.pages.get(c // 16)
        for t in atlas.tiles(res, urls.file):
            if t["channel"] == c:
                out.append({**t, "seed": 0})
    return out


def _top(store, ref: str, dotted: str, c: int, urls) -> str | None:
    from cnnvis.web import atlas

    hit = atlas.top_examples(store, ref, dotted, c)
    return urls.file(hit[0].key, hit[1]) if hit else None


def _class_row(res, urls) -> dict:
    d = res.data
    judge = d.get("judge") or {}
    return {"src": urls.file(res.key, res.main), "label": (d.get("class") or {}).get("label"),
            "index": (d.get("class") or {}).get("index"), "prob": d.get("prob_png"), "steps": d.get("steps"),
            "judge": judge.get("model"), "judge_prob": judge.get("prob"), "objective": d.get("objective"),
            "small": (res.spec.get("size") or 999) < 64}

