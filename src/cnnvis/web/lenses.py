"""The lens pages of the microscope (issue 22): occlusion, feature inversion, model comparison and
features across training. Each page is a URL view: its query string is the question, the server
turns it into a job spec here (400/404 with one line for a bad one), embeds it in the page, and the
page's script runs it (POST /api/jobs) and shows the result's picture and numbers.

    /m/{mid}/occlusion?pick=sample:chelsea                     (the form with that photo chosen; nothing runs)
    /m/{mid}/occlusion?photo=sample:chelsea&target=285&window=45&stride=11&layer=stage6
    /m/{mid}/inversion?photo=sample:chelsea&layer=stage4&steps=400&judge=efficientnet_lite1
    /m/{mid}/compare?other=MID2&limit=500&match_layer=conv2     (404 when one model is served)
    /m/{mid}/evolution?snapshots=0,1,3&layers=conv1&first=6&k=3  (404 when the run has no snapshots)

Defaults come from the spec classes (cnnvis.jobs KINDS): a field the user leaves empty is left out of
the spec, so the page asks the same job as `cnnvis occlusion PHOTO` (the same key, the same picture).
The forms show the spec classes' defaults as placeholders.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from cnnvis.errors import CnnvisError, unknown_name, whole_number

router = APIRouter(include_in_schema=False)

class NotHere(Exception):
    """The page does not apply to this model (one model served for compare, a run without snapshots): 404."""


# page key, nav label, URL suffix: the lens pages (nav shows compare / evolution only where they apply)
LENS_NAV = [("occlusion", "Occlusion", "/occlusion"), ("inversion", "Inversion", "/inversion"),
            ("compare", "Compare", "/compare"), ("evolution", "Evolution", "/evolution")]


# ---------------------------------------------------------------------- defaults and query parsing
def spec_default(kind: str, name: str):
    """The default of field `name` of job kind `kind` (the one source of the faces' defaults)."""
    from cnnvis.jobs import KINDS

    return KINDS[kind].model_fields[name].default


def _int(q: dict, name: str, what: str, lo: int = 0, hi: int = 10**6) -> int | None:
    """Query value `name` as an int in [lo, hi] (None when empty); CnnvisError naming it otherwise."""
    raw = (q.get(name) or "").strip()
    if not raw:
        return None
    v = whole_number(raw)
    if v is None:
        raise CnnvisError(f"{name} {raw[:40]!r} is not a whole number ({what})")
    if not lo <= v <= hi:
        raise CnnvisError(f"{name} {v} is out of range: give {what} from {lo} to {hi}")
    return v


def _ints(q: dict, name: str, what: str) -> list[int] | None:
    """'0,1,3' -> [0, 1, 3] (None when empty)."""
    raw = (q.get(name) or "").strip()
    if not raw:
        return None
    out = []
    for part in raw.replace(" ", ",").split(","):
        if not part:
            continue
        v = whole_number(part, signed=False)
        if v is None:
            raise CnnvisError(f"{name} {raw[:60]!r} is not a list of whole numbers ({what}), e.g. 0,1,3")
        out.append(v)
    return out or None


def _layer(m, name: str, *, maps: bool, what: str) -> str:
    """A served model's layer by dotted name or alias -> the name as given; CnnvisError (unknown, or not a
    feature map where one is needed) listing the layers that fit."""
    rows = m.layers
    ok = [r for r in rows if (isinstance(r.get("shape"), list) and (len(r["shape"]) == 3 or not maps))]
    row = next((r for r in rows if r["name"] == name or (r["alias"] and r["alias"] == name)), None)
    names = [r["alias"] for r in ok if r["alias"]] + [r["name"] for r in ok if not r["alias"]]  # classic ones first
    if row is None:
        raise unknown_name(f"layer of {m.mid}", name, names, hint=f"{what}")
    if row not in ok:
        raise CnnvisError(f"layer {name!r} of {m.mid} has no feature maps (output "
                          f"{'x'.join(map(str, row['shape'] or [])) or 'none'}); {what}: give one of "
                          f"{', '.join(names[:12])}")
    return name


def _photo(ctx, ref: str) -> str:
    """A photo the server serves ('sample:NAME', or 'upload:SHA' of an upload in the cache)."""
    from cnnvis.images import SAMPLE_NAMES
    from cnnvis.web.uploads import UPLOAD_RE

    ref = ref.strip()
    if ref.startswith("sample:"):
        if ref[7:] not in SAMPLE_NAMES:
            raise unknown_name("sample photo", ref[7:], SAMPLE_NAMES)
        return ref
    mt = UPLOAD_RE.match(ref)
    if mt:
        if not (ctx.uploads / f"{mt.group(1)}.png").is_file():
            raise CnnvisError(f"no uploaded photo {ref[:19]}…; upload it again on the photo page")
        return ref
    raise CnnvisError(f"photo {ref[:60]!r} is not one this server has: give sample:NAME (one of "
                      f"{', '.join(SAMPLE_NAMES)}) or upload:SHA256 from the photo page")


def _target(m, raw: str):
    """A class (name or index) the model has -> as given (an index as an int)."""
    t = raw.strip()
    if m.vm.task != "classification":
        raise CnnvisError(f"model {m.mid!r} is not a classifier ({m.vm.task}): leave the class empty")
    m.vm.class_index(t)  # CnnvisError with close names
    n = whole_number(t)
    return n if n is not None else t


# ---------------------------------------------------------------------- the specs of the pages
def occlusion_spec(ctx, m, q: dict) -> dict | None:
    """The `occlusion` spec of the view `q` (photo, target, window, stride, layer); None without a photo."""
    if not (q.get("photo") or "").strip():
        return None
    spec = {"kind": "occlusion", "image": _photo(ctx, q["photo"])}
    if (q.get("target") or "").strip():
        spec["target"] = _target(m, q["target"])
    side = int(min(m.vm.input_shape[1:]))
    window = _int(q, "window", "the patch side in pixels", 1, side)
    stride = _int(q, "stride", "the step between patch positions in pixels", 1, side)
    if window is not None:
        spec["window"] = window
    if stride is not None:
        w = window if window is not None else max(1, round(side / 5))
        if stride > w and w < side:
            raise CnnvisError(f"stride {stride} px is larger than the window {w} px: pixels between two positions "
                              "would never be occluded; give a stride of at most the window")
        spec["stride"] = stride
    if (q.get("layer") or "").strip():
        spec["layer"] = _layer(m, q["layer"].strip(), maps=True, what="the followed feature map needs a conv layer")
    return spec


def inversion_spec(ctx, m, q: dict) -> dict | None:
    """The `inversion` spec of the view `q` (photo, layer or a row over depths, steps, judge)."""
    if not (q.get("photo") or "").strip():
        return None
    spec: dict = {"kind": "inversion", "image": _photo(ctx, q["photo"])}
    if (q.get("layer") or "").strip():
        spec["layers"] = [_layer(m, q["layer"].strip(), maps=False, what="inversion needs a layer with an output")]
    steps = _int(q, "steps", "optimization steps per layer", 1, 100000)
    if steps is not None:
        spec["steps"] = steps
    judge = (q.get("judge") or "").strip()
    if judge:
        if judge not in [j for j, _ in judge_choices(ctx, m)]:
            raise unknown_name("judge", judge, [j for j, _ in judge_choices(ctx, m)])
        spec["judge"] = judge
    return spec


def compare_spec(ctx, m, q: dict) -> dict | None:
    """The `compare` spec of the view `q` (other model, limit, match layer) over the model's served data."""
    others = compare_choices(ctx, m)
    if not others:
        raise NotHere(f"comparing needs a second model that reads the same images and has the same classes as "
                          f"{m.mid!r}; this server has {len(ctx.served)} model"
                          f"{'s' if len(ctx.served) != 1 else ''} ({', '.join(ctx.served)}): start it with "
                          f"cnnvis serve --model {m.ref} --model OTHER")
    other = (q.get("other") or "").strip()
    if not other:
        return None
    if other not in others:
        if other in ctx.served:
            why = others_reason(m, ctx.served[other])
            raise CnnvisError(f"model {other!r} cannot be compared with {m.mid!r}: {why}")
        raise unknown_name("model to compare with", other, others)
    if not m.data:
        raise CnnvisError(f"no dataset is served for {m.mid!r} ({m.data_note or 'none given'}): CKA needs images; "
                          f"start the server with --data {m.mid}=DATA")
    spec: dict = {"kind": "compare", "other": ctx.served[other].ref, "data": m.data}
    limit = _int(q, "limit", "images", 2, 100000)
    if limit is not None:
        spec["limit"] = limit
    ml = (q.get("match_layer") or "").strip()
    if ml:
        spec["match_layer"] = "none" if ml == "none" else \
            _layer(m, ml, maps=True, what="channel matching needs a conv layer")
    steps = _int(q, "steps", "feature visualization steps of each shown channel", 1, 100000)
    if steps is not None:
        spec["steps"] = steps
    return spec


def evolution_spec(ctx, m, q: dict) -> dict | None:
    """The `evolution` spec of the view `q` (snapshots, layers, first channels, top examples k)."""
    from cnnvis.train import read_snapshots

    try:
        _, snaps = read_snapshots(m.ref)
    except CnnvisError as e:
        raise NotHere(f"{m.mid!r} has no snapshots to show: {e}") from None
    have = [s.epoch for s in snaps]
    if "snapshots" not in q and "layers" not in q:
        return None
    spec: dict = {"kind": "evolution"}
    want = _ints(q, "snapshots", "epochs")
    if want is not None:
        missing = [e for e in want if e not in have]
        if missing:
            raise CnnvisError(f"the run {m.mid!r} has no snapshot of epoch {', '.join(map(str, missing))}; its "
                              f"snapshots are epochs {', '.join(map(str, have))}")
        spec["snapshots"] = sorted(set(want))
    names = [n.strip() for n in (q.get("layers") or "").split(",") if n.strip()]
    if names:
        spec["layers"] = [_layer(m, n, maps=True, what="evolution shows conv layers") for n in names]
    first = _int(q, "first", "channels of each layer", 1, 512)
    if first is not None:
        spec["first"] = first
    k = _int(q, "k", "top examples per cell", 0, 16)
    if k is not None:
        spec["k"] = k
    return spec


def others_reason(m, o) -> str | None:
    """Why served model `o` cannot be compared with `m` (None: it can)."""
    a, b = m.vm, o.vm
    if a.channels != b.channels:
        return f"{m.mid!r} reads {a.channels}-channel images and {o.mid!r} {b.channels}-channel ones"
    if a.task == "classification" and b.task == "classification" and \
            list(map(str, a.labels or [])) != list(map(str, b.labels or [])):
        return f"{m.mid!r} and {o.mid!r} have different label sets"
    return None


def compare_choices(ctx, m) -> list[str]:
    """Served models `m` can be compared with (same image channels, same classes), in serving order."""
    return [mid for mid, o in ctx.served.items() if mid != m.mid and others_reason(m, o) is None]


def judge_choices(ctx, m) -> list[tuple[str, str]]:
    """(value, label) of the judges offered for `m`'s inversions and class images: 'none', the other served
    classifiers of the same classes, and the registry's embedded models of the same classes (lite1 for
    lite0), which the server runs without a download."""
    from cnnvis.web.context import embedded_judges

    out = [("none", "none")]
    if m.vm.task != "classification":
        return out
    labels = list(map(str, m.vm.labels or []))
    for mid, o in ctx.served.items():
        if mid != m.mid and o.vm.task == "classification" and list(map(str, o.vm.labels or [])) == labels:
            out.append((mid, f"{mid} (served)"))
    have = {ctx.served[v].ref for v, _ in out[1:]} | {m.ref}
    for name in embedded_judges(m.vm):
        if name not in have:
            out.append((name, f"{name} (embedded)"))
    return out


# ---------------------------------------------------------------------- pages
def lens_nav(ctx, m) -> list[tuple[str, str, str]]:
    """The lens pages that apply to `m`: compare with a second comparable model, evolution for a run with
    snapshots."""
    from cnnvis.web.context import training_block

    out = []
    for key, label, suffix in LENS_NAV:
        if key == "compare" and (m is None or not compare_choices(ctx, m)):
            continue
        if key == "evolution":
            t = training_block(m.ref) if m is not None else None
            if not (isinstance(t, dict) and t.get("snapshots")):
                continue
        out.append((key, label, suffix))
    return out


BUILDERS = {"occlusion": occlusion_spec, "inversion": inversion_spec, "compare": compare_spec,
            "evolution": evolution_spec}
TITLES = {"occlusion": "Occlusion sensitivity", "inversion": "Feature inversion",
          "compare": "Compare two models", "evolution": "Features across training"}


def form_fields(ctx, m, kind: str, q: dict) -> list[dict]:
    """The page's form: name, label, kind (select | text | number), value, options, placeholder (the spec
    class's default)."""
    from cnnvis.images import SAMPLE_NAMES

    def sel(name, label, options, value):
        return {"name": name, "label": label, "type": "select", "options": options, "value": value}

    def txt(name, label, placeholder, typ="text", lo=0, hi=None):
        return {"name": name, "label": label, "type": typ, "value": q.get(name) or "", "placeholder": placeholder,
                "min": lo, "max": hi}  # a number field's bounds: the browser's check, the server's range

    maps = [(r["alias"] or r["name"], f"{r['alias'] or r['name']} {'×'.join(map(str, r['shape']))}") for r in m.layers
            if isinstance(r.get("shape"), list) and len(r["shape"]) == 3]
    photos = [(f"sample:{n}", n) for n in SAMPLE_NAMES]
    ph = q.get("photo") or q.get("pick") or ""  # pick=REF: the photo page's link (chosen, not run yet)
    if ph and ph not in dict(photos):
        photos.insert(0, (ph, f"uploaded {ph[7:19]}…" if ph.startswith("upload:") else ph))
    if kind == "occlusion":
        side = int(min(m.vm.input_shape[1:]))
        return [sel("photo", "photo", photos, ph or photos[0][0]),
                txt("target", "class", "the photo's top-1 class") if m.vm.task == "classification" else None,
                txt("window", "window px", f"{max(1, round(side / 5))} (a fifth of {side})", "number", 1, side),
                txt("stride", "stride px", "a quarter of the window", "number", 1, side),
                sel("layer", "feature map of", [("", "the deepest classic layer")] + maps, q.get("layer") or "")]
    if kind == "inversion":
        rows = [(r["alias"] or r["name"], f"{r['alias'] or r['name']} {'×'.join(map(str, r['shape']))}")
                for r in m.layers if isinstance(r.get("shape"), list)]
        from cnnvis.jobs.judge import default_judge

        jd = default_judge(m.vm)  # what the spec's judge=None becomes
        return [sel("photo", "photo", photos, ph or photos[0][0]),
                sel("layer", "layer", [("", "a row over four depths")] + rows, q.get("layer") or ""),
                txt("steps", "steps", str(spec_default("inversion", "steps")), "number"),
                sel("judge", "judge", [("", f"default ({jd})")]
                    + judge_choices(ctx, m), q.get("judge") or "")]
    if kind == "compare":
        others = compare_choices(ctx, m)
        return [sel("other", "B =", [(o, o) for o in others], q.get("other") or (others[0] if others else "")),
                txt("limit", "images", str(spec_default("compare", "limit")), "number"),
                sel("match_layer", "match channels at", [("", "the last conv block"), ("none", "no matching")] + maps,
                    q.get("match_layer") or ""),
                txt("steps", "steps", str(spec_default("compare", "steps")), "number")]
    from cnnvis.train import read_snapshots

    try:
        have = ",".join(str(s.epoch) for s in read_snapshots(m.ref)[1])
    except CnnvisError:
        have = ""
    return [{"name": "snapshots", "label": "epochs", "type": "text", "value": q.get("snapshots", have),
             "placeholder": have},
            txt("layers", "layers", "every conv layer (a small net)"),
            txt("first", "channels", str(spec_default("evolution", "first")), "number"),
            txt("k", "top examples", str(spec_default("evolution", "k")), "number")]


def lens_page(request: Request, mid: str, kind: str):
    from cnnvis.web.pages import _page, _served

    ctx = request.app.state.ctx
    m = _served(request).get(mid)
    q = dict(request.query_params)
    spec, err, status, fields = None, None, 200, []
    if m is not None:
        try:
            spec = BUILDERS[kind](ctx, m, q)
        except NotHere as e:  # the page does not apply to this model (one model, no snapshots)
            err, status = str(e), 404
        except CnnvisError as e:
            err, status = str(e), 400
        if status != 404:
            fields = [f for f in form_fields(ctx, m, kind, q) if f is not None]
    return _page(request, "lens", mid, kind, f"{mid}: {TITLES[kind].lower()}", status=status, lens=kind,
                 heading=TITLES[kind], spec=spec, spec_error=err, fields=fields)


@router.get("/m/{mid}/occlusion", response_class=HTMLResponse)
def occlusion_page(request: Request, mid: str):
    return lens_page(request, mid, "occlusion")


@router.get("/m/{mid}/inversion", response_class=HTMLResponse)
def inversion_page(request: Request, mid: str):
    return lens_page(request, mid, "inversion")


@router.get("/m/{mid}/compare", response_class=HTMLResponse)
def compare_page(request: Request, mid: str):
    return lens_page(request, mid, "compare")


@router.get("/m/{mid}/evolution", response_class=HTMLResponse)
def evolution_page(request: Request, mid: str):
    return lens_page(request, mid, "evolution")
