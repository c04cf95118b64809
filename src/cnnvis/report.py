"""Static HTML report: one page, one section per capability, PNGs beside it.

    build_report(vm, photos, 'out/', quick=True)  -> Path('out/index.html')

Sections live in `cnnvis.sections.*`; each module defines `SECTION = Section(...)` whose
`render(ctx) -> str` returns an HTML fragment and writes its images through `ctx.save`.
"""

from __future__ import annotations

import html
import importlib
import json
import pkgutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from cnnvis import __version__
from cnnvis.errors import CnnvisError
from cnnvis.utils import atomic_write

esc = html.escape


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    render: Callable[["ReportContext"], str]
    order: int = 50
    description: str = ""


@dataclass
class ReportContext:
    """What a section gets: the model, the photos, where to write, and how much work to do."""

    vm: object
    photos: list[tuple[str, Image.Image]]
    out: Path
    quick: bool = False
    device: str | torch.device = "cpu"
    seed: int = 0
    progress: object = None
    data: dict = field(default_factory=dict)  # sections put their numbers here -> report.json
    _models: dict = field(default_factory=dict)

    def save(self, img, name: str) -> str:
        """Save a PIL image or tensor as out/img/<name>; returns the path relative to index.html."""
        from cnnvis.viz import save_png

        rel = f"img/{name}"
        save_png(img, self.out / rel)
        return rel

    def model(self, name: str):
        """Another registry model (cached), e.g. 'vgg16_hed' for the classic VGG pictures."""
        if getattr(self.vm, "name", None) == name:
            return self.vm
        if name not in self._models:
            from cnnvis.models import load

            self._models[name] = load(name, device=self.device)
        return self._models[name]

    def img_tag(self, rel: str, caption: str = "", width: int | None = None) -> str:
        w = f' width="{width}"' if width else ""
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        return f'<figure><a href="{esc(rel)}"><img src="{esc(rel)}"{w} loading="lazy" alt="{esc(caption)}"></a>{cap}</figure>'


def sections() -> list[Section]:
    """All report sections, in page order."""
    import cnnvis.sections as pkg

    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"cnnvis.sections.{info.name}")
        if hasattr(mod, "SECTION"):
            found.append(mod.SECTION)
    return sorted(found, key=lambda s: (s.order, s.name))


CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
.note{background:#f6f6f0;border-left:4px solid #c9b458;padding:.5em 1em}
figure{display:inline-block;margin:.4em;vertical-align:top;text-align:center}
figcaption{font-size:.85em;max-width:360px}
img{image-rendering:auto;max-width:100%}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left}
.num{text-align:right;font-variant-numeric:tabular-nums}
nav a{margin-right:1em}
"""


def build_report(
    vm,
    photos: Sequence[tuple[str, Image.Image]],
    out: str | Path,
    *,
    quick: bool = False,
    only: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress=None,
) -> Path:
    """Render every section into `out/index.html` (+ img/*.png, report.json). Returns the page path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CnnvisError(f"--out {str(out)!r} is a file; give a folder for the report")
    if not photos:
        raise CnnvisError("the report needs at least one photo; pass --images DIR")
    secs = sections()
    if only:
        names = [s.name for s in secs]
        unknown = [n for n in only if n not in names]
        if unknown:
            from cnnvis.errors import unknown_name

            raise unknown_name("report section", unknown[0], names)
        secs = [s for s in secs if s.name in only]
    out.mkdir(parents=True, exist_ok=True)
    ctx = ReportContext(vm, list(photos), out, quick, device, seed, progress)
    body, nav, timings = [], [], {}
    for s in secs:
        t0 = time.perf_counter()
        frag = s.render(ctx)
        timings[s.name] = round(time.perf_counter() - t0, 2)
        nav.append(f'<a href="#{esc(s.name)}">{esc(s.title)}</a>')
        desc = f"<p>{s.description}</p>" if s.description else ""
        body.append(f'<section id="{esc(s.name)}"><h2>{esc(s.title)}</h2>{desc}{frag}'
                    f'<p class="note" style="font-size:.8em">section computed in {timings[s.name]} s</p></section>')
    mode = ("<p class='note'><b>Quick demo run</b>: fewer optimization steps, channels and layers than the full "
            "report (<code>cnnvis report --out DIR</code> without <code>--quick</code>).</p>") if quick else ""
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>cnnvis report: {esc(vm.name)}</title><style>{CSS}</style></head><body>
<h1>What {esc(vm.name)} sees</h1>
<p>{esc(getattr(vm, 'description', '') or '')}<br>cnnvis {__version__} · device {esc(str(device))} · seed {seed} ·
{len(photos)} photos · generated {time.strftime('%Y-%m-%d %H:%M')}</p>{mode}
<nav>{''.join(nav)}</nav>
{''.join(body)}
</body></html>
"""
    ctx.data["_timings_s"] = timings
    with atomic_write(out / "report.json", "w") as f:
        json.dump({"model": vm.name, "quick": quick, "seed": seed, "sections": ctx.data}, f, indent=2, default=str)
    page_path = out / "index.html"
    with atomic_write(page_path, "w") as f:
        f.write(page)
    return page_path
