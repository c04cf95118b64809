"""One source of defaults (issue 20 item 2): the job specs take theirs from `cnnvis.defaults`, and every CLI
option that sets a spec field shows and passes the spec's own default (read without pydantic or torch)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from cnnvis import defaults as D
from cnnvis.cli import cli
from cnnvis.jobs import KINDS

# `cnnvis COMMAND` -> (the job kind it asks for, {click parameter name: spec field} where the two differ)
COMMANDS = {
    "class": ("class_image", {}),
    "filters": ("filters", {}),
    "dream": ("dream", {}),
    "saliency": ("attribution", {}),
    "deconv": ("deconv", {"seed_kind": "project", "all_convs": "all_conv"}),
    "sanity": ("sanity", {}),
    "occlusion": ("occlusion", {}),
    "invert": ("inversion", {}),
    "compare": ("compare", {}),
    "regularizers": ("regularizer_study", {}),
    "embed": ("embed", {}),
    "evolution": ("evolution", {}),
    "maxmaps": ("max_maps", {}),
    "top-examples": ("top_examples", {}),
    "classify": ("classify", {}),
    "evaluate": ("evaluate", {}),
}

# cnnvis.defaults' class -> the kinds whose fields it holds
HOLDERS = {
    D.ClassImage: ["class_image"], D.Filters: ["filters"], D.Dream: ["dream", "dream_row"],
    D.Attribution: ["attribution"], D.Deconv: ["deconv"], D.Sanity: ["sanity"], D.Occlusion: ["occlusion"],
    D.Inversion: ["inversion"], D.Compare: ["compare"], D.RegularizerStudy: ["regularizer_study"],
    D.Embed: ["embed"], D.Evolution: ["evolution"], D.MaxMaps: ["max_maps"],
    D.TopExamples: ["top_examples", "top_examples_merge"], D.Classify: ["classify"],
}


def _field_default(kind: str, field: str):
    f = KINDS[kind].model_fields[field]
    return f.default_factory() if f.default_factory is not None else f.default


def _as_spec_value(kind: str, field: str, v):
    """A click default as the command hands it on: 'auto' is None (filters), a comma list is a list (sanity)."""
    if v == "auto":
        return None
    if isinstance(_field_default(kind, field), list) and isinstance(v, str):
        return [p.strip() for p in v.split(",")]
    return v


def cli_defaults() -> list[tuple[str, str, str, object]]:
    """(command, kind, field, CLI default) of every option of the commands above that sets a spec field."""
    assert isinstance(cli, click.Group)
    out = []
    for name, (kind, renamed) in COMMANDS.items():
        cmd = cli.commands[name]
        ctx = click.Context(cmd)
        for p in cmd.params:
            field = renamed.get(p.name, p.name)
            if not isinstance(p, click.Option) or p.required or field not in KINDS[kind].model_fields:
                continue
            v = p.get_default(ctx, call=False)
            if v is not None:  # None: the command leaves the field out (or the spec's None is its default)
                out.append((name, kind, field, v))
    return out


def test_every_cli_option_defaults_to_the_specs_default():
    rows = cli_defaults()
    # not vacuous: the options that used to repeat a literal are among those compared
    got = {(c, f) for c, _, f, _ in rows}
    for must in [("class", "steps"), ("class", "min_steps"), ("class", "judge_prob"), ("filters", "first"),
                 ("filters", "steps"), ("dream", "octaves"), ("dream", "step_size"), ("invert", "steps"),
                 ("invert", "tv"), ("deconv", "top"), ("sanity", "methods"), ("compare", "grid"),
                 ("embed", "perplexity"), ("evolution", "k"), ("maxmaps", "project"), ("top-examples", "k"),
                 ("classify", "top"), ("regularizers", "steps"), ("occlusion", "baseline"), ("saliency", "method")]:
        assert must in got, must
    bad = [(c, f, v, _field_default(k, f)) for c, k, f, v in rows
           if _as_spec_value(k, f, v) != _field_default(k, f)]
    assert not bad, f"CLI defaults that differ from the spec's (command, field, CLI, spec): {bad}"


def test_the_defaults_module_is_what_the_specs_use():
    """Every constant of cnnvis.defaults is the default of the field of that name in its kinds, and a kind's
    field default changed to a literal elsewhere (or renamed) fails here."""
    n = 0
    for holder, kinds in HOLDERS.items():
        names = [a for a in vars(holder) if not a.startswith("_")]
        assert names, holder
        for kind in kinds:
            for a in names:
                v = getattr(holder, a)
                assert _field_default(kind, a) == (list(v) if isinstance(v, tuple) else v), (kind, a)
                n += 1
    assert n >= 50


def test_the_cli_shows_the_spec_defaults_in_help():
    """`--help` shows the value the spec uses (the CLI reads it from cnnvis.defaults)."""
    from click.testing import CliRunner

    r = CliRunner().invoke(cli, ["class", "--help"], terminal_width=200)
    assert r.exit_code == 0
    assert f"[default: {_field_default('class_image', 'steps')}]" in r.output
    assert f"[default: {_field_default('class_image', 'min_steps')}]" in r.output
    r = CliRunner().invoke(cli, ["invert", "--help"], terminal_width=200)
    assert f"[default: {_field_default('inversion', 'steps')};" in r.output


@pytest.mark.parametrize("module", ["cnnvis.cli", "cnnvis.defaults"])
def test_reading_the_defaults_imports_neither_torch_nor_pydantic(module):
    code = (f"import sys, {module}; bad = [m for m in ('torch', 'pydantic') if m in sys.modules]; "
            "assert not bad, bad; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
