"""The import rules of docs/ARCHITECTURE.md, enforced by reading the sources (an AST scan, no imports):

1. a compute package (optvis, attribution, deconv, dream, study, train, data) imports nothing from the
   faces or the job layer (viz, jobs, commands, sections, report, web, cli);
2. nothing outside cnnvis/models/ (src, tests, bench) imports a private name (leading underscore) from
   cnnvis.models or one of its modules.

Violations that exist today are listed in ALLOWED, each with the issue item that removes it; an entry
that no longer matches anything fails too (delete it when its fix lands), so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "cnnvis"
COMPUTE = ("optvis", "attribution", "deconv", "dream", "study", "train", "data")
FORBIDDEN = ("viz", "jobs", "commands", "sections", "report", "web", "cli")

# (file relative to src/cnnvis, imported module): why it is still there and what removes it
ALLOWED = {
}


def _module_parts(path: Path, root: Path, package: str) -> list[str]:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports(source: str, module: list[str], is_package: bool) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in `source`, relative ones resolved
    against `module` (its dotted parts; `is_package`: an __init__.py). `import a.b` gives names []."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = module if is_package else module[:-1]
                base = pkg[:len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod, [a.name for a in node.names]))
    return out


def layer_violations(source: str, rel: str) -> list[tuple[str, int, str]]:
    """Rule 1 for the file `rel` (relative to src/cnnvis): (rel, line, module) of each forbidden import."""
    parts = _module_parts(SRC / rel, SRC, "cnnvis")
    if len(parts) < 2 or parts[1] not in COMPUTE:
        return []
    bad = []
    for line, mod, names in imports(source, parts, rel.endswith("__init__.py")):
        p = mod.split(".")
        if p[0] != "cnnvis":
            continue
        if len(p) > 1 and p[1] in FORBIDDEN:
            bad.append((rel, line, mod))
        elif len(p) == 1:  # `from cnnvis import viz`
            bad += [(rel, line, f"cnnvis.{n}") for n in names if n in FORBIDDEN]
    return bad


def private_model_names(source: str, rel: str, module: list[str], is_package: bool) -> list[tuple[str, int, str]]:
    """Rule 2: (rel, line, 'cnnvis.models.x._name') for each private name imported from cnnvis.models*."""
    bad = []
    for line, mod, names in imports(source, module, is_package):
        p = mod.split(".")
        if p[:2] == ["cnnvis", "models"]:
            bad += [(rel, line, f"{mod}.{n}") for n in names if n.startswith("_") and n != "__future__"]
            bad += [(rel, line, mod) for part in p[2:] if part.startswith("_")]
        elif p == ["cnnvis"] and "models" in names:
            pass  # `from cnnvis import models` is public; attribute reads are not scanned
    return bad


def _scan() -> list[tuple[str, int, str]]:
    found = []
    assert len(list(SRC.rglob("*.py"))) > 50 and (SRC / "attribution" / "registry.py").is_file()  # not vacuous
    for f in sorted(SRC.rglob("*.py")):
        rel = f.relative_to(SRC).as_posix()
        src = f.read_text()
        found += layer_violations(src, rel)
        if not rel.startswith("models/"):
            found += private_model_names(src, rel, _module_parts(f, SRC, "cnnvis"), f.name == "__init__.py")
    for d in ("tests", "bench"):
        for f in sorted((ROOT / d).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            found += private_model_names(f.read_text(), rel, _module_parts(f, ROOT / d, d), f.name == "__init__.py")
    return found


def test_the_import_rules_hold():
    found = _scan()
    new = [f"{rel}:{line} imports {mod}" for rel, line, mod in found if (rel, mod) not in ALLOWED]
    assert not new, ("import rules of docs/ARCHITECTURE.md broken (compute imports no viz/jobs/faces; nothing "
                     "outside cnnvis/models imports a models private name): move the code to its layer or use "
                     "the public API (cnnvis.models.refs, list_models, model_info):\n  " + "\n  ".join(new))
    stale = sorted(set(ALLOWED) - {(rel, mod) for rel, _, mod in found})
    assert not stale, f"fixed, so delete these entries from ALLOWED in tests/test_architecture.py: {stale}"


@pytest.mark.parametrize("rel, source, want", [
    ("optvis/x.py", "from cnnvis.viz import to_pil", ["cnnvis.viz"]),
    ("optvis/x.py", "def f():\n    from ..jobs import run", ["cnnvis.jobs"]),
    ("attribution/__init__.py", "from .. import web", ["cnnvis.web"]),
    ("dream.py", "import cnnvis.commands.common", ["cnnvis.commands.common"]),
    ("study/x.py", "from cnnvis import sections, utils", ["cnnvis.sections"]),
    ("data/x.py", "from cnnvis.images import load_image\nfrom .files import find", []),
    ("viz/x.py", "from cnnvis.jobs import run", []),  # not a compute package
])
def test_rule_1_catches_a_forbidden_import(rel, source, want):
    assert [m for _, _, m in layer_violations(source, rel)] == want


@pytest.mark.parametrize("source, want", [
    ("from cnnvis.models.registry import _REGISTRY", ["cnnvis.models.registry._REGISTRY"]),
    ("from ..models.checkpoint import _atomic, load", ["cnnvis.models.checkpoint._atomic"]),
    ("from cnnvis.models._private import x", ["cnnvis.models._private"]),
    ("from cnnvis.models import load, refs\nfrom cnnvis.utils import _x", []),
])
def test_rule_2_catches_a_private_models_name(source, want):
    found = private_model_names(source, "web/x.py", ["cnnvis", "web", "x"], False)
    assert [m for _, _, m in found] == want
