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
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cnnvis.errors import CnnvisError
from cnnvis.jobs.runner import ModelPool, job_key, run
from cnnvis.jobs.spec import parse_spec
from cnnvis.jobs.store import Store

ENGINES = ("local", "ray")
RAY_MISSING = ("--engine ray needs Ray, which is not installed: pip install 'cnnvis[ray]' (or pip install ray), "
               "or use --engine local")


@dataclass
class Summary:
    """What run_many did: tasks in all, already stored (skipped), computed, failed (spec, error)."""

    total: int
    skipped: int = 0
    computed: int = 0
    failed: list[tuple[dict, str]] = field(default_factory=list)
    retried: int = 0
    seconds: float = 0.0
    task_seconds: list[float] = field(default_factory=list)  # compute time of each task, where it ran
    task_wall: list[float] = field(default_factory=list)  # driver's submit -> result time of each task
    keys: list[str | None] = field(default_factory=list)  # store key of every task (None: failed)
    workers: int = 1
    engine: str = "local"

    def to_dict(self) -> dict:
        return {"engine": self.engine, "workers": self.workers, "total": self.total, "skipped": self.skipped,
                "computed": self.computed, "retried": self.retried, "failed": [{"spec": s, "error": e}
                                                                            for s, e in self.failed],
                "seconds": round(self.seconds, 2), "task_seconds": [round(t, 3) for t in self.task_seconds],
                "task_wall": [round(t, 3) for t in self.task_wall]}


class _Bar:
    """One overall bar on stderr: units (channels, images) done of total, with ETA; plain lines when
    stderr is not a terminal (every CNNVIS_PROGRESS_EVERY seconds)."""

    def __init__(self, total: int, unit: str, enabled: bool) -> None:
        from cnnvis.jobs.runner import LINE_EVERY

        self.total, self.unit, self.done, self.t0 = total, unit, 0, time.perf_counter()
        self.every, self.last, self.tq = LINE_EVERY, self.t0, None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.tq = tqdm(total=total, unit=unit, dynamic_ncols=True, mininterval=0.5)

    def update(self, n: int, note: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        if self.tq is not None:
            self.tq.update(n)
            if note:
                self.tq.set_postfix_str(note, refresh=False)
            return
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            el = now - self.t0
            eta = el / self.done * (self.total - self.done) if self.done else float("nan")
            print(f"{self.done}/{self.total} {self.unit} ({el:.0f} s, ETA {eta:.0f} s){' ' + note if note else ''}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tq is not None:
            self.tq.close()


def _say(msg: str, enabled: bool) -> None:
    if enabled:
        print(msg, file=sys.stderr, flush=True)


class _Terminated(BaseException):
    """SIGTERM: unwind (finished results are stored already), shut Ray down, exit 143."""


def run_many(specs: Sequence[dict], store: Store, *, engine: str = "local", address: str | None = None,
             workers: int | None = None, device: str | None = None, threads: int | None = None, retries: int = 2,
             units: Sequence[int] | None = None, unit: str = "tasks", progress: bool = True,
             pool: ModelPool | None = None) -> Summary:
    """Compute every spec not yet in `store` and store it; `units[i]`: what task i counts for in the
    bar (its channels, its images). Raises CnnvisError for a bad engine or a missing Ray."""
    if engine not in ENGINES:
        raise CnnvisError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if retries < 0:
        raise CnnvisError(f"retries must be >= 0, got {retries}")
    specs = [parse_spec(s).to_dict() if not isinstance(s, dict) else s for s in specs]
    units = list(units) if units is not None else [1] * len(specs)
    if len(units) != len(specs):
        raise CnnvisError("units must give one number per spec")
    summ = Summary(total=len(specs), engine=engine, keys=[None] * len(specs))
    t0 = time.perf_counter()
    bar = _Bar(sum(units), unit, progress)
    todo = []
    raws = [job_key(parse_spec(s)) for s in specs]  # each task's key as asked (an alias of its stored key)
    for i, raw in enumerate(raws):  # the store is asked first: finished tasks are skipped (resume)
        key = store.resolve(raw)
        if key is not None and store.folder(key) is not None:
            summ.skipped += 1
            summ.keys[i] = key
            bar.update(units[i])
        else:
            todo.append(i)
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
            if not _again(summ, bar, specs[i], units[i], err, attempt, retries):
                break


def _keep(store, summ, bar, raw: str, i: int, unit: int, res, t0: float) -> None:
    """Store task i's result (the driver is the store's one writer; `raw`: its key as asked) and count it."""
    store.put(res, aliases=(raw,) if raw != res.key else ())
    summ.computed += 1
    summ.keys[i] = res.key
    summ.task_seconds.append(res.seconds)
    summ.task_wall.append(time.perf_counter() - t0)
    bar.update(unit)


def _again(summ, bar, spec: dict, unit: int, err: str, attempt: int, retries: int) -> bool:
    """After failed try `attempt` (0-based) of a task: True to try again, else it is reported as failed."""
    if attempt < retries:
        summ.retried += 1
        return True
    summ.failed.append((spec, err.splitlines()[0][:500] if err else "failed"))
    bar.update(unit, note=f"{len(summ.failed)} failed")
    return False


# ---------------------------------------------------------------------- Ray
def import_ray():
    """Ray, or a CnnvisError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise CnnvisError(RAY_MISSING) from None
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


def _run_ray(specs, raws, todo, store, summ, bar, units, device, threads, retries, address, workers,
             progress) -> None:
    if not todo:
        return
    ray = import_ray()
    threads = threads or 1
    started_here = not ray.is_initialized()
    if started_here:
        kw = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            kw["address"] = address
        elif workers:
            kw["num_cpus"] = max(workers * threads, os.cpu_count() or 1)
        try:
            ray.init(**kw)
        except ConnectionError as e:
            raise CnnvisError(f"cannot reach the Ray cluster at {address!r}: {e}; check --address "
                              "(ray://HOST:10001 or HOST:6379), or leave it out for a local Ray") from None
        _catch_sigterm()
    actors: list = []
    try:
        n = min(ray_workers(ray, device, threads, workers), len(todo))
        summ.workers = n
        gpu = bool(device and str(device).startswith("cuda"))
        opts = {"num_gpus": 1, "num_cpus": 0} if gpu else {"num_cpus": threads}
        Actor = ray.remote(_Worker).options(**opts)
        actors += [Actor.remote(device, threads) for _ in range(n)]
        _say(f"Ray: {n} workers ({'1 GPU' if gpu else f'{threads} CPU thread(s)'} each)", progress)
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
            finally:
                _TERM["raise"] = True
            if _TERM["seen"]:
                raise _Terminated()
            if not ready:
                continue
            ref = ready[0]
            i, a, t = running.pop(ref)
            try:
                res = ray.get(ref)
            except ray.exceptions.RayActorError as e:  # the worker died: a fresh one, the task again
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
                if _again(summ, bar, specs[i], units[i], err, tries[i], retries):
                    queue.append(i)
                tries[i] += 1
            submit()
    finally:
        for a in actors:  # their CPUs/GPUs go back to the cluster (a joined Ray keeps running)
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if started_here:
            ray.shutdown()
