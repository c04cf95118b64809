"""The result store: one folder per result plus an SQLite index keyed by the spec hash.

    store = Store("~/.cache/cnnvis")
    store.get(key) -> Result | None        # milliseconds
    store.put(result)                      # atomic: files -> temp folder -> rename -> index row

Layout: DIR/objects/<key[:2]>/<key>/{result.json, files...}, DIR/index.sqlite, DIR/tmp/.
A result folder appears only complete (renamed from tmp/ when all files are written), and
the index row is added after the rename, so a killed process never leaves a result that
looks complete. The index is derived data: if it is missing or corrupt it is rebuilt from
the folders (`rebuild()`), losing nothing. Aliases map other hashes of the same job (the spec
as asked, before names were resolved) to the canonical key.

Why not diskcache or joblib.Memory: they keep values as pickles under opaque names; here a
result is a folder of plain PNG/JSON/NPY files that the web server serves as they are and a
person can open, no pickle is ever loaded from a shared cache, and the index answers the
questions the web UI and the atlas ask (every result of a kind, of a model).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from cnnvis.errors import CnnvisError
from cnnvis.jobs.result import RESULT_JSON, Result

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT, spec TEXT NOT NULL,
                                    created REAL NOT NULL, seconds REAL);
CREATE TABLE IF NOT EXISTS aliases (alias TEXT PRIMARY KEY, key TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS results_kind ON results(kind, model);
"""


def _os_error(e: OSError, root: Path) -> CnnvisError:
    if e.errno == errno.ENOSPC:
        why = "the disk is full"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "it is not writable"
    else:
        why = e.strerror or str(e)
    return CnnvisError(f"cache directory {str(root)!r}: {why}; free space, fix its permissions or pass another cache "
                       f"directory")


class Store:
    """Files + SQLite index; safe across threads (one connection per thread) and processes."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise CnnvisError(f"cache directory {str(self.root)!r} is a file; give a folder")
        try:
            (self.root / "objects").mkdir(parents=True, exist_ok=True)
            (self.root / "tmp").mkdir(exist_ok=True)
        except OSError as e:
            raise _os_error(e, self.root) from None
        self._local = threading.local()
        self._open()

    # ------------------------------------------------------------------ index
    @property
    def index_path(self) -> Path:
        return self.root / "index.sqlite"

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.index_path, timeout=30, isolation_level=None)
        con.executescript(_SCHEMA)
        return con

    def _open(self) -> None:
        fresh = not self.index_path.exists()
        try:
            con = self._connect()
            con.execute("SELECT count(*) FROM results").fetchone()
            con.close()
        except sqlite3.DatabaseError:
            self._set_aside_index()
            fresh = True
        except OSError as e:
            raise _os_error(e, self.root) from None
        if fresh and any((self.root / "objects").iterdir()):
            self.rebuild()

    def _set_aside_index(self) -> None:
        """Move a corrupt index out of the way (kept for inspection); a new one is built."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            p = Path(str(self.index_path) + suffix)
            if p.exists():
                with contextlib.suppress(OSError):
                    p.replace(p.with_name(p.name + f".corrupt-{int(time.time())}"))

    @property
    def con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            try:
                con = self._local.con = self._connect()
            except sqlite3.DatabaseError:
                self._set_aside_index()
                self.rebuild()
                con = self._local.con = self._connect()
        return con

    def _folder(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key

    def rebuild(self) -> int:
        """Re-create the index from the result folders. Returns the number of results indexed."""
        con = self._connect()
        n = 0
        with con:
            con.execute("DELETE FROM results")
            for meta_path in (self.root / "objects").glob(f"*/*/{RESULT_JSON}"):
                try:
                    meta = json.loads(meta_path.read_text())
                    if meta["key"] != meta_path.parent.name:
                        continue
                    self._insert(con, meta["key"], meta["kind"], meta["spec"], meta_path.stat().st_mtime,
                                 meta.get("seconds", 0.0))
                    n += 1
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # an unreadable folder is skipped, never deleted
        con.close()
        return n

    @staticmethod
    def _insert(con, key, kind, spec, created, seconds) -> None:
        con.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                    (key, kind, spec.get("model"), json.dumps(spec, sort_keys=True), created, seconds))

    # ------------------------------------------------------------------ get / put
    def resolve(self, key: str) -> str | None:
        """A key or an alias -> the canonical key present in the index, or None."""
        try:
            row = self.con.execute("SELECT key FROM results WHERE key = ? UNION ALL SELECT a.key FROM aliases a "
                                   "JOIN results r ON r.key = a.key WHERE a.alias = ? LIMIT 1", (key, key)).fetchone()
        except sqlite3.DatabaseError:
            self._local.con = None
            self._set_aside_index()
            self.rebuild()
            return self.resolve(key)
        return row[0] if row else None

    def get(self, key: str) -> Result | None:
        """The stored result for `key` (or an alias of it), or None. A row whose folder is gone is dropped."""
        k = self.resolve(key)
        if k is None:
            return None
        folder = self._folder(k)
        try:
            return Result.load(folder)
        except CnnvisError:
            with contextlib.suppress(sqlite3.Error):
                self.con.execute("DELETE FROM results WHERE key = ?", (k,))
            return None

    def __contains__(self, key: str) -> bool:
        return self.resolve(key) is not None

    def put(self, result: Result, aliases: tuple[str, ...] = ()) -> Path:
        """Store `result` atomically; returns its folder. An existing complete result is kept."""
        final = self._folder(result.key)
        tmp = self.root / "tmp" / f"{result.key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            if (final / RESULT_JSON).exists():
                try:
                    Result.load(final)
                except CnnvisError:  # a folder that lost a file: set aside, so this result takes its place
                    with contextlib.suppress(OSError):
                        os.rename(final, self.root / "tmp" / f"{result.key}.broken.{uuid.uuid4().hex[:8]}")
            if not (final / RESULT_JSON).exists():
                result.save(tmp)
                final.parent.mkdir(exist_ok=True)
                try:
                    os.rename(tmp, final)
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    shutil.rmtree(tmp, ignore_errors=True)  # another process stored it first
            with self.con:
                self._insert(self.con, result.key, result.kind, result.spec, time.time(), result.seconds)
                for a in aliases:
                    if a != result.key:
                        self.con.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?)", (a, result.key))
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _os_error(e, self.root) from None
        except sqlite3.OperationalError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if "readonly" in str(e) or "disk" in str(e):
                raise _os_error(OSError(errno.EROFS if "readonly" in str(e) else errno.ENOSPC, str(e)), self.root) \
                    from None
            raise
        return final

    def folder(self, key: str) -> Path | None:
        """The folder of a stored result (for serving its files), or None."""
        k = self.resolve(key)
        return self._folder(k) if k else None

    def list(self, kind: str | None = None, model: str | None = None) -> list[dict]:
        """Index rows (key, kind, model, spec, created) filtered by kind/model, newest first."""
        q, args = "SELECT key, kind, model, spec, created FROM results WHERE 1=1", []
        if kind:
            q += " AND kind = ?"
            args.append(kind)
        if model:
            q += " AND model = ?"
            args.append(model)
        rows = self.con.execute(q + " ORDER BY created DESC", args).fetchall()
        return [{"key": k, "kind": kd, "model": m, "spec": json.loads(s), "created": c} for k, kd, m, s, c in rows]

    def clean_tmp(self, older_than_s: float = 3600) -> int:
        """Remove temp folders left by killed processes (older than `older_than_s`)."""
        n, now = 0, time.time()
        for p in (self.root / "tmp").iterdir():
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > older_than_s:
                    shutil.rmtree(p, ignore_errors=True)
                    n += 1
        return n
