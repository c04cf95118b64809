"""Run many job specs into one store, in this process or on Ray (render-all, top-examples shards).

    summary = run_many(specs, Store("cache/"), engine="ray", workers=2, units=[16, 16, 4])

Every task is one job spec (a layer page of channels, a shard of a dataset). Tasks whose result is
already in the store are skipped, so a killed run resumes where it stopped. The driver alone writes
the store (SQLite index + files, atomically): Ray workers compute and send the Result back, so the
index never lives on a shared file system. On Ray each worker is an actor that loads the model once
(its own `ModelPool`) and takes a whole GPU (`num_gpus=1`) where the device is CUDA, else `threads`
CPUs. A failed task is retried `retries` times, then reported in the summary (never dropped).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cnnvis.errors import CnnvisError
from cnnvis.jobs.runner import ModelPool, job_key, run
from cnnvis.jobs.spec import parse_spec
from cnnvis.jobs.store import Store
from cnnvis.progress import Bar, say as _say

ENGINES = ("local", "ray")
RAY_MISSING = ("--engine ray needs Ray, which is not installed: pip install 'cnnvis[ray]' (or pip install ray), "
               "or use --engine local")


@dataclass
class Summary:
    """What run_many did: tasks in all, already stored (skipped), computed, failed (spec, error), the
    failed tries that were tried again (`retries`: task index -> their errors), and `lost`: why the run
    stopped early when its Ray cluster went away (the unfinished tasks have key None; run again to finish)."""

    total: int
    skipped: int = 0
    computed: int = 0
    failed: list[tuple[dict, str]] = field(default_factory=list)
    retried: int = 0
    retries: dict[int, list[str]] = field(default_factory=dict)
    lost: str | None = None
    seconds: float = 0.0
    task_seconds: list[float] = field(default_factory=list)  # compute time of each task, where it ran
    task_wall: list[float] = field(default_factory=list)  # driver's submit -> result time of each task
    keys: list[str | None] = field(default_factory=list)  # store key of every task (None: failed)
    specs: list[dict] = field(default_factory=list)  # every task's spec, in order
    workers: int = 1
    engine: str = "local"

    def to_dict(self) -> dict:
        return {"engine": self.engine, "workers": self.workers, "total": self.total, "skipped": self.skipped,
                "computed": self.computed, "retried": self.retried,
                "retries": [{"spec": self.specs[i] if i < len(self.specs) else None, "errors": errs,
                             "stored": self.keys[i] is not None if i < len(self.keys) else False}
                            for i, errs in sorted(self.retries.items())],
                "failed": [{"spec": s, "error": e} for s, e in self.failed], "lost": self.lost,
                "seconds": round(self.seconds, 2), "task_seconds": [round(t, 3) for t in self.task_seconds],
                "task_wall": [round(t, 3) for t in self.task_wall]}


class _Terminated(BaseException):
    """SIGTERM: unwind (finished results are stored already), shut Ray down, exit 143."""


def run_many(specs: Sequence[dict], store: Store, *, engine: str = "local", address: str | None = None,
             workers: int | None = None, device: str | None = None, threads: int | None = None, retries: int = 2,
             units: Sequence[int] | None = None, unit: str = "tasks", progress: bool = True,
             pool: ModelPool | None = None) -> Summary:
    """Compute every spec not yet in `store` and store it; `units[i]`: what task i counts for in the
    bar (its channels, its images). Raises CnnvisError for a bad engine, a missing Ray or a Ray cluster
    that cannot be joined (see ray_connect). If the cluster goes away mid-run, the run ends early with
    `Summary.lost` saying so (what finished is stored; the same call again computes the rest)."""
    if engine not in ENGINES:
        raise CnnvisError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if retries < 0:
        raise CnnvisError(f"retries must be >= 0, got {retries}")
    specs = [parse_spec(s).to_dict() if not isinstance(s, dict) else s for s in specs]
    units = list(units) if units is not None else [1] * len(specs)
    if len(units) != len(specs):
        raise CnnvisError("units must give one number per spec")
    summ = Summary(total=len(specs), engine=engine, keys=[None] * len(specs), specs=specs)
    t0 = time.perf_counter()
    todo = []
    raws = [job_key(parse_spec(s)) for s in specs]  # each task's key as asked (an alias of its stored key)
    for i, raw in enumerate(raws):  # the store is asked first: finished tasks are skipped (resume)
        key = store.verified(raw)  # an entry whose files do not match their sha256 is computed again
        if key is not None:
            summ.skipped += 1
            summ.keys[i] = key
        else:
            todo.append(i)
    # one overall bar: units done of total with ETA (plain lines when stderr is not a terminal); units already
    # stored count as done but not in the rate: the ETA is this run's time per unit times the units left
    bar = Bar(sum(units), unit=unit, enabled=progress, leave=True, style="eta",
              skipped=sum(units) - sum(units[i] for i in todo))
    _say(f"{len(specs)} tasks: {summ.skipped} already in {str(store.root)!r}, {len(todo)} to run "
         f"({engine} engine)", progress)
    old = signal.getsignal(signal.SIGTERM)
    in_main = _is_main_thread()
    _TERM.update({"raise": True, "seen": False})
    _catch_sigterm()
    try:
        if engine == "local":
            _run_local(specs, raws, todo, store, summ, bar, units, device, retries, pool)
        else:
            _run_ray(specs, raws, todo, store, summ, bar, units, device, threads, retries, address, workers,
                     progress)
    except _Terminated:
        bar.close()
        _say(f"terminated: {summ.computed} tasks stored this run; run the same command again to finish", progress)
        raise SystemExit(143) from None
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, old)
    bar.close()
    summ.seconds = time.perf_counter() - t0
    return summ


_TERM = {"raise": True, "seen": False}  # inside Ray's wait the handler only notes it (raising there breaks Ray)


def _term(signum, frame):
    _TERM["seen"] = True
    if _TERM["raise"]:
        raise _Terminated()


def _catch_sigterm() -> None:
    """SIGTERM -> _Terminated in the main thread (again after ray.init, which sets its own handler)."""
    if _is_main_thread():
        signal.signal(signal.SIGTERM, _term)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _run_local(specs, raws, todo, store, summ, bar, units, device, retries, pool) -> None:
    pool = pool or ModelPool(device)
    for i in todo:
        for attempt in range(retries + 1):
            t = time.perf_counter()
            try:
                res = run(specs[i], pool=pool)
            except CnnvisError as e:
                err = str(e)
            except Exception as e:  # noqa: BLE001 - a task's failure is reported, never the whole run's end
                err = f"{type(e).__name__}: {e}"
            else:
                _keep(store, summ, bar, raws[i], i, units[i], res, t)
                break
            if not _again(summ, bar, i, specs[i], units[i], err, attempt, retries):
                break


def _keep(store, summ, bar, raw: str, i: int, unit: int, res, t0: float) -> None:
    """Store task i's result (the driver is the store's one writer; `raw`: its key as asked) and count it."""
    store.put(res, aliases=(raw,) if raw != res.key else ())
    summ.computed += 1
    summ.keys[i] = res.key
    summ.task_seconds.append(res.seconds)
    summ.task_wall.append(time.perf_counter() - t0)
    bar.update(unit)


def _again(summ, bar, i: int, spec: dict, unit: int, err: str, attempt: int, retries: int) -> bool:
    """After failed try `attempt` (0-based) of task i: True to try again, else it is reported as failed.
    Every failed try that is tried again is kept in summ.retries (the summary names them)."""
    if attempt < retries:
        summ.retried += 1
        summ.retries.setdefault(i, []).append(err.splitlines()[0][:300] if err else "failed")
        return True
    summ.failed.append((spec, err.splitlines()[0][:500] if err else "failed"))
    bar.update(unit, note=f"{len(summ.failed)} failed")
    return False


# ---------------------------------------------------------------------- Ray
def import_ray(address: str | None = None):
    """Ray, or a CnnvisError saying how to install it; `address` checked too (its form, Ray Client for
    ray://, a cluster for auto), so a command fails before it loads anything."""
    try:
        import ray
    except ImportError:
        raise CnnvisError(RAY_MISSING) from None
    if address:
        from cnnvis.jobs.ray_connect import parse_address

        parse_address(address)
    return ray


class _Worker:
    """A Ray actor: one model pool per worker process (the model is loaded once, not once per task)."""

    def __init__(self, device: str | None, threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        os.environ.setdefault("CNNVIS_NO_PROGRESS", "1")
        self.pool = ModelPool(device)

    def run(self, spec: dict):
        return run(spec, pool=self.pool)


def ray_workers(ray, device: str | None, threads: int, workers: int | None) -> int:
    """How many workers: given, else one per GPU (CUDA) or one per `threads` CPUs of the cluster."""
    if workers is not None:
        if workers < 1:
            raise CnnvisError(f"--workers must be at least 1, got {workers}")
        return workers
    res = ray.cluster_resources()
    if device and str(device).startswith("cuda"):
        n = int(res.get("GPU", 0))
        if n < 1:
            raise CnnvisError("--device cuda on Ray, but the cluster has no GPU; use --device cpu")
        return n
    return max(1, int(res.get("CPU", 1)) // max(1, threads))


WATCH_EVERY = 2.0  # seconds between checks that the cluster still answers (one TCP connect)


INIT_TRIES = 3  # a Ray Client server starts a server per client; on a busy head that start can fail once
INIT_PAUSE_S = 2.0


def _last_line(text: str) -> str:
    """The first line and, where Ray put the cause on a later line (a server's traceback), the last one."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return text
    return lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"


def _connect(ray, address: str | None, workers: int | None, threads: int):
    """ray.init: a local Ray (no address), or the cluster at `address` once it has answered a probe
    (bounded, see ray_connect) -> (host, port to watch, its name, a function restoring RAY_AUTH_MODE).
    SIGTERM while connecting -> _Terminated (Ray's own handler would exit 15)."""
    from cnnvis.jobs.ray_connect import CLIENT_MISSING, FORMS, check_cluster, parse_address

    target = parse_address(address)
    restore = check_cluster(target) if target is not None else (lambda: None)
    kw = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
          "address": target.address if target is not None else "local"}  # "local": never a cluster by surprise
    if target is None and workers:
        kw["num_cpus"] = max(workers * threads, os.cpu_count() or 1)
    try:
        for attempt in range(1, INIT_TRIES + 1):
            try:
                ray.init(**kw)
                break
            except ConnectionAbortedError as e:  # the Ray Client server could not start this client's server
                if attempt == INIT_TRIES or "Initialization failure" not in str(e):
                    raise
                _shutdown_quietly(ray)
                _say(f"the Ray Client server at {target.shown!r} could not start a session "
                     f"({_last_line(str(e))}); trying again ({attempt + 1}/{INIT_TRIES})")
                time.sleep(INIT_PAUSE_S)
        _catch_sigterm()  # ours again (ray.init set its own, which exits 15)
    except SystemExit as e:
        restore()
        if e.code == signal.SIGTERM:
            _shutdown_quietly(ray)
            raise _Terminated() from None
        raise
    except BaseException as e:
        restore()
        _shutdown_quietly(ray)
        if isinstance(e, ValueError) and "ray[client]" in str(e):
            raise CnnvisError(CLIENT_MISSING) from None
        if isinstance(e, (ConnectionError, ValueError, RuntimeError)) and target is not None:
            raise CnnvisError(f"cannot join the Ray cluster at {target.shown!r}: {_last_line(str(e))[:300]}; "
                              f"check --address: {FORMS}") from None
        raise
    if target is not None:
        return target.host, target.port, f"at {target.shown!r}", restore
    host, _, port = str(ray.get_runtime_context().gcs_address).rpartition(":")
    return host, int(port), "that this run started", restore


def _shutdown_quietly(ray) -> None:
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - nothing more to release
        pass


class _Watch:
    """Is the cluster still there? A TCP connect to its GCS (or Ray Client server) every WATCH_EVERY s of
    waiting: two misses in a row -> gone; after a worker's loss or a failed Ray call, one miss is enough."""

    def __init__(self, host: str, port: int, shown: str) -> None:
        self.host, self.port, self.shown = host, port, shown
        self.last, self.misses = time.monotonic(), 0

    def gone(self, now: bool = False) -> str | None:
        from cnnvis.jobs.ray_connect import reachable

        if not now and time.monotonic() - self.last < WATCH_EVERY:
            return None
        self.last = time.monotonic()
        why = reachable(self.host, self.port, timeout=2.0)
        self.misses = self.misses + 1 if why else 0
        if why and (now or self.misses >= 2):
            return f"the Ray cluster {self.shown} went away mid-run ({self.host}:{self.port}: {why})"
        return None


def _run_ray(specs, raws, todo, store, summ, bar, units, device, threads, retries, address, workers,
             progress) -> None:
    if not todo:
        return
    ray = import_ray()
    threads = threads or 1
    started_here = not ray.is_initialized()
    restore = lambda: None  # noqa: E731
    watch = None
    if started_here:
        host, port, shown, restore = _connect(ray, address, workers, threads)
        watch = _Watch(host, port, shown)
    actors: list = []
    try:
        n = min(ray_workers(ray, device, threads, workers), len(todo))
        summ.workers = n
        gpu = bool(device and str(device).startswith("cuda"))
        opts = {"num_gpus": 1, "num_cpus": 0} if gpu else {"num_cpus": threads}
        Actor = ray.remote(_Worker).options(**opts)
        actors += [Actor.remote(device, threads) for _ in range(n)]
        _say(f"Ray: {n} workers ({'1 GPU' if gpu else f'{threads} CPU thread(s)'} each)"
             + (f" on {address}" if address else ""), progress)
        queue = list(todo)
        tries = {i: 0 for i in todo}  # failed tries so far
        running: dict = {}  # ObjectRef -> (task index, actor index, submit time)
        idle = list(range(n))

        def submit():
            while queue and idle:
                a = idle.pop()
                i = queue.pop(0)
                running[actors[a].run.remote(specs[i])] = (i, a, time.perf_counter())

        submit()
        while running:
            _TERM["raise"] = False
            try:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)  # short waits: SIGTERM is seen
            except Exception:  # noqa: BLE001 - Ray Client raises when its server is gone
                if watch is not None and (lost := watch.gone(now=True)):
                    summ.lost = lost
                    return
                raise
            finally:
                _TERM["raise"] = True
            if _TERM["seen"]:
                raise _Terminated()
            if not ready:
                if watch is not None and (lost := watch.gone()):
                    summ.lost = lost
                    return
                continue
            ref = ready[0]
            i, a, t = running.pop(ref)
            try:
                res = ray.get(ref)
            except ray.exceptions.RayActorError as e:  # the worker died: a fresh one, the task again
                if watch is not None and (lost := watch.gone(now=True)):  # ... unless the cluster is gone
                    summ.lost = lost
                    return
                actors[a] = Actor.remote(device, threads)
                err = f"worker died: {e}"
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if getattr(e, "cause", None) is not None else e
                err = str(cause) if isinstance(cause, CnnvisError) else f"{type(cause).__name__}: {cause}"
            else:
                _keep(store, summ, bar, raws[i], i, units[i], res, t)
                err = None
            idle.append(a)
            if err is not None:
                if _again(summ, bar, i, specs[i], units[i], err, tries[i], retries):
                    queue.append(i)
                tries[i] += 1
            submit()
    finally:
        if summ.lost is None:
            for a in actors:  # their CPUs/GPUs go back to the cluster (a joined Ray keeps running)
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        if started_here:
            _shutdown_quietly(ray)
            restore()
