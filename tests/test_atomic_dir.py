"""utils.atomic_dir: the one folder swap behind `top-examples --out` and `embed --out` (issue 19 item 4).
A failure at any point leaves the previous folder byte-identical and no hidden temp folder beside it."""

import os
from pathlib import Path

import pytest

from cnnvis.errors import CnnvisError
from cnnvis.utils import atomic_dir


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _old(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "index.json").write_bytes(b'{"format": "old"}')
    (out / "channel_000.png").write_bytes(bytes(range(256)))
    (out / "sub" / "x.bin").write_bytes(b"\x00\x01")
    return out


def _hidden(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))


def test_success_replaces_the_folder_with_usual_permissions(tmp_path):
    out = _old(tmp_path)
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.") and not any(tmp.iterdir())
        (tmp / "a.txt").write_bytes(b"new")
        assert (out / "index.json").read_bytes() == b'{"format": "old"}'  # untouched until the block ends
    assert _snapshot(out) == {"a.txt": b"new"} and _hidden(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask
    assert ((out / "a.txt").stat().st_mode & 0o777) == 0o666 & ~umask


def test_new_folder_in_new_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with atomic_dir(out) as tmp:
        (tmp / "f").write_bytes(b"1")
    assert _snapshot(out) == {"f": b"1"} and _hidden(out.parent) == []


def test_exception_mid_write_keeps_the_old_folder(tmp_path):
    out = _old(tmp_path)
    before = _snapshot(out)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "index.json").write_bytes(b"half")
            raise KeyboardInterrupt
    assert _snapshot(out) == before and _hidden(tmp_path) == []


def test_oserror_mid_write_is_one_clear_error(tmp_path):
    out = _old(tmp_path)
    before = _snapshot(out)
    with pytest.raises(CnnvisError, match=r"cannot write '.*out': No space left on device; choose a file in a folder"):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_bytes(b"1")
            raise OSError(28, "No space left on device")
    assert _snapshot(out) == before and _hidden(tmp_path) == []


def test_unwritable_parent_is_one_clear_error(tmp_path):
    parent = tmp_path / "file"
    parent.write_bytes(b"not a folder")
    with pytest.raises(CnnvisError, match="cannot write"):
        with atomic_dir(parent / "out"):
            pytest.fail("the block must not run")
    assert parent.read_bytes() == b"not a folder"


def _failing_swap(monkeypatch, tmp_path):
    """os.replace fails when it would put the new folder in place (after the old one was moved aside)."""
    real = os.replace

    def replace(src, dst):
        if Path(src).name.endswith(".part"):
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("writer", ["atomic_dir", "top-examples", "embed"])
def test_failed_swap_puts_the_old_folder_back(monkeypatch, tmp_path, writer):
    from cnnvis.commands.embed import write_out_dir
    from cnnvis.commands.study import _write_dir

    out = _old(tmp_path)
    before = _snapshot(out)
    _failing_swap(monkeypatch, tmp_path)
    files = {"index.json": b"{}", "channel_000.png": b"png"}
    with pytest.raises(CnnvisError, match="cannot write .*Permission denied; choose a file in a folder"):
        if writer == "atomic_dir":
            with atomic_dir(out) as tmp:
                (tmp / "f").write_bytes(b"1")
        elif writer == "top-examples":
            _write_dir(files, out)
        else:
            write_out_dir(out, files)
    assert _snapshot(out) == before and _hidden(tmp_path) == []


def test_top_examples_writes_index_last(monkeypatch, tmp_path):
    from cnnvis.commands.study import _write_dir

    order = []
    real = Path.write_bytes
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: (order.append(self.name), real(self, data))[1])
    _write_dir({"index.json": b"{}", "channel_001.png": b"b", "channel_000.png": b"a"}, tmp_path / "out")
    assert order[-1] == "index.json" and sorted(order) == ["channel_000.png", "channel_001.png", "index.json"]
    assert _snapshot(tmp_path / "out") == {"channel_000.png": b"a", "channel_001.png": b"b", "index.json": b"{}"}
