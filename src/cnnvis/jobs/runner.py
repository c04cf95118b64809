"""run(spec) -> Result: the one entry point every face (CLI, report, web, Ray) calls.

    res = run({"kind": "attribution", "method": "gradcam", "image": "cat.jpg"}, store=Store("cache/"))
    res = run(spec, progress=lambda done, total, desc: ..., cancel=threading.Event())

The store is asked first with the spec's hash as given (milliseconds, no model loaded); on a
miss the model is loaded (once per pool), the spec normalized (class names -> indices, layer
aliases -> dotted names), asked again, and otherwise computed and stored under both hashes.

Nothing the store does loses a result or serves a wrong one: a damaged entry (files not matching
their recorded sha256) is computed again and replaced; a store that cannot be written (read-only,
full) leaves the computed result in the caller's hands. Each such event is a line in
`result.notes` and a `CacheWarning`. A hit whose `env` (torch, device, CPU threads, machine)
differs from this process's says so the same way (`result.env_differs`): the key leaves them out
on purpose, so that a cache is shared between machines.

Thread safety: a `ModelPool` keeps one loaded model per (name, weights, device) and a lock per
model; a job holds its model's lock while it computes, so hooks and flag changes of one call
never meet another's. Two jobs on different models run in parallel.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

from cnnvis import __version__
from cnnvis.errors import CnnvisError, CnnvisWarning
from cnnvis.jobs.result import Result
from cnnvis.jobs.spec import Spec, parse_spec
from cnnvis.jobs.store import Store


class Cancelled(CnnvisError):
    """Raised inside a job when its `cancel` flag is set."""


class CacheWarning(CnnvisWarning):
    """A store problem that did not stop the job (also in `Result.notes`): a damaged entry computed
    again, a result that could not be stored, a hit made with another torch/device/thread count."""


# ---------------------------------------------------------------------- identity of inputs
_FILE_HASHES: dict[tuple, str] = {}
_HASH_LOCK = threading.Lock()


MAX_FILE_BYTES = 64 << 30  # the largest input file hashed (weights, photos, zips): larger is a mistake


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a regular file's content (streamed), memoized by (path, size, mtime, ctime, inode).
    A folder, device (/dev/zero), FIFO or socket, or a file over MAX_FILE_BYTES is a CnnvisError: one
    line, never a hang."""
    import stat as st_

    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise CnnvisError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    if st_.S_ISDIR(st.st_mode):
        raise CnnvisError(f"{str(path)!r} is a folder; give a file")
    if not st_.S_ISREG(st.st_mode):
        raise CnnvisError(f"{str(path)!r} is not a regular file (a device, FIFO or socket); give a file")
    if st.st_size > MAX_FILE_BYTES:
        raise CnnvisError(f"{str(path)!r} is {st.st_size / (1 << 30):.0f} GiB, more than cnnvis reads "
                          f"({MAX_FILE_BYTES >> 30} GiB); give the right file")
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)  # ctime: no one sets it
    with _HASH_LOCK:
        if memo in _FILE_HASHES:
            return _FILE_HASHES[memo]
    h = hashlib.sha256()
    left = st.st_size  # never more than its size said: a file that grows while read is not read forever
    try:
        with open(p, "rb") as f:
            while left > 0:
                chunk = f.read(min(1 << 20, left))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
    except OSError as e:
        raise CnnvisError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    with _HASH_LOCK:
        _FILE_HASHES[memo] = h.hexdigest()
    return h.hexdigest()


def weights_id(model: str, weights: str | None) -> str:
    """What identifies the numbers of a model: its registry name + weights tag, or its files' hashes."""
    from cnnvis.models import refs

    kind = refs.kind(model)  # as `load` decides: a registered name wins
    if kind == "keras":  # the file + its sidecars
        parts = ["keras:" + "+".join(file_hash(p) for p in refs.identity_files(model))]
    elif kind == "checkpoint":
        meta, blob = refs.identity_files(model)
        parts = ["ckpt:" + file_hash(meta) + "+" + (file_hash(blob) if Path(blob).exists() else "-")]
    else:
        parts = ["name:" + model]
    if weights in (None, "random", "pretrained", "DEFAULT"):  # DEFAULT: load's spelling of pretrained
        parts.append("pretrained" if weights == "DEFAULT" else str(weights))
    else:
        parts.append("file:" + file_hash(weights))
    return "/".join(parts)


def dataset_id(ref: str) -> str:
    """What identifies a dataset's content: a known name as such; a file (zip) by its sha256; a
    folder by the sha256 of its listing (relative path, size, mtime of every file)."""
    from cnnvis.data.api import known_name

    canon = known_name(ref)
    if canon is not None:
        return "data:" + canon
    p = Path(ref)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(p).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return "dir:" + h.hexdigest()
    return "file:" + file_hash(p)


def job_key(spec: Spec) -> str:
    """The store key: hash of the canonical spec, the weights, the input files and the code version."""
    own = [weights_id(spec.model, spec.weights)] if spec.keyed_by_model() else []
    extra = "|".join([*own, *(weights_id(m, None) for m in spec.extra_models()),
                      *(file_hash(p) for p in spec.inputs()
                                                                  if not str(p).startswith("sample:")),
                      *(dataset_id(d) for d in spec.datasets()),
                      f"cnnvis {__version__}"])
    return spec.hash(extra)


# ---------------------------------------------------------------------- models
_MODEL_LOCKS: dict[int, threading.RLock] = {}
_MODEL_LOCKS_LOCK = threading.Lock()


def _model_lock(vm) -> threading.RLock:
    """The one lock of a loaded model, shared by every pool that holds it (dropped with the model)."""
    with _MODEL_LOCKS_LOCK:
        lk = _MODEL_LOCKS.get(id(vm))
        if lk is None:
            lk = _MODEL_LOCKS[id(vm)] = threading.RLock()
            weakref.finalize(vm, _MODEL_LOCKS.pop, id(vm), None)
        return lk


class ModelPool:
    """Loaded models by (name, weights, device), each with its own lock."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self._models: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def get(self, name: str, weights: str | None = None, role: str = "main"):
        """The loaded model; role='judge' gives a separate instance with its own lock, taken only while
        a main model's lock is held (judge locks are always taken last: no lock-order cycle)."""
        from cnnvis.models import load

        key = (name, weights, self.device) if role == "main" else (name, weights, self.device, role)
        wid = weights_id(name, weights)  # a checkpoint or weights file saved again: a new model
        with self._lock:
            if key not in self._models or self._models[key][0] != wid:
                vm = load(name, weights=weights, device=self.device or "auto")
                self._models[key] = (wid, vm)
            return self._models[key][1]

    def add(self, vm, name: str | None = None, weights: str | None = None):
        """Put an already-loaded VisModel into the pool (the report's model, a user's wrap())."""
        name = name or vm.name
        try:
            wid = weights_id(name, weights)
        except CnnvisError:  # a wrapped model whose name looks like a path: `get` never finds it anyway
            wid = None
        with self._lock:
            self._models[(name, weights, self.device)] = (wid, vm)
        return vm

    def lock(self, vm) -> threading.RLock:
        return _model_lock(vm)


_DEFAULT_POOLS: dict[str | None, ModelPool] = {}


def default_pool(device: str | None = None) -> ModelPool:
    """The process's pool for `device` (None: each model's default device)."""
    with _POOLS_LOCK:
        if device not in _DEFAULT_POOLS:
            _DEFAULT_POOLS[device] = ModelPool(device)
        return _DEFAULT_POOLS[device]


_POOLS_LOCK = threading.Lock()


# ---------------------------------------------------------------------- progress and cancel
class JobContext:
    """What a running job gets besides its spec: progress reporting, cancellation, the device."""

    def __init__(self, progress=None, cancel=None, desc: str = "", models: dict | None = None) -> None:
        self._progress, self._cancel, self.desc = progress, cancel, desc
        self.models = models or {}  # name -> loaded VisModel, for spec.extra_models()
        self.store: Store | None = None  # where `run` keeps results (sub-jobs use the same)
        self.pool: ModelPool | None = None
        self.vm = None  # the job's loaded model, handed to its sub-jobs on the same model and weights
        self.own: tuple[str, str | None] | None = None  # (model, weights) of the job's spec

    def sub(self, spec) -> Result:
        """Run another job as part of this one, through the same store, model pool, progress and cancel
        flag: an ordinary job, cached and reused like any other (a lens over a run's snapshots, a row of
        dreams). A sub-job on this job's model and weights gets the loaded model itself (its lock is
        re-entered), so a model the pool does not hold (the report's, a user's wrap()) serves it too."""
        spec = parse_spec(spec)
        vm = self.vm if self.vm is not None and (spec.model, spec.weights) == self.own else None
        return run(spec, store=self.store, pool=self.pool, vm=vm, progress=self._progress, cancel=self._cancel)

    @property
    def log(self) -> Callable[[str], None] | None:
        """Where a job writes a line of news (a layer done): stderr, or None while a terminal shows the job's
        progress bar there, when the caller reports progress itself (a callable) or under CNNVIS_NO_PROGRESS.
        So a log file and `--json` (no bar) still see the lines."""
        import sys

        if os.environ.get("CNNVIS_NO_PROGRESS"):
            return None
        if callable(self._progress):
            return None
        if self._progress is True and getattr(sys.stderr, "isatty", lambda: False)():
            return None
        from cnnvis.progress import say

        return say

    def cancelled(self) -> bool:
        c = self._cancel
        if c is None:
            return False
        return bool(c.is_set() if hasattr(c, "is_set") else c())

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled("the job was cancelled")

    @property
    def bar(self):
        """The `progress=` argument for compute functions: an iterable wrapper that reports and checks cancel."""
        if self._progress is None and self._cancel is None:
            return None
        outer = self

        def wrap(iterable, total=None, desc=""):
            if total is None:
                try:
                    total = len(iterable)
                except TypeError:
                    total = None
            inner = iterable
            if outer._progress is True:  # on stderr always: a bar on a terminal, else plain lines (a log)
                from cnnvis import progress

                inner = progress.wrap(iterable, total, desc or outer.desc, end_line=True)
            done = 0
            for item in inner:
                outer.check()
                yield item
                done += 1
                if callable(outer._progress):
                    outer._progress(done, total, desc or outer.desc)

        return wrap


from cnnvis.progress import LINE_EVERY  # noqa: E402,F401  (its home is cnnvis.progress; kept for old imports)


# ---------------------------------------------------------------------- run
ENV_FIELDS = ("torch", "device", "threads", "machine", "gpu")  # what `env_differs` compares


def run_env(vm=None, device: str | None = None) -> dict:
    """What a result depends on besides its spec and weights: torch version, device, CPU threads.
    Of a loaded model `vm`, or (without one) of `device` as `load` would resolve it."""
    import platform

    import torch

    if vm is not None:
        dev = vm.device
    else:
        from cnnvis.utils import resolve_device

        dev = resolve_device(device or "auto")
    out = {"torch": torch.__version__, "device": str(dev), "threads": torch.get_num_threads(),
           "cnnvis": __version__, "machine": platform.machine()}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


def env_differs(stored: dict, here: dict) -> dict:
    """{field: [stored, here]} for each ENV_FIELDS value that differs (threads only on the CPU)."""
    out = {}
    for k in ENV_FIELDS:
        if k == "threads" and not (str(stored.get("device", "cpu")).startswith("cpu")
                                   and str(here.get("device", "cpu")).startswith("cpu")):
            continue
        if k in stored and stored.get(k) != here.get(k):
            out[k] = [stored.get(k), here.get(k)]
    return out


def _env_words(env: dict, fields) -> str:
    names = {"threads": lambda v: f"{v} CPU thread{'' if v == 1 else 's'}", "torch": lambda v: f"torch {v}", "device": lambda v: f"device {v}",
             "machine": lambda v: f"a {v} machine", "gpu": lambda v: f"GPU {v}"}
    return ", ".join(names[k](env.get(k)) for k in fields)


def env_note(res: Result) -> str:
    """One line: what the cached `res` was made with, beside this process (only for `res.env_differs`)."""
    d = res.env_differs
    stored = {k: v[0] for k, v in d.items()}
    here = {k: v[1] for k, v in d.items()}
    fix = f"--threads {stored['threads']} (torch.set_num_threads)" if set(d) == {"threads"} else "the same set-up"
    return (f"the cached result was computed with {_env_words(stored, d)}; this run has {_env_words(here, d)}: "
            f"computed here it can differ (optimized pictures visibly); use {fix} or run without the cache "
            f"to compute it here")


def _served(hit: Result, env_here: dict) -> Result:
    """A store hit, with what differs between its env and this process's (and a note when anything does)."""
    hit.env_differs = env_differs(hit.env, env_here)
    if hit.env_differs:
        hit.notes.append(env_note(hit))
    return hit


def store_result(res: Result) -> Result:
    """Store a result that `run(..., defer_store=True)` left for later (after the caller wrote its files).
    A store that cannot take it adds a note (and a CacheWarning) instead of raising: the result is kept."""
    pending, res.pending_store = res.pending_store, None
    if pending is None:
        return res
    store, aliases, damaged = pending
    try:
        store.put(res, aliases=aliases)
    except (CnnvisError, OSError, sqlite3.Error) as e:
        res.store_error = str(e)
        res.notes.append((f"a damaged cache entry was computed again ({damaged}); " if damaged else "")
                         + f"the result was not cached: {e}")
    else:
        if damaged:
            res.notes.append(f"a damaged cache entry was computed again and replaced ({damaged})")
    return res


def run(spec, *, store: Store | str | os.PathLike | None = None, progress=None, cancel=None,
        device: str | None = None, pool: ModelPool | None = None, vm=None, defer_store: bool = False) -> Result:
    """Compute (or fetch from `store`) the result of a job spec (a Spec, dict or JSON text).

    progress: None, True (a bar on stderr) or `fn(done, total, desc)`; cancel: a threading.Event
    or a callable returning True to stop (raises `Cancelled`). `vm`: use this loaded model
    instead of loading `spec.model` (the report passes its own); with a store, `spec.model` and
    `spec.weights` must name that model, since they are what the result is stored under.
    A store that cannot be written does not lose the result: it comes back with a note in
    `result.notes`; each note is also a CacheWarning. `defer_store`: leave the storing to
    `store_result(res)` (the CLI writes the user's --out first; its notes are not warned then).
    """
    spec = parse_spec(spec)
    if store is not None and not isinstance(store, Store):
        store = Store(store)
    raw_key = job_key(spec)
    damaged = None
    if store is not None:
        hit, damaged = store.lookup(raw_key)
        if hit is not None:
            return _warn(_served(hit, run_env(vm, device or (pool.device if pool else None))))
    pool = pool or default_pool()
    if device is not None and pool.device != device and vm is None:
        pool = default_pool(device)  # loaded once per device, not once per call
    if not spec.loads_model:  # asked of the kind: it combines other results, never loads weights here
        return _run_modelless(spec, raw_key, store, damaged, pool, vm, progress, cancel, defer_store)
    if vm is None:
        vm = pool.get(spec.model, spec.weights)
    ctx = JobContext(progress, cancel, desc=spec.kind)
    ctx.store, ctx.pool, ctx.vm, ctx.own = store, pool, vm, (spec.model, spec.weights)
    with pool.lock(vm):
        nspec = spec.normalized(vm)
        key = job_key(nspec)
        if store is not None and key != raw_key:
            hit, why = store.lookup(key)
            if hit is not None:
                with contextlib.suppress(CnnvisError, OSError, sqlite3.Error):  # an alias only saves a lookup
                    store.put(hit, aliases=(raw_key,))  # the spec as asked: an alias of the hit
                return _warn(_served(hit, run_env(vm)))
            damaged = damaged or why
        ctx.check()
        extras = {m: pool.get(m, None, role="judge") for m in nspec.extra_models()}
        ctx.models = extras
        t0 = time.perf_counter()
        with contextlib.ExitStack() as held:
            for m in extras.values():
                held.enter_context(pool.lock(m))
            # every kind sees the model in eval mode, frozen; a user's train-mode model (BatchNorm statistics,
            # dropout) comes back as it went in, flags and requires_grad restored, also on error
            from cnnvis.utils import model_guard

            for m in (vm, *extras.values()):
                held.enter_context(model_guard(m.model))
            data, files, main = nspec.run(vm, ctx)
        res = Result(nspec.kind, nspec.to_dict(), key, data, files, main, time.perf_counter() - t0,
                     env=run_env(vm))
    return _finish(res, store, (raw_key,) if raw_key != key else (), damaged, defer_store)


def _run_modelless(spec: Spec, key: str, store, damaged, pool: ModelPool, vm, progress, cancel,
                   defer_store: bool) -> Result:
    """`run` for a kind with `loads_model = False`: no model loaded, no lock taken; `normalized(None)` must
    not change its key. Its sub-jobs (`ctx.sub`) load what they need, or get `vm` when the caller gave one."""
    ctx = JobContext(progress, cancel, desc=spec.kind)
    ctx.store, ctx.pool, ctx.vm, ctx.own = store, pool, vm, (spec.model, spec.weights)
    nspec = spec.normalized(None)
    if job_key(nspec) != key:
        raise RuntimeError(f"job kind {spec.kind!r} loads no model: its normalized(None) must keep its key")
    ctx.check()
    t0 = time.perf_counter()
    data, files, main = nspec.run(None, ctx)
    env = {k: v for k, v in run_env(vm, pool.device).items() if k not in ("device", "threads", "gpu")}  # no model ran
    res = Result(nspec.kind, nspec.to_dict(), key, data, files, main, time.perf_counter() - t0, env=env)
    return _finish(res, store, (), damaged, defer_store)


def _finish(res: Result, store, aliases: tuple, damaged, defer_store: bool) -> Result:
    """A computed result: stored under its key (+ `aliases`) now, or later by the caller (`defer_store`)."""
    if store is not None:
        res.pending_store = (store, aliases, damaged)
        if not defer_store:
            store_result(res)
    return _warn(res)


def _warn(res: Result) -> Result:
    """Each note of `res` as a CacheWarning (the Python API's way of saying it; the CLI prints the notes)."""
    for n in res.notes:
        warnings.warn(n, CacheWarning, stacklevel=3)
    return res
