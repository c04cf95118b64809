"""Background jobs of the web app: two lanes, each a queue and a worker thread; jobs keyed by their
store key.

    jm = JobManager(store, pool, interactive_pool=ModelPool())
    job = jm.submit(spec, watch="v1")   # same key as a queued/running job -> that job (joined); v1: a page
    jm.seen(job.id, "v1")               # that page polled it (watched jobs are cancelled when nobody looks)
    jm.leave(job.id, "v1")              # that page was left (a poll of it arriving later is ignored)
    jm.cancel(job.id)

Lanes: page renders (filters, top examples, the study's jobs) run one at a time in the 'render'
lane; interactive jobs (classify, attribution, one class image, feature maps, DeepDream,
deconvnet, weights, occlusion) in the 'interactive' lane, on their own copies of the models
(`interactive_pool`): they never wait behind a render, not even one on the same model (a model's
lock belongs to its instance). A job submitted with watch=VIEWER (each page load has its own id) is
cancelled when every page watching it was left (`leave`; LEAVE_GRACE_S for another tab to ask for
it) or when none of them has polled it for UNWATCHED_S. A job any client submitted without watch
is never cancelled that way.

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
INTERACTIVE_KINDS = frozenset({"classify", "attribution", "class_image", "feature_maps", "dream", "deconv", "weights",
                               "occlusion"})
RENDER, INTERACTIVE = "render", "interactive"
UNWATCHED_S = 60.0  # a watched job nobody polled for this long is cancelled (a closed or crashed tab)
LEAVE_GRACE_S = 2.0  # after a page is left, another tab polling the same job within this keeps it


def lane_of(kind: str) -> str:
    """'interactive' for the quick jobs a user waits for on the photo and class pages, else 'render'."""
    return INTERACTIVE if kind in INTERACTIVE_KINDS else RENDER


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
    started: float | None = None
    ended: float | None = None
    lane: str = RENDER
    watched: bool = False  # pages show it: cancelled when nobody looks any more
    viewers: dict[str, float] = field(default_factory=dict)  # page id -> last poll
    gone: set[str] = field(default_factory=set)  # pages that were left (their late polls are ignored)
    left_at: float | None = None  # when the last viewer left
    seconds: float | None = None  # compute time of a finished run


def one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


class JobManager:
    """Two lanes (render, interactive), each a queue + one worker thread."""

    def __init__(self, store: Store, pool=None, device: str | None = None, *, start: bool = True,
                 interactive_pool=None, on_done=None) -> None:
        self.store, self.pool, self.device = store, pool, device
        self.pools = {RENDER: pool, INTERACTIVE: interactive_pool if interactive_pool is not None else pool}
        self.runner = run_job  # tests may replace it (same signature as cnnvis.jobs.run)
        self.on_done = on_done  # fn(job, result) after a computed job is stored (the pages' cost book)
        self.runs = 0  # jobs the workers computed (not served from the store): joins are visible here
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queues: dict[str, queue.Queue[Job | None]] = {RENDER: queue.Queue(), INTERACTIVE: queue.Queue()}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if start:
            self.start()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if any(t.is_alive() for t in self._threads):
            return
        self._threads = [threading.Thread(target=self._work, args=(lane,), name=f"cnnvis-web-{lane}", daemon=True)
                         for lane in (RENDER, INTERACTIVE)]
        self._threads.append(threading.Thread(target=self._watch, name="cnnvis-web-watch", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every job, stop the workers (finished results are already in the store)."""
        self._stop.set()
        with self._lock:
            for j in self._jobs.values():
                j.cancel.set()
        for q in self._queues.values():
            q.put(None)
        for t in self._threads:
            t.join(timeout)

    # ------------------------------------------------------------------ API
    def key(self, spec: Spec) -> str:
        return job_key(spec)

    def submit(self, spec: Spec, watch: str | None = None) -> Job:
        """The job of `spec`: done at once when stored, joined when queued/running, else queued."""
        key = self.key(spec)
        now = time.time()
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.status in (QUEUED, RUNNING) and not job.cancel.is_set():
                job.watched = job.watched and bool(watch)  # an unwatched (API) submitter keeps it alive
                if watch:
                    job.viewers[watch], job.left_at = now, None
                    job.gone.discard(watch)
                return job
            stored = self.store.verified(key)  # a damaged entry is computed again
            if stored is not None:
                job = self._jobs[key] = Job(key, spec, DONE, result_key=stored, lane=lane_of(spec.kind))
                return job
            job = self._jobs[key] = Job(key, spec, lane=lane_of(spec.kind), watched=bool(watch),
                                        viewers={watch: now} if watch else {})
            self._prune()
        self._queues[job.lane].put(job)
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

    def seen(self, key: str, viewer: str) -> None:
        """Page `viewer` polled job `key` (ignored once that page was left)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and viewer not in job.gone:
                job.viewers[viewer], job.left_at = time.time(), None

    def leave(self, key: str, viewer: str | None = None) -> Job | None:
        """Page `viewer` (None: every page) showing job `key` was left: once no page watches it, it is
        cancelled after LEAVE_GRACE_S unless a page asks for it again."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.watched and job.status in (QUEUED, RUNNING):
                gone = list(job.viewers) if viewer is None else [viewer]
                for v in gone:
                    job.viewers.pop(v, None)
                    job.gone.add(v)
                if not job.viewers:
                    job.left_at = time.time()
        return job

    def cancel(self, key: str, why: str | None = None) -> Job | None:
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                return None
            if job.status in (QUEUED, RUNNING):
                job.cancel.set()
                job.status, job.ended = CANCELLED, time.time()
                if why:
                    job.error = why
        return job

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def ahead(self, job: Job) -> int:
        """Jobs of its lane queued before `job` or running (0 when it runs)."""
        if job.status != QUEUED:
            return 0
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.lane == job.lane and j is not job and
                       (j.status == RUNNING or j.status == QUEUED and j.created <= job.created))

    # ------------------------------------------------------------------ workers
    def _watch(self) -> None:
        """Cancel watched jobs whose page was left (no poll since) or that nobody polls any more."""
        while not self._stop.wait(0.5):
            now = time.time()
            for job in self.jobs():
                if not job.watched or job.status not in (QUEUED, RUNNING):
                    continue
                if not job.viewers and job.left_at is not None and now - job.left_at >= LEAVE_GRACE_S:
                    self.cancel(job.id, "cancelled: its page was left (open the page again to start it again)")
                elif job.viewers and now - max(job.viewers.values()) >= UNWATCHED_S:
                    self.cancel(job.id, f"cancelled: no page asked about it for {UNWATCHED_S:.0f} s")

    def _work(self, lane: str) -> None:
        q = self._queues[lane]
        while not self._stop.is_set():
            job = q.get()
            if job is None:
                break
            if job.cancel.is_set():
                continue
            with self._lock:
                job.status, job.started = RUNNING, time.time()

            def progress(done, total, desc, job=job):
                job.done, job.total, job.desc = int(done), (int(total) if total else None), str(desc or "")

            try:
                res = self.runner(job.spec, store=self.store, progress=progress, cancel=job.cancel,
                                  pool=self.pools[lane], device=self.device)
                if getattr(res, "store_error", None):  # the page serves the stored files: not stored is failed
                    raise CnnvisError(res.store_error)
                with self._lock:
                    self.runs += 1
                    job.result_key = res.key
                    if job.total:
                        job.done = job.total
                    job.status = DONE  # also when cancelled too late: the result is complete and stored
                    job.ended, job.seconds, job.error = time.time(), getattr(res, "seconds", None), None
                if self.on_done is not None:
                    try:
                        self.on_done(job, res)
                    except Exception:  # noqa: BLE001 - bookkeeping must not fail a finished job
                        log.exception("on_done of job %s", job.id[:12])
            except Cancelled:
                with self._lock:
                    job.status = CANCELLED
                    job.ended = job.ended or time.time()
            except CnnvisError as e:
                with self._lock:
                    job.status, job.error, job.ended = FAILED, one_line(e), time.time()
            except Exception as e:  # noqa: BLE001 - a bug in a kind must not kill the worker
                log.exception("job %s (%s) failed", job.id[:12], getattr(job.spec, "kind", "?"))
                with self._lock:
                    job.status, job.error = FAILED, f"internal error: {type(e).__name__}: {one_line(e)}"
                    job.ended = time.time()
