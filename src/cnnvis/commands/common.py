"""What every sub-command shares: --model/--weights/--device, --cache, --seed, --json, and
`run_job`, the one way a command computes anything (a job spec -> `cnnvis.jobs.run`).

Nothing here imports torch at import time: `cnnvis --help` stays fast.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import click

from cnnvis import DEFAULT_MODEL

COMMANDS: list = []  # this module defines helpers only


class LazyChoice(click.Choice):
    """click.Choice whose values come from a registry, read only when needed (help, validation)."""

    def __init__(self, getter: Callable[[], Iterable[str]]) -> None:
        self._getter = getter
        self.case_sensitive = True

    @property
    def choices(self):  # type: ignore[override]
        return tuple(self._getter())

    @choices.setter
    def choices(self, value) -> None:  # click never sets it after __init__; kept for safety
        self._getter = lambda: value


def attribution_methods() -> list[str]:
    from cnnvis.attribution import list_methods

    return list_methods()


def preset_names() -> list[str]:
    from cnnvis.jobs.helpers import preset_names as names

    return names()


_THREADS: list[int] = []  # --threads N, applied by run_job (torch is not imported while parsing)


def check_threads(value: int | None) -> int | None:
    """--threads: 1 to max(64, 4 x this machine's cores) (far more threads than cores only slows torch, and
    100000 of them ran the process out of memory and crashed it)."""
    if value is not None:
        import os

        from cnnvis.errors import CnnvisError

        cores = os.cpu_count() or 1
        most = max(64, 4 * cores)
        if not 1 <= value <= most:
            raise CnnvisError(f"--threads must be a number of CPU threads from 1 to {most} (this machine has {cores} "
                              f"cores), got {value}")
    return value


def _threads_cb(ctx, param, value):
    if check_threads(value) is not None:
        _THREADS[:] = [value]
    return value


def apply_threads() -> None:
    """Set torch's CPU threads from --threads (results can differ between thread counts)."""
    if _THREADS:
        import torch

        torch.set_num_threads(_THREADS[0])


def model_options(fn: Callable) -> Callable:
    """Add --model, --weights, --device and --threads."""
    fn = click.option("--threads", type=int, default=None, expose_value=False, callback=_threads_cb, metavar="N",
                      help="CPU threads for torch (default: torch's choice). Optimized images (class, filters, "
                           "dream) are reproducible for the same seed, threads, device and torch version.")(fn)
    fn = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")(fn)
    fn = click.option(
        "--weights", default=None, metavar="PATH|random",
        help="Local weights: .pth/.pt state_dict, .safetensors, or Keras .h5 (VGG16, or a Keras --model's "
             "architecture); 'random' = untrained.",
    )(fn)
    fn = click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, metavar="NAME|PATH",
                      help="Registered model (see `cnnvis models`), a checkpoint path (model.safetensors + .json), "
                           "or a Keras Sequential file (.h5 / .keras).")(fn)
    return fn


def cache_option(fn: Callable) -> Callable:
    return click.option("--cache", default=None, metavar="DIR", envvar="CNNVIS_CACHE",
                        help="Result store: a repeated identical request is served from it [env CNNVIS_CACHE].")(fn)


def seed_option(fn: Callable) -> Callable:
    return click.option("--seed", default=0, show_default=True, type=int, help="Random seed (reproducible output).")(fn)


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")(fn)


def job_options(fn: Callable) -> Callable:
    """--model/--weights/--device + --cache + --json: what every computing command takes."""
    return model_options(cache_option(json_option(fn)))


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def no_progress() -> bool:
    return bool(os.environ.get("CNNVIS_NO_PROGRESS"))


def parse_ints(s: str | None, what: str) -> list[int] | None:
    """'0,5,9' -> [0, 5, 9]; None stays None; anything else is a CnnvisError naming the option."""
    from cnnvis.errors import CnnvisError

    if s is None:
        return None
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise CnnvisError(f"{what} must be comma-separated integers, e.g. 0,5,9; got {s!r}") from None
    if not out:
        raise CnnvisError(f"{what} is empty")
    _once(out, what, s)
    return out


def _once(items: list, flag: str, raw: str) -> None:
    """A list option that names an item twice is a CnnvisError (the same picture twice, or a typo)."""
    seen: set = set()
    for v in items:
        if v in seen:
            from cnnvis.errors import CnnvisError

            raise CnnvisError(f"{flag} {raw!r} names {v!r} twice; give each once")
        seen.add(v)


def parse_names(s: str | None, flag: str = "the option") -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; None stays None; a value that names nothing ('', ',,') is a CnnvisError
    (it silently meant the defaults)."""
    if s is None:
        return None
    names = [p.strip() for p in s.split(",") if p.strip()]
    if not names:
        from cnnvis.errors import CnnvisError

        raise CnnvisError(f"{flag} {s!r} names nothing; leave {flag} out for the defaults, or give names separated "
                          f"by commas")
    _once(names, flag, s)
    return names


def _flag_names(msg: str, flags: dict[str, str]) -> str:
    """Compute errors name parameters ('field steps'); the CLI names its flags (--steps)."""
    def sub(m):
        name = m.group(2)
        name = name[len("options."):] if name.startswith("options.") else name  # a method's option is its own flag
        return flags.get(name, "--" + name.replace("_", "-"))

    if "unknown field" not in msg:  # the list of a spec's fields helps only with an unknown one
        msg = re.sub(r" \(fields: [^)]*\)$", "", msg)
    msg = re.sub(r"(field|unknown field) '([A-Za-z_][\w.]*)'", lambda m: sub(m), msg)
    return re.sub(r"^bad \w+ spec: ", "", msg)


def open_cache(cache: str | None):
    """--cache DIR -> a Store, or None. A cache that cannot be opened (a file, not creatable, read-only
    without an index) does not stop the command: it says so on stderr and computes without it."""
    if not cache:
        return None
    from cnnvis.errors import CnnvisError
    from cnnvis.jobs import Store

    try:
        return Store(cache)
    except CnnvisError as e:
        click.echo(f"note: computing without the cache: {e}", err=True)
        return None


_PENDING: list = []  # results of this command still to be stored: after its output files are written


def run_job(kind: str, *, model: str, weights: str | None, device: str, cache: str | None, flags=None,
            quiet: bool = False, **fields):
    """Build the `kind` spec from CLI values, run it (or fetch it from --cache) -> Result. The result is
    stored in --cache by `finish()` (from `emit`, or when the command ends): after the command wrote
    its --out, so a cache that cannot take it loses nothing."""
    from cnnvis.errors import CnnvisError
    from cnnvis.jobs import make_spec

    try:
        spec = make_spec(kind, model=model, weights=weights, **fields)
    except CnnvisError as e:
        raise CnnvisError(_flag_names(str(e), flags or {})) from None
    apply_threads()
    progress = None if (quiet or no_progress()) else True
    return run_spec(spec, cache, device, progress)


def run_spec(spec, cache: str | None, device: str, progress):
    """`cnnvis.jobs.run` for a command: store deferred to `finish()`, notes printed by it (not warned)."""
    import warnings

    from cnnvis.jobs import CacheWarning, run

    store = open_cache(cache)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        res = run(spec, store=store, device=device, progress=progress, defer_store=True)
    _PENDING.append(res)
    return res


def finish() -> None:
    """Store this command's results (their files are written by now) and print each note on stderr once."""
    import contextlib

    from cnnvis.jobs import store_result

    while _PENDING:
        res = _PENDING.pop(0)
        store_result(res)
        with contextlib.suppress(OSError):
            for n in res.notes:
                click.echo(f"note: {n}", err=True)


def cache_tag(res) -> str:
    """' [from the cache: torch 2.14.1, cpu, 2 CPU threads]' for a stored result (what made it), else ''."""
    if not res.cached:
        return ""
    e = res.env or {}
    dev = str(e.get("device", "?"))
    bits = [f"torch {e.get('torch', '?')}", dev + (f" ({e['gpu']})" if e.get("gpu") else "")]
    if dev.startswith("cpu") and "threads" in e:
        bits.append(f"{e['threads']} CPU threads")
    return f" [from the cache: {', '.join(bits)}]"


def check_out(path: str | None, inputs: Iterable[str] = (), flag: str = "--out",
              suffixes: tuple[str, ...] | None = None):
    """Refuse an output that is an input, a directory, an unknown image format or not writable.
    suffixes: the formats allowed (default: `cnnvis.images.OUTPUT_SUFFIXES`; () allows any)."""
    from cnnvis.errors import CnnvisError
    from cnnvis.utils import check_output_path, check_writable

    if path is None:
        return None
    if suffixes is None:
        from cnnvis.images import OUTPUT_SUFFIXES

        suffixes = OUTPUT_SUFFIXES
    out = check_output_path(path, [i for i in inputs if i and not str(i).startswith("sample:")])
    if suffixes and out.suffix.lower() not in suffixes:
        raise CnnvisError(f"{flag} {path!r}: unknown image format {out.suffix or '(none)'!r}; "
                          f"use one of {', '.join(suffixes)}")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        check_writable(out)  # a real test file (os.access says yes to root, also on /proc)
    except CnnvisError:
        raise CnnvisError(f"{flag} {path!r}: cannot write into {str(parent)!r} (not a writable folder); "
                          f"choose another {flag}") from None
    return out


def check_out_of_data(out: str | os.PathLike | None, data: Iterable[str | None], *, replaced: bool = False,
                      flag: str = "--out") -> None:
    """Refuse an output inside a dataset folder the command reads, or its zip file (a training image
    would be overwritten, or the output read as data next time); `replaced`: an output folder that is
    swapped whole must not hold the dataset either. Dataset names (mnist, ...) are not paths here."""
    from cnnvis.errors import CnnvisError

    if out is None:
        return
    o = Path(os.path.realpath(Path(out).expanduser()))
    for ref in data:
        if not ref:
            continue
        d = Path(str(ref)).expanduser()
        if not d.exists():
            continue
        d = Path(os.path.realpath(d))
        inside = o == d or (d.is_dir() and o.is_relative_to(d))
        if inside or (replaced and d.is_relative_to(o)):
            where = "is" if o == d else ("is inside" if inside else "holds")
            raise CnnvisError(f"{flag} {str(out)!r} {where} the dataset {str(ref)!r} that this command reads; "
                              f"write it outside the dataset so that no image of it is overwritten or added")


def skipped_line(n: int, names: list[str], what: str = "not used") -> str | None:
    """'N unreadable image(s) skipped (what): a, b, c, ...' or None when there were none."""
    if not n:
        return None
    shown = ", ".join(names[:3]) + (", ..." if n > 3 else "")
    return f"{n} unreadable image(s) skipped ({what}){': ' + shown if shown else ''}"


def write_image(result, out: Path, name: str | None = None) -> Path:
    """Write the result's picture `name` (default: its main file) to `out`, in the format of its extension."""
    from cnnvis.utils import atomic_write

    name = name or result.main
    if out.suffix.lower() == ".png" and name.endswith(".png"):
        with atomic_write(out) as f:
            f.write(result.files[name])
    else:
        from cnnvis.viz import save_png  # writes any PIL format by extension, atomically

        save_png(result.image(name), out)
    return out


def write_file(result, out: Path, name: str) -> Path:
    """Write the result's file `name` (its bytes as stored) to `out`, atomically."""
    from cnnvis.utils import atomic_write

    with atomic_write(out) as f:
        f.write(result.files[name])
    return out


def emit(result, as_json: bool, text: str | list[str], **extra) -> None:
    """Store the command's results (`finish`: its files are written), then print the result: JSON
    (result.to_dict() + `extra`, with any notes) or the text lines (notes on stderr)."""
    finish()
    if as_json:
        echo_json({**result.to_dict(), **extra})
        return
    for line in ([text] if isinstance(text, str) else text):
        click.echo(line)


class LazyHelpOption(click.Option):
    """A click option whose help is `help()`, called when --help is shown: text derived from a registry
    that imports torch (the archs' recipes) without importing it when the CLI starts."""

    def __init__(self, *args, help: Callable[[], str], **kwargs) -> None:  # noqa: A002  (click's name)
        super().__init__(*args, **kwargs)
        self._lazy_help = help

    def get_help_record(self, ctx):
        if self.help is None:
            self.help = self._lazy_help()
        return super().get_help_record(ctx)
