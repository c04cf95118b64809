"""What a layer page costs here: seconds per channel of the pages' quick renders, measured by this
server's finished jobs and read from the store's earlier results (their `seconds` per layer row).

    book = CostBook(store)
    book.per_channel(ref, "features.21")   # 24.4, or None when never measured
"""

from __future__ import annotations

import json
import threading


class CostBook:
    """Seconds per channel of a layer's quick filters render, by (model ref, dotted layer)."""

    def __init__(self, store) -> None:
        self.store = store
        self._cost: dict[tuple[str, str], float] = {}
        self._loaded: set[str] = set()
        self._lock = threading.Lock()

    def record(self, ref: str, spec: dict, data: dict) -> None:
        """Learn from a filters result at the pages' quick settings (spec and data as stored)."""
        from cnnvis.web.specs import QUICK_STEPS

        if spec.get("kind") != "filters" or spec.get("steps") != QUICK_STEPS:
            return
        for row in data.get("layers") or []:
            n, s = len(row.get("channels") or []), row.get("seconds")
            if n and isinstance(s, (int, float)) and s > 0:
                with self._lock:
                    self._cost[(ref, row.get("module") or row.get("layer"))] = float(s) / n

    def _load(self, ref: str) -> None:
        with self._lock:
            if ref in self._loaded:
                return
            self._loaded.add(ref)
        for row in self.store.list(kind="filters", model=ref):
            folder = self.store.folder(row["key"], intact=False)  # its result.json alone is read
            try:
                meta = json.loads((folder / "result.json").read_text()) if folder else None
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict) and isinstance(meta.get("data"), dict):
                self.record(ref, row["spec"], meta["data"])

    def per_channel(self, ref: str, dotted: str) -> float | None:
        """Measured seconds a channel of `dotted` takes, or None."""
        self._load(ref)
        with self._lock:
            return self._cost.get((ref, dotted))

    def on_done(self, job, res) -> None:
        """JobManager hook: a computed job's result."""
        if res.kind == "filters":
            self.record(res.spec.get("model"), res.spec, res.data)
