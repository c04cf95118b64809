"""The result store: one folder per result plus an SQLite index keyed by the spec hash.

    store = Store("~/.cache/cnnvis")
    store.get(key) -> Result | None        # milliseconds; every file checked against its size and sha256
    store.lookup(key) -> (Result | None, why damaged | None)
    store.put(result)                      # atomic: files -> temp folder -> rename -> index row

Layout: DIR/objects/<key[:2]>/<key>/{result.json, files...}, DIR/index.sqlite, DIR/tmp/.
A result folder appears only complete (renamed from tmp/ when all files are written), and
the index row is added after the rename, so a killed process never leaves a result that
looks complete. The index is derived data: if it is missing or corrupt it is rebuilt from
the folders (`rebuild()`), losing nothing. Aliases map other hashes of the same job (the spec
as asked, before names were resolved) to the canonical key.

Nothing is served unchecked: result.json records each file's size and sha256, and a hit whose
files do not match (truncated, altered, lost; result.json deleted) is a miss that says why
(`lookup`); the caller computes again and `put` replaces the damaged folder, so the next
request hits. A cache that cannot be written (read-only, full disk) is one CnnvisError naming
the cache directory; `put` leaves nothing behind in tmp/.

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
from cnnvis.jobs.result import RESULT_JSON, DamagedResult, Result

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


def _sqlite_error(e: sqlite3.Error, root: Path) -> CnnvisError:
    """An index that cannot be written (read-only, full disk) as the OSError it is; others named as they are."""
    text = str(e).lower()
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return _os_error(OSError(errno.EROFS, str(e)), root)
    if "disk" in text or "full" in text:
        return _os_error(OSError(errno.ENOSPC, str(e)), root)
    return CnnvisError(f"cache directory {str(root)!r}: its index failed ({e}); pass another cache directory")


def _unwritable(e: sqlite3.Error) -> bool:
    """An sqlite error that says the index cannot be opened or written (not that it is corrupt)."""
    text = str(e).lower()
    return isinstance(e, sqlite3.OperationalError) and any(
        w in text for w in ("readonly", "read-only", "unable to open", "disk is full", "disk i/o"))


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
        self._ok: dict[str, tuple] = {}  # key -> file signature of its last successful check (see `verified`)
        self._ok_lock = threading.Lock()
        self._index_lock = threading.Lock()  # one thread sets a corrupt index aside and rebuilds it
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
        except sqlite3.DatabaseError as e:
            if _unwritable(e):
                raise _sqlite_error(e, self.root) from None
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

    def _index_id(self) -> tuple[int, int] | None:
        """(device, inode) of the index file now, None when it is missing."""
        try:
            st = os.stat(self.index_path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    @property
    def con(self) -> sqlite3.Connection:
        """This thread's connection to the index file that is in place now: a thread whose index was set
        aside (found corrupt by another thread or process) or deleted reconnects, so nothing is written into
        a file that is no longer the index; a missing index is rebuilt from the result folders."""
        held = getattr(self._local, "con", None)
        now = self._index_id()
        if held is not None and now is not None and held[1] == now:
            return held[0]
        self._drop_con()
        if now is None:
            with self._index_lock:  # one thread rebuilds; the others find the new index in place
                if self._index_id() is None:
                    self._open()
        try:
            con = self._connect()
        except sqlite3.DatabaseError as e:
            if _unwritable(e):
                raise _sqlite_error(e, self.root) from None
            self._replace_index(None)
            con = self._connect()
        self._local.con = (con, self._index_id())
        return con

    def _drop_con(self) -> tuple | None:
        """Close this thread's connection; returns what it held ((connection, index id) or None)."""
        held = getattr(self._local, "con", None)
        self._local.con = None
        if held is not None:
            with contextlib.suppress(sqlite3.Error):
                held[0].close()
        return held

    def _replace_index(self, seen: tuple[int, int] | None) -> None:
        """Set a corrupt index aside and rebuild it from the folders, once: not when the index in place is no
        longer the one `seen` (another thread or process replaced it since)."""
        with self._index_lock:
            if seen is not None and self._index_id() != seen:
                return
            self._set_aside_index()
            self.rebuild()

    def _recover(self) -> None:
        """The index was found corrupt while in use: replace it (every thread reconnects to the new one)."""
        held = self._drop_con()
        self._replace_index(held[1] if held is not None else None)

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
        """A key or an alias -> the canonical key present in the index, or None (no check of its files)."""
        try:
            row = self.con.execute("SELECT key FROM results WHERE key = ? UNION ALL SELECT a.key FROM aliases a "
                                   "JOIN results r ON r.key = a.key WHERE a.alias = ? LIMIT 1", (key, key)).fetchone()
        except sqlite3.DatabaseError as e:
            if _unwritable(e):
                raise _sqlite_error(e, self.root) from None
            self._recover()
            return self.resolve(key)
        return row[0] if row else None

    def get(self, key: str) -> Result | None:
        """The stored result for `key` (or an alias of it), its files checked against their recorded sizes and
        sha256, or None. A damaged entry (see `lookup`) is None: computed again, `put` replaces it."""
        return self.lookup(key)[0]

    def lookup(self, key: str) -> tuple[Result | None, str | None]:
        """(result, None) for an intact entry; (None, why) for a damaged one (a file missing, truncated or
        altered, result.json lost or unreadable: its index row is dropped, its folder left for `put` to
        replace, also when its row was dropped before); (None, None) when there is none."""
        k = self.resolve(key)
        if k is None:
            if self._folder(key).exists():  # no row, but a folder (its row dropped as damaged before): say why
                try:
                    self._load(key)
                except DamagedResult as e:
                    return None, str(e)
            return None, None  # an intact folder without its row is indexed by `put` or `rebuild`
        try:
            res = self._load(k)
        except DamagedResult as e:
            self._drop(k)
            return None, str(e)
        return res, None

    def verified(self, key: str) -> str | None:
        """Like `resolve`, but only for an entry whose files are intact (checked once per change of their
        sizes/mtimes); a damaged entry's row is dropped. For serving a stored folder's files as they are."""
        k = self.resolve(key)
        if k is None:
            return None
        sig = self._signature(k)
        with self._ok_lock:
            if sig is not None and self._ok.get(k) == sig:
                return k
        try:
            self._load(k)
        except DamagedResult:
            self._drop(k)
            return None
        return k

    def _load(self, k: str) -> Result:
        folder = self._folder(k)
        sig = self._signature(k)
        res = Result.load(folder, need_digests=True)
        if res.key != k:
            raise DamagedResult(f"stored result {str(folder)!r} holds the result {res.key[:12]}, not {k[:12]}")
        if sig is not None:
            with self._ok_lock:
                self._ok[k] = sig
        return res

    def _signature(self, k: str) -> tuple | None:
        """(name, size, mtime_ns, inode) of every file of an entry: what `verified` memoizes a check by."""
        try:
            return tuple(sorted((p.name, st.st_size, st.st_mtime_ns, st.st_ino)
                                for p in self._folder(k).iterdir() for st in [p.stat()]))
        except OSError:
            return None

    def _drop(self, k: str) -> None:
        with self._ok_lock:
            self._ok.pop(k, None)
        with contextlib.suppress(sqlite3.Error):
            self.con.execute("DELETE FROM results WHERE key = ?", (k,))

    def _intact(self, k: str) -> bool:
        try:
            self._load(k)
            return True
        except DamagedResult:
            return False

    def __contains__(self, key: str) -> bool:
        return self.resolve(key) is not None

    def put(self, result: Result, aliases: tuple[str, ...] = ()) -> Path:
        """Store `result` atomically; returns its folder. An intact stored result is kept; a damaged or
        partial folder under the same key (a file lost, result.json deleted) is replaced. A cache that
        cannot be written (read-only, full) is a CnnvisError naming the cache directory and why; nothing is
        left in its tmp/."""
        final = self._folder(result.key)
        tmp = self.root / "tmp" / f"{result.key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            if not self._intact(result.key):
                self._write(result, tmp)
                final.parent.mkdir(exist_ok=True)
                aside = None
                for attempt in range(2):
                    if final.exists() and not self._intact(result.key):
                        aside = self._set_aside(final)  # damaged or partial: this result takes its place
                    try:
                        os.rename(tmp, final)
                        break
                    except OSError as e:
                        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or attempt:
                            raise
                        if self._intact(result.key):  # another process stored it first
                            break
                if aside is not None:
                    shutil.rmtree(aside, ignore_errors=True)
            for attempt in range(2):
                try:
                    self._index_put(result, aliases)
                    break
                except sqlite3.DatabaseError as e:
                    if _unwritable(e) or attempt:
                        raise
                    self._recover()  # corrupt: set aside and rebuilt from the folders (this one's among them)
        except OSError as e:
            raise _os_error(e, self.root) from None
        except sqlite3.Error as e:
            raise _sqlite_error(e, self.root) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _index_put(self, result: Result, aliases: tuple[str, ...]) -> None:
        con = self.con
        with con:
            self._insert(con, result.key, result.kind, result.spec, time.time(), result.seconds)
            for a in aliases:
                if a != result.key:
                    con.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?)", (a, result.key))

    def _write(self, result: Result, folder: Path) -> None:
        """Every file + result.json into a new folder (OSError as raised: `put` names the cache, not the file)."""
        folder.mkdir(parents=True)
        for name, blob in result.files.items():
            p = folder / name
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f:
                f.write(blob)
        with open(folder / RESULT_JSON, "w") as f:
            json.dump(result.record(), f, indent=1)

    def _set_aside(self, folder: Path) -> Path:
        """Move a damaged entry into tmp/, out of its key's way (one rename: atomic for other readers)."""
        aside = self.root / "tmp" / f"{folder.name}.damaged.{uuid.uuid4().hex[:8]}"
        os.rename(folder, aside)
        with self._ok_lock:
            self._ok.pop(folder.name, None)
        return aside

    def folder(self, key: str, *, intact: bool = True) -> Path | None:
        """The folder of a stored result (for serving its files), or None: by default only when its files
        match their recorded sha256 (`verified`: a truncated or altered file is never served as it is)."""
        k = self.verified(key) if intact else self.resolve(key)
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
