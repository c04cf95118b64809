"""Background jobs of the web app: one queue, one worker thread, jobs keyed by their store key.

    jm = JobManager(store, pool)
    job = jm.submit(spec)        # a Spec; same key as a queued/running job -> that job (joined)
    jm.status(job.id)            # {"id", "status", "progress", "error", "result"}
    jm.cancel(job.id)

Status lives in memory; results live only in the Store (a restart serves them at once). A job
already in the store is done without queueing. A failed job keeps its one-line error until it
is asked for again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from cnnvis.errors import CnnvisError
from cnnvis.jobs import Cancelled, Spec, Store, job_key
from cnnvis.jobs import run as run_job

log = logging.getLogger("cnnvis.web")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
MAX_KEPT = 10_000  # job statuses kept in memory (a forgotten done job is still found in the store)


@dataclass
class Job:
    id: str
    spec: Spec
    status: str = QUEUED
    done: int = 0
    total: int | None = None
    desc: str = ""
    error: str | None = None
    result_key: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.time)


def one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


class JobManager:
    """Queue + one worker thread (CPU: one job at a time keeps the server responsive)."""

    def __init__(self, store: Store, pool=None, device: str | None = None, *, start: bool = True) -> None:
        self.store, self.pool, self.device = store, pool, device
        self.runner = run_job  # tests may replace it (same signature as cnnvis.jobs.run)
        self.runs = 0  # jobs the worker computed (not served from the store): joins are visible here
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="cnnvis-web-jobs", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every job, stop the worker (finished results are already in the store)."""
        self._stop.set()
        with self._lock:
            for j in self._jobs.values():
                j.cancel.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ API
    def key(self, spec: Spec) -> str:
        return job_key(spec)

    def submit(self, spec: Spec) -> Job:
        """The job of `spec`: done at once when stored, joined when queued/running, else queued."""
        key = self.key(spec)
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.status in (QUEUED, RUNNING) and not job.cancel.is_set():
                return job
            stored = self.store.verified(key)  # a damaged entry is computed again
            if stored is not None:
                job = self._jobs[key] = Job(key, spec, DONE, result_key=stored)
                return job
            job = self._jobs[key] = Job(key, spec)
            self._prune()
        self._queue.put(job)
        return job

    def _prune(self) -> None:
        """Forget the oldest finished jobs beyond MAX_KEPT (their results stay in the store)."""
        if len(self._jobs) <= MAX_KEPT:
            return
        old = sorted((j.created, k) for k, j in self._jobs.items() if j.status not in (QUEUED, RUNNING))
        for _, k in old[: len(self._jobs) - MAX_KEPT]:
            del self._jobs[k]

    def get(self, key: str) -> Job | None:
        """The job `key` in memory, or a done job for a result in the store, or None."""
        with self._lock:
            job = self._jobs.get(key)
        if job is not None:
            return job
        stored = self.store.verified(key)  # a damaged entry is computed again
        if stored is None:
            return None
        return Job(key, None, DONE, result_key=stored)  # type: ignore[arg-type]

    def cancel(self, key: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                return None
            if job.status in (QUEUED, RUNNING):
                job.cancel.set()
                job.status = CANCELLED
        return job

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while not self._stop.is_set():
            job = self._queue.get()
            if job is None:
                break
            if job.cancel.is_set():
                continue
            with self._lock:
                job.status = RUNNING

            def progress(done, total, desc, job=job):
                job.done, job.total, job.desc = int(done), (int(total) if total else None), str(desc or "")

            try:
                res = self.runner(job.spec, store=self.store, progress=progress, cancel=job.cancel, pool=self.pool,
                                  device=self.device)
                if getattr(res, "store_error", None):  # the page serves the stored files: not stored is failed
                    raise CnnvisError(res.store_error)
                with self._lock:
                    self.runs += 1
                    job.result_key = res.key
                    if job.total:
                        job.done = job.total
                    job.status = DONE  # also when cancelled too late: the result is complete and stored
            except Cancelled:
                with self._lock:
                    job.status = CANCELLED
            except CnnvisError as e:
                with self._lock:
                    job.status, job.error = FAILED, one_line(e)
            except Exception as e:  # noqa: BLE001 - a bug in a kind must not kill the worker
                log.exception("job %s (%s) failed", job.id[:12], getattr(job.spec, "kind", "?"))
                with self._lock:
                    job.status, job.error = FAILED, f"internal error: {type(e).__name__}: {one_line(e)}"
