/* cnnvis web UI: the pages' small scripts. They use only the JSON API under /api.
   startJob(spec, area) posts a job, polls /api/jobs/{id} every 0.5 s, draws a progress bar with a
   Cancel button in `area`, and resolves with the finished job (rejects with its error, shown in the
   `.error` element after `area`). A server that stops answering is polled again with backoff; a
   restarted server that forgot the job is given the spec again (its result may be stored already). */
(function () {
  "use strict";
  const BOOT = JSON.parse(document.getElementById("boot").textContent || "{}");
  const MID = BOOT.mid;
  const POLL_MS = 500;
  const MAX_BACKOFF_MS = 8000;

  // ------------------------------------------------------------------ small helpers
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }
  const $ = (sel, root) => (root || document).querySelector(sel);
  const enc = encodeURIComponent;
  const shapeText = (s) => (Array.isArray(s) && s.length ? s.join(" × ") : "–");
  const pct = (p) => (100 * p).toFixed(p > 0 && p < 0.01 ? 2 : 1) + "%";
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const secs = (s) => (s < 90 ? `${Math.max(1, Math.round(s))} s` : s < 5400 ? `${Math.round(s / 60)} min`
                                                                         : `${(s / 3600).toFixed(1)} h`);

  /** A readable sentence from a failed response: the API's `detail`, else the status. */
  async function readError(resp) {
    let detail = null;
    try {
      const body = await resp.json();
      detail = body && body.detail;
    } catch (e) { /* not JSON */ }
    if (Array.isArray(detail)) detail = detail.map((d) => (d.loc ? d.loc.slice(-1)[0] + ": " : "") + d.msg).join("; ");
    if (detail && typeof detail !== "string") detail = JSON.stringify(detail);
    return detail || `the server answered ${resp.status} ${resp.statusText}`;
  }

  /** fetch + JSON; errors carry `.status` (an HTTP answer) or `.offline` (no answer at all). */
  async function api(path, opts) {
    let resp;
    try {
      resp = await fetch(path, opts);
    } catch (e) {
      const err = new Error("the cnnvis server does not answer (is `cnnvis serve` still running?)");
      err.offline = true;
      throw err;
    }
    if (!resp.ok) {
      const err = new Error(await readError(resp));
      err.status = resp.status;
      if (resp.status === 502 || resp.status === 503 || resp.status === 504) err.offline = true;  // a proxy
      throw err;
    }
    return resp.json();
  }
  const postJSON = (path, body) => api(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify(body)});

  /** The `.error` box after `area` (made when missing). */
  function errBox(area) {
    let n = area.nextElementSibling;
    if (n && n.classList.contains("error")) return n;
    n = el("div", {class: "error", role: "alert"});
    n.hidden = true;
    area.after(n);
    return n;
  }
  function showError(box, msg) {
    box.textContent = msg;
    box.hidden = false;
  }
  function clearError(box) {
    box.textContent = "";
    box.hidden = true;
  }

  // ------------------------------------------------------------------ jobs
  // jobs this page shows: when the page is left, the server is told (it cancels them unless another
  // tab watches them too)
  const inFlight = new Set();
  const VIEWER = Math.random().toString(36).slice(2, 12) + Date.now().toString(36);  // this page load
  window.addEventListener("pagehide", () => {
    for (const id of inFlight) navigator.sendBeacon(`/api/jobs/${enc(id)}/leave?watch=${VIEWER}`);
  });
  window.addEventListener("pageshow", (ev) => { if (ev.persisted && inFlight.size) location.reload(); });

  /** POST a job spec, poll it every 0.5 s with a progress bar and Cancel button in `area`.
      Resolves with the job status object once done; rejects (message shown) if failed/cancelled.
      opts.onStatus(st): called with every status seen. */
  function startJob(spec, area, label, opts) {
    opts = opts || {};
    const box = errBox(area);
    clearError(box);
    const fill = el("div", {class: "fill"});
    const bar = el("div", {class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
                           "data-testid": "progress"}, fill);
    const desc = el("span", {class: "desc", "data-testid": "job-desc", text: "starting…"});
    const cancel = el("button", {class: "cancel", "data-testid": "cancel", text: "Cancel"});
    const widget = el("div", {class: "job", "data-testid": "job-widget", "data-status": "queued"},
                      el("span", {class: "job-label", text: label || spec.kind}), bar, desc, cancel);
    area.replaceChildren(widget);
    const body = Object.assign({}, spec, {model: MID});
    let id = null;
    let stop = false;
    let misses = 0;  // polls in a row without an answer
    let runningSince = null;
    return new Promise((resolve, reject) => {
      function fail(msg, status) {
        stop = true;
        if (id) inFlight.delete(id);
        widget.dataset.status = status || "failed";
        widget.classList.add("ended");
        cancel.hidden = true;
        desc.textContent = status === "cancelled" ? "cancelled" : "failed";
        showError(box, msg);
        const err = new Error(msg);
        err.jobStatus = status || "failed";
        reject(err);
      }
      function draw(st) {
        misses = 0;
        delete widget.dataset.offline;
        widget.dataset.status = st.status;
        if (!widget.dataset.firstStatus) widget.dataset.firstStatus = st.status;
        widget.dataset.jobId = st.id;
        if (opts.onStatus) opts.onStatus(st);
        const p = st.progress || {};
        const total = Number(p.total) || 0;
        const done = Number(p.done) || 0;
        let frac = st.status === "done" ? 1 : total > 0 ? Math.min(1, done / total) : 0;
        bar.classList.toggle("indeterminate", st.status === "running" && total <= 0);
        fill.style.width = (100 * frac).toFixed(1) + "%";
        bar.setAttribute("aria-valuenow", Math.round(100 * frac));
        if (st.status === "running" && runningSince === null) runningSince = Date.now();
        const words = {queued: st.waiting || "waiting for the worker…", running: "running", done: "done",
                       cancelled: "cancelled", failed: "failed"}[st.status] || st.status;
        let text = st.status === "running" && (p.desc || total)
          ? `${p.desc || "running"}${total ? ` ${done}/${total}` : ""}` : words;
        if (st.status === "running" && total > 0 && done > 0 && runningSince !== null) {
          const spent = (Date.now() - runningSince) / 1000;
          if (spent > 3 && done < total) text += ` · about ${secs(spent / done * (total - done))} left`;
        }
        desc.textContent = text;
        if (st.status === "done") {
          stop = true;
          inFlight.delete(st.id);
          cancel.hidden = true;
          widget.classList.add("ended");
          resolve(st);
        } else if (st.status === "failed") {
          fail(st.error || "the job failed", "failed");
        } else if (st.status === "cancelled") {
          fail(st.error || "cancelled: the job was stopped", "cancelled");
        }
      }
      function offline() {  // no answer: keep trying, less and less often
        misses += 1;
        widget.dataset.offline = "1";
        const wait = Math.min(MAX_BACKOFF_MS, POLL_MS * 2 ** Math.min(misses, 5));
        desc.textContent = `the server does not answer; trying again in ${Math.round(wait / 1000) || 1} s…`;
        return wait;
      }
      async function submit() {
        if (stop) return;
        let st;
        try {
          st = await postJSON(`/api/jobs?watch=${VIEWER}`, body);
        } catch (e) {
          if (e.offline) {
            setTimeout(submit, offline());
            return;
          }
          fail(e.message);
          return;
        }
        id = st.id;
        if (st.status === "queued" || st.status === "running") inFlight.add(id);
        draw(st);
        if (!stop) setTimeout(poll, POLL_MS);
      }
      async function poll() {
        if (stop) return;
        let st;
        try {
          st = await api(`/api/jobs/${enc(id)}?watch=${VIEWER}`);
        } catch (e) {
          if (e.offline) {
            setTimeout(poll, offline());
          } else if (e.status === 404) {  // a restarted server forgot the job: ask again
            runningSince = null;
            submit();
          } else {
            fail(e.message);
          }
          return;
        }
        draw(st);
        if (!stop) setTimeout(poll, POLL_MS);
      }
      cancel.addEventListener("click", async () => {
        if (!id || stop) return;
        cancel.disabled = true;
        try {
          draw(await api(`/api/jobs/${enc(id)}`, {method: "DELETE"}));
        } catch (e) {
          fail(e.message);
        }
      });
      submit();
    });
  }

  /** Run a job and put its main image (or `file`) into `out`. */
  async function jobImage(spec, area, out, label, file) {
    out.replaceChildren();
    const st = await startJob(spec, area, label);
    const res = st.result || {};
    const url = file ? (res.files || {})[file] : res.main;
    if (url) out.append(el("img", {src: url, alt: label || spec.kind, class: "result-img", onload: enlarge}));
    return st;
  }

  /** Small renders (a 28-px digit net's) enlarge as crisp pixels, not blur. */
  function pixelate(ev) {
    if (ev.target.naturalWidth < 64) ev.target.style.imageRendering = "pixelated";
  }

  /** A small result picture (a digit net's panels) shown at twice its size, in crisp pixels. */
  function enlarge(ev) {
    const im = ev.target;
    if (im.naturalWidth && im.naturalWidth <= 440) {
      im.style.width = `${2 * im.naturalWidth}px`;
      if (im.naturalWidth < 200) im.style.imageRendering = "pixelated";  // digits as crisp pixels; photos smooth
    }
  }

  // ------------------------------------------------------------------ shared page parts
  let modelsPromise = null;
  const models = () => (modelsPromise = modelsPromise || api("/api/models"));
  let layersPromise = null;
  const layers = () => (layersPromise = layersPromise || api(`/api/models/${enc(MID)}/layers`));

  function pageSuffix() {
    return {photo: "/photo", class: "/class", study: "/study", occlusion: "/occlusion", inversion: "/inversion",
            compare: "/compare", evolution: "/evolution"}[document.body.dataset.page] || "";
  }

  async function header() {
    const pick = $("#model-picker");
    try {
      const ms = await models();
      pick.replaceChildren(...ms.map((m) => el("option", {value: m.id, selected: m.id === MID,
                                                          text: m.id + (m.default ? " (default)" : "")})));
      const me = ms.find((m) => m.id === MID);
      if (!me) {  // the page itself says so (a 404 page with the served models)
        if (!BOOT.message) {
          showError(errBox($("#model-info")), `no model ${JSON.stringify(MID)} is served here; pick one of: ` +
                    ms.map((m) => m.id).join(", "));
        }
      } else {
        $("#model-info").textContent = `${me.name} · ${me.task}` + (me.n_classes ? ` · ${me.n_classes} classes` : "") +
          ` · input ${shapeText(me.input_shape)}`;
      }
    } catch (e) {
      showError(errBox($("#model-info")), e.message);
    }
    pick.addEventListener("change", () => { location.href = `/m/${enc(pick.value)}${pageSuffix()}`; });
  }

  const isMap = (l) => Array.isArray(l.shape) && l.shape.length === 3;
  const layerHref = (name, page) => `/m/${enc(MID)}/layer/${enc(name)}` + (page > 1 ? `?page=${page}` : "");
  const channelHref = (name, c) => `/m/${enc(MID)}/layer/${enc(name)}/channel/${c}`;
  const findLayer = (ls, name) => ls.find((l) => l.name === name) || ls.find((l) => l.alias === name);
  const firstConv = (ls) => ls.find((l) => /conv/i.test(l.type || "") && isMap(l));
  const layerLabel = (l) => (l.alias ? `${l.alias} (${l.name})` : l.name);

  // ------------------------------------------------------------------ pages
  async function indexPage() {
    const ms = await models();
    const d = ms.find((m) => m.default) || ms[0];
    if (d) location.replace(`/m/${enc(d.id)}`);
    else $("#index-msg").textContent = "no model is served; start cnnvis serve --model NAME";
  }

  /** 'conv4_3', 'features.21', 'conv4_3 #12', 'conv4_3:12' or 'conv4_3/12' -> [layer row, channel or null]. */
  function findTarget(ls, text) {
    const m = text.trim().match(/^(.*?)(?:\s*[#:/\s]\s*(\d+))?$/);
    const name = (m[1] || "").trim().toLowerCase();
    if (!name) return [null, null];  // an empty search matched the first layer without an alias
    const row = ls.find((l) => l.name.toLowerCase() === name) || ls.find((l) => (l.alias || "").toLowerCase() === name);
    return [row, m[2] !== undefined ? Number(m[2]) : null];
  }

  async function modelPage() {
    /* the layer table and its thumbnails are rendered by the server; the search box finds a layer or channel */
    const form = $("#search");
    if (!form) return;
    const box = errBox(form);
    const ls = await layers().catch(() => []);
    $("#search-list").replaceChildren(...ls.filter(isMap).flatMap((l) => [el("option", {value: l.name}),
      l.alias ? el("option", {value: l.alias, text: l.name}) : null].filter(Boolean)));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      clearError(box);
      const text = $("#search-q").value;
      if (!text.trim()) {
        showError(box, "type a layer name or alias, and a channel as 'conv1 #5'");
        return;
      }
      const [row, c] = findTarget(ls, text);
      if (!row) {
        const near = ls.filter((l) => (l.name + " " + (l.alias || "")).toLowerCase()
          .includes(text.trim().split(/[\s#:/]/)[0].toLowerCase())).slice(0, 6).map(layerLabel);
        showError(box, `no layer ${JSON.stringify(text.trim())} in ${MID}` + (near.length ? `; did you mean: ` +
          near.join(", ") + "?" : "; type a layer name or alias, and a channel as 'conv1 #5'"));
        return;
      }
      if (!isMap(row)) {
        showError(box, `${layerLabel(row)} gives ${shapeText(row.shape)}, not channels of maps: pick a conv layer`);
        return;
      }
      if (c !== null && !(c >= 0 && c < row.shape[0])) {
        showError(box, `channel ${c} of ${layerLabel(row)} does not exist; it has channels 0 to ${row.shape[0] - 1}`);
        return;
      }
      location.href = c === null ? layerHref(row.name) : channelHref(row.name, c);
    });
  }

  /** Links over a feature-map grid (cnnvis.viz.tiles.labelled_tiles: title 20 px, tiles in rows of
      ceil(sqrt(C)), 4 px apart, 14 px of label under each): each map opens its channel's page. */
  function linkTiles(img, shape, module) {
    if (!img || !Array.isArray(shape) || shape.length !== 3) return;
    const [C, H, W] = shape;
    const wrap = el("div", {class: "tile-links", "data-testid": "maps-grid"});
    img.before(wrap);
    wrap.append(img);
    const place = () => {
      const nw = img.naturalWidth, nh = img.naturalHeight;
      const cols = Math.max(1, Math.ceil(Math.sqrt(C)));
      const rows = Math.max(1, Math.ceil(C / cols));
      const ch = (nh - 24) / rows - 18;
      const cw = ch * W / H;
      wrap.querySelectorAll("a").forEach((a) => a.remove());
      for (let c = 0; c < C; c++) {
        const r = Math.floor(c / cols), k = c % cols;
        const x0 = 4 + k * (cw + 4), y0 = 24 + r * (ch + 18);
        wrap.append(el("a", {href: channelHref(module, c), "data-channel": c, "data-testid": "map-link",
          title: `channel ${c}: its page`, "aria-label": `channel ${c}`,
          style: `left:${(100 * x0 / nw).toFixed(3)}%;top:${(100 * y0 / nh).toFixed(3)}%;` +
                 `width:${(100 * cw / nw).toFixed(3)}%;height:${(100 * (ch + 14) / nh).toFixed(3)}%`}));
      }
    };
    if (img.complete && img.naturalWidth) place();
    else img.addEventListener("load", place);
  }

  /** A float32 .npy file (numpy.save, C order) -> {shape, data}. */
  async function readNpy(url) {
    const resp = await fetch(url);
    if (!resp.ok) throw new Error(`could not read ${url}: ${resp.status}`);
    const buf = await resp.arrayBuffer();
    const u8 = new Uint8Array(buf);
    const v1 = u8[6] === 1;
    const hl = v1 ? u8[8] | (u8[9] << 8) : u8[8] | (u8[9] << 8) | (u8[10] << 16) | (u8[11] << 24);
    const off = v1 ? 10 : 12;
    const header = new TextDecoder().decode(u8.slice(off, off + hl));
    if (!/'descr':\s*'<f4'/.test(header) || /'fortran_order':\s*True/.test(header)) throw new Error("not float32 C-order");
    const shape = header.match(/'shape':\s*\(([^)]*)\)/)[1].split(",").filter((x) => x.trim()).map(Number);
    return {shape, data: new Float32Array(buf.slice(off + hl))};
  }

  const RAMP = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];  // inferno-like
  function ramp(v) {
    const t = Math.max(0, Math.min(1, v)) * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(t)), f = t - i;
    return RAMP[i].map((a, k) => Math.round(a + f * (RAMP[i + 1][k] - a)));
  }

  function channelsOfPage(n, page, per) {
    const out = [];
    for (let c = page * per; c < Math.min(n, (page + 1) * per); c++) out.push(c);
    return out;
  }

  async function layerPage() {
    const {layer, page_no: page, per_page: per, info} = BOOT;
    const tiles = $("#tiles");
    const area = $("#job");
    if (BOOT.spec_error || !info) {
      showError(errBox(area), BOOT.spec_error || `${MID} has no layer ${JSON.stringify(layer)}; pick one on the model page`);
      return;
    }
    const n = info.shape[0];
    const spec = BOOT.spec;
    const eta = BOOT.eta || {};
    if (!eta.stored) {  // how long this page takes here, and how to have it ready ahead
      const note = $("#eta");
      const est = eta.per_channel ? eta.per_channel * eta.channels : null;
      if (est === null || est > 20) {
        note.replaceChildren(est !== null
          ? `This page renders ${eta.channels} channels: about ${secs(est)} here (${eta.per_channel.toFixed(1)} s a ` +
            "channel, measured on this server). "
          : `This page renders ${eta.channels} channels; this layer has not been measured here yet (the bar says ` +
            "how long once it runs). ",
          "To have every page of this layer ready ahead, run ", el("code", {text: eta.command}), ".");
        note.hidden = false;
      }
    }
    const chans = spec.channels || channelsOfPage(n, page, per);
    const cells = new Map();
    function pending() {
      tiles.replaceChildren(...chans.map((c) => {
        const cell = el("a", {class: "tile pending", href: channelHref(layer, c), "data-channel": c,
                              "data-testid": "tile"}, el("div", {class: "ph"}), el("span", {class: "cap", text: `#${c}`}));
        cells.set(c, cell);
        return cell;
      }));
    }
    async function run() {
      pending();
      let st;
      try {
        st = await startJob(spec, area, `rendering ${chans.length} channels`);
      } catch (e) {  // the message is shown; the tiles stop waiting and offer to try again
        const word = e.jobStatus === "cancelled" ? "cancelled" : "failed";
        for (const cell of cells.values()) {
          cell.classList.replace("pending", "failed");
          cell.querySelector(".ph").textContent = word;
        }
        area.append(el("button", {class: "retry", "data-testid": "retry", text: "Render again",
                                  onclick: () => run()}));
        return;
      }
      const res = st.result || {};
      const files = res.files || {};
      const row = ((res.data || {}).layers || [])[0] || {};
      const dead = new Set(row.dead || []);
      const values = row.values || [];
      const order = row.channels || chans;
      order.forEach((c, i) => {
        const cell = cells.get(c);
        if (!cell) return;
        cell.classList.remove("pending");
        const url = files[`tile_0_${c}.png`];
        const v = values[i];
        if (url && !dead.has(c)) {
          cell.title = `channel ${c}` + (v !== null && v !== undefined ? `: the image raises it to ${v.toFixed(3)}` : "");
          cell.replaceChildren(el("img", {src: url, alt: `channel ${c}`, onload: pixelate}),
                               el("span", {class: "cap", text: `#${c}` + (v !== null && v !== undefined ? ` · ${(Math.abs(v) < 0.005 ? 0 : v).toFixed(2)}` : "")}));
        } else {
          cell.classList.add("dead");
          cell.replaceChildren(el("div", {class: "ph", text: "dead"}), el("span", {class: "cap", text: `#${c} dead`}));
        }
      });
    }
    run();
  }

  async function channelPage() {
    const {layer, channel} = BOOT;
    const seeds = $("#seeds");
    const area = $("#seeds-job");
    if (BOOT.spec_error || !BOOT.specs) {
      showError(errBox(area), BOOT.spec_error || "this channel cannot be shown");
      $("#top-section").hidden = true;
      return;
    }
    const specs = BOOT.specs;
    seeds.replaceChildren(...specs.map((s) => el("figure", {class: "tile pending", "data-seed": s.seed},
      el("div", {class: "ph"}), el("figcaption", {text: `seed ${s.seed}`}))));
    // weights: only for the first conv layer
    layers().then((ls) => {
      const info = findLayer(ls, layer);
      const fc = firstConv(ls);
      if (info && fc && fc.name === info.name) {
        $("#weights-section").hidden = false;
        jobImage({kind: "weights", layer: info.name}, $("#weights-job"), $("#weights"), "first-layer weights")
          .catch(() => {});
      }
    }).catch((e) => showError(errBox(area), e.message));
    models().then((ms) => {
      const me = ms.find((m) => m.id === MID);
      if (me && !me.data) {
        $("#top-examples-btn").hidden = true;
        $("#top-examples").replaceChildren(el("p", {class: "muted", "data-testid": "no-data",
          text: `No dataset that fits ${MID} is served (${me.data_note || "none given"}): start cnnvis serve with ` +
                `--data ${MID}=DATA (a folder of class/xxx.jpg photos, a zip, or a dataset name) to see its top ` +
                "examples."}));
      } else if (me) {
        $("#top-examples-btn").title = `from ${me.data} (${me.data_note || ""})`;
        $("#top-examples-btn").textContent = `Find top examples in ${me.data}`;
      }
    }).catch(() => {});
    const topExamples = () => jobImage({kind: "top_examples", layer, channels: [channel]}, $("#top-job"),
      $("#top-examples"), "top examples", `channel_${String(channel).padStart(3, "0")}.png`).catch(() => {});
    $("#top-examples-btn").addEventListener("click", () => {
      writeState(Object.assign(readState(), {top: "1"}));
      topExamples();
    });
    if (readState().top) topExamples();
    neuronView(layer, channel);
    for (const s of specs) {  // one job each; the server runs them one after another
      try {
        const st = await startJob(s, area, `seed ${s.seed}`);
        const files = (st.result || {}).files || {};
        const url = files[`tile_0_${channel}.png`];
        const row = ((st.result.data || {}).layers || [])[0] || {};
        const v = (row.values || [])[0];
        const fig = seeds.querySelector(`[data-seed="${s.seed}"]`);
        fig.classList.remove("pending");
        fig.replaceChildren(url ? el("img", {src: url, alt: `channel ${channel}, seed ${s.seed}`, onload: pixelate})
                                : el("div", {class: "ph", text: "dead"}),
                            el("figcaption", {}, `seed ${s.seed}`, v !== null && v !== undefined
                              ? el("span", {"data-testid": "seed-value", text: ` · activation ${v.toFixed(3)}`}) : null));
      } catch (e) {
        seeds.querySelectorAll(".pending").forEach((f) => f.classList.replace("pending", "failed"));
        return;
      }
    }
  }

  // ------------------------------------------------------------------ views are URLs
  /** The page's view state from its query string: {key: string}. */
  function readState() {
    const out = {};
    for (const [k, v] of new URLSearchParams(location.search)) out[k] = v;
    return out;
  }
  /** Put `state` in the address bar (a new history entry unless `replace`), dropping empty values. */
  function writeState(state, replace) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
    const url = location.pathname + (q.toString() ? `?${q}` : "");
    if (url === location.pathname + location.search) return;
    if (replace) history.replaceState(null, "", url);
    else history.pushState(null, "", url);
  }

  /** The channel's map on a photo; a click picks a neuron (x, y), whose guided-backprop map is shown. */
  async function neuronView(layer, channel) {
    const out = $("#neuron-out");
    const pick = $("#neuron-photo");
    if (!out) return;
    const photos = await api("/api/photos").catch(() => []);
    pick.replaceChildren(...photos.map((p) => el("option", {value: p.ref, text: p.name})));
    let map = null;
    async function show(s) {
      if (!s.photo) return;
      pick.value = s.photo;
      const st = await startJob({kind: "feature_maps", image: s.photo, layer}, $("#neuron-job"), "the channel's map");
      const npy = await readNpy(st.result.files["maps.npy"]);
      const [C, H, W] = npy.shape;
      const plane = npy.data.subarray(channel * H * W, (channel + 1) * H * W);
      const canvas = el("canvas", {width: W, height: H, class: "neuron-map", "data-testid": "neuron-map",
                                   title: "click a neuron"});
      const g = canvas.getContext("2d");
      const im = g.createImageData(W, H);
      plane.forEach((v, i) => { const [r, gg, b] = ramp(v); im.data.set([r, gg, b, 255], 4 * i); });
      g.putImageData(im, 0, 0);
      const d = st.result.data;
      map = {H, W};
      const fig = el("figure", {}, canvas, el("figcaption", {"data-testid": "neuron-caption",
        text: `channel ${channel} on ${s.photo.slice(7)}: max ${d.max[channel].toFixed(3)}, mean ` +
              `${d.mean[channel].toFixed(3)} (${W}×${H} neurons)`}));
      const panel = el("div", {id: "neuron-attr"});
      out.replaceChildren(fig, panel);
      canvas.addEventListener("click", (ev) => {
        const x = Math.min(W - 1, Math.floor(ev.offsetX / canvas.clientWidth * W));
        const y = Math.min(H - 1, Math.floor(ev.offsetY / canvas.clientHeight * H));
        const next = Object.assign(readState(), {photo: s.photo, unit: `${y},${x}`});
        writeState(next);
        unit(next);
      });
      if (s.unit) unit(s);
    }
    function unit(s) {
      const [y, x] = s.unit.split(",").map(Number);
      if (!map || !(y >= 0 && y < map.H && x >= 0 && x < map.W)) return;
      const panel = $("#neuron-attr");
      const area = el("div", {class: "job-area"});
      const img = el("div", {class: "out", "data-testid": "neuron-attr"});
      panel.replaceChildren(el("h3", {text: `neuron (x ${x}, y ${y}): the pixels that drive it`}), area, img);
      jobImage({kind: "attribution", image: s.photo, method: "guided", layer, channel, unit: [y, x]}, area, img,
               `neuron (${x}, ${y})`).catch(() => {});
    }
    $("#neuron-btn").addEventListener("click", () => {
      const s = Object.assign(readState(), {photo: pick.value, unit: null});
      writeState(s);
      show(s).catch((e) => showError(errBox($("#neuron-job")), e.message));
    });
    show(readState()).catch((e) => showError(errBox($("#neuron-job")), e.message));
    window.addEventListener("popstate", () => {  // Back/Forward: the map and the neuron follow the URL
      const s = readState();
      if (!s.photo) {
        map = null;
        out.replaceChildren();
        return;
      }
      show(s).catch((e) => showError(errBox($("#neuron-job")), e.message));
    });
  }

  async function photoPage() {
    const perr = $("#photo-error");
    let ref = null;
    const top5 = $("#top5");
    const target = $("#target");
    const ms = await models().catch(() => []);
    const me = ms.find((m) => m.id === MID) || {task: "classification"};
    const classifier = me.task === "classification";
    if (!classifier) {  // an edge detector (VGG16-HED): its output map, no classes
      $("#sees-title").textContent = `2. What the model sees: its ${me.task} map`;
      for (const id of ["#target-wrap", "#target-other-wrap"]) $(id).hidden = true;
      $("#attr-title").textContent = `Which pixels make its ${me.task}? Attribution maps`;
    }
    let state = {};  // photo, method, target, view (maps|dream|deconv), layer: the view, as in the URL

    function showTop(top) {
      top5.replaceChildren(el("tr", {}, el("th", {text: "class"}), el("th", {text: "probability"}), el("th")),
        ...top.map((t, i) => el("tr", {"data-index": t.index, "data-testid": i === 0 ? "top1" : "topk"},
          el("td", {class: "label", text: t.label}), el("td", {class: "num", text: pct(t.prob)}),
          el("td", {}, el("div", {class: "pbar"}, el("div", {style: `width:${(100 * t.prob).toFixed(1)}%`}))))));
      const keep = state.target;
      target.replaceChildren(...top.map((t) => el("option", {value: t.index, text: `${t.label} (${pct(t.prob)})`,
                                                            selected: String(t.index) === keep})));
      const inTop = top.some((t) => String(t.index) === keep);
      $("#target-other").value = keep && !inTop ? keep : "";  // a class outside the top-5 stays in the box
    }
    function photoUrl(r) {
      const [kind, name] = r.split(":");
      return kind === "upload" ? `/api/uploads/${enc(name)}.png` : `/api/photos/${enc(name)}.png`;
    }
    function choose(newRef, name) {
      ref = newRef;
      $("#photo-panel").hidden = false;
      $("#photo-img").src = photoUrl(newRef);
      $("#photo-img").dataset.ref = newRef;
      for (const lens of ["occlusion", "inversion"]) $(`#${lens}-link`).href = `/m/${enc(MID)}/${lens}?pick=${enc(newRef)}`;
      $("#photo-name").textContent = name || (newRef.startsWith("upload:") ? `uploaded photo ${newRef.slice(7, 19)}…`
                                                                            : newRef.slice(7));
      top5.replaceChildren();
      for (const id of ["#attr-out", "#layer-out", "#sees-out", "#classify-job", "#attr-job", "#layer-job"]) {
        $(id).replaceChildren();
      }
    }
    /** What the model makes of the photo: top-5 classes, or an edge detector's output map. */
    async function seeRef() {
      if (classifier) {
        const st = await startJob({kind: "classify", images: [ref]}, $("#classify-job"), "classify");  // top: the spec's
        showTop(st.result.data.predictions[0].top);
        return;
      }
      const ls = await layers();
      const out = ls.filter(isMap).pop();  // the last map in execution order: the model's output
      await jobImage({kind: "feature_maps", image: ref, layer: out.name}, $("#classify-job"), $("#sees-out"),
                     `${me.task} map`);
    }
    function attrSpec(s) {
      const spec = {kind: "attribution", image: s.photo, method: s.method};
      if (classifier && s.target !== undefined && s.target !== "") {
        spec.target = /^\d+$/.test(s.target) ? Number(s.target) : s.target;
      }
      return spec;
    }
    function viewSpec(s) {
      if (s.view === "maps") return [{kind: "feature_maps", image: s.photo, layer: s.layer}, "feature maps"];
      // DeepDream: the page's quick preview (web/specs.py PHOTO_DREAM_QUICK, said so on the page); the rest: the
      // spec's own defaults
      if (s.view === "dream") return [{kind: "dream", image: s.photo, layers: [s.layer], ...BOOT.dream_quick},
                                      "DeepDream"];
      if (s.view === "deconv") {  // the rule and projection only when not the spec's defaults (the same job as the CLI's)
        const spec = {kind: "deconv", image: s.photo, layers: [s.layer]};
        if (s.rule && s.rule !== BOOT.deconv.rule) spec.rule = s.rule;
        if (s.project && s.project !== BOOT.deconv.project) spec.project = s.project;
        return [spec, "deconvnet"];
      }
      return [null, ""];
    }
    /** Show the view `s` (jobs already stored come back at once, without running again). */
    async function apply(s) {
      const before = state;
      state = s;
      if (!s.photo) {
        $("#photo-panel").hidden = true;
        ref = null;
        return;
      }
      if (s.photo !== before.photo || !ref) {
        choose(s.photo, s.photo === before.photo ? $("#photo-name").textContent : null);
        seeRef().catch(() => {});
      }
      if (s.method && (s.method !== before.method || s.target !== before.target || s.photo !== before.photo)) {
        $("#method").value = s.method;
        if (classifier && s.target !== undefined && target.options.length) {
          const inTop = [...target.options].some((o) => o.value === s.target);
          if (inTop) target.value = s.target;
          $("#target-other").value = inTop ? "" : s.target;
        }
        jobImage(attrSpec(s), $("#attr-job"), $("#attr-out"), s.method).catch(() => {});
      } else if (!s.method) {
        $("#attr-out").replaceChildren();
        $("#attr-job").replaceChildren();
      }
      $("#deconv-rule").value = s.rule || BOOT.deconv.rule;
      $("#deconv-project").value = s.project || BOOT.deconv.project;
      showDeconvText();
      if (s.view && (s.view !== before.view || s.layer !== before.layer || s.photo !== before.photo
                     || (s.view === "deconv" && (s.rule !== before.rule || s.project !== before.project)))) {
        await layersReady;
        if (s.layer) $("#layer-select").value = s.layer;
        const [spec, label] = viewSpec(s);
        if (spec) layerView(spec, label, s).catch(() => {});
      } else if (!s.view) {
        $("#layer-out").replaceChildren();
        $("#layer-job").replaceChildren();
      }
    }
    function go(changes) {
      const s = Object.assign({}, state, changes);
      writeState(s);
      apply(s);
    }
    window.addEventListener("popstate", () => apply(readState()));

    try {
      const photos = await api("/api/photos");
      $("#bundled").replaceChildren(...photos.map((p) => el("button", {class: "photo-btn", "data-ref": p.ref,
          "data-testid": "bundled-photo", title: p.name, onclick: () => {
            clearError(perr);
            go({photo: p.ref, method: null, target: null, view: null, layer: null});
          }}, el("img", {src: p.url, alt: p.name}), el("span", {text: p.name}))));
    } catch (e) {
      showError(perr, e.message);
    }
    $("#upload").addEventListener("change", async (ev) => {
      const file = ev.target.files[0];
      if (!file) return;
      clearError(perr);
      const status = $("#upload-status");
      status.textContent = `uploading ${file.name} (${(file.size / 1024).toFixed(0)} KB)…`;
      status.hidden = false;
      const form = new FormData();
      form.append("file", file, file.name);
      let up;
      try {
        up = await api("/api/uploads", {method: "POST", body: form});
      } catch (e) {
        status.hidden = true;
        $("#photo-panel").hidden = true;
        showError(perr, e.message.includes(file.name) ? e.message : `${file.name}: ${e.message}`);
        ev.target.value = "";
        return;
      }
      status.hidden = true;
      ev.target.value = "";
      const s = {photo: up.ref};
      writeState(s);
      state = s;
      choose(up.ref, `${file.name} (${up.width}×${up.height})`);
      seeRef().catch(() => {});
    });
    const layersReady = layers().then((ls) => {
      const maps = ls.filter(isMap);
      const pick = maps[Math.floor((maps.length * 2) / 3)] || maps[0];
      $("#layer-select").replaceChildren(...maps.map((l) => el("option", {value: l.name, selected: l === pick,
        text: `${layerLabel(l)} ${shapeText(l.shape)}`})));
      return ls;
    }).catch((e) => showError(errBox($("#layer-job")), e.message));

    /** A layer view (feature maps, DeepDream, deconvnet) of the photo. */
    async function layerView(spec, label, s) {
      const out = $("#layer-out");
      const st = await jobImage(spec, $("#layer-job"), out, label);
      const d = st.result.data || {};
      if (spec.kind === "deconv") {  // each layer's top channels, each a link to its channel page
        out.append(...(d.layers || []).map((row) => el("p", {class: "channel-links", "data-testid": "deconv-links"},
          `${row.layer}: top channels `, ...row.channels.flatMap((c, i) => [i ? " · " : "",
            el("a", {href: channelHref(row.module, c), "data-testid": "channel-link", "data-channel": c,
                     text: `#${c}`, title: `norm of its projection ${row.norms[i]}`})]))));
      } else if (spec.kind === "feature_maps") {
        const img = out.querySelector("img");
        linkTiles(img, d.shape, d.module);
        const strongest = d.max.map((v, c) => [v, c]).sort((a, b) => b[0] - a[0]).slice(0, 8);
        out.append(el("p", {class: "channel-links", "data-testid": "maps-links"}, "strongest channels: ",
          ...strongest.flatMap(([v, c], i) => [i ? " · " : "", el("a", {href: channelHref(d.module, c),
            "data-testid": "channel-link", "data-channel": c, text: `#${c}`, title: `max ${v}`}), ` (${v.toFixed(2)})`]),
          ". Click a map in the grid for its channel's page."));
      }
    }

    let timer = null;
    $("#target-other").addEventListener("input", (ev) => {
      clearTimeout(timer);
      timer = setTimeout(() => api(`/api/models/${enc(MID)}/classes?q=${enc(ev.target.value.trim())}`).then((cs) =>
        $("#photo-class-list").replaceChildren(...cs.map((c) => el("option", {value: c.label, text: `#${c.index}`}))),
      () => {}), 200);
    });
    $("#attr-btn").addEventListener("click", () => {
      if (!ref) return;
      const other = $("#target-other").value.trim();
      const t = !classifier ? null : other || (target.value !== "" ? target.value : null);
      go({method: $("#method").value, target: t});
    });
    const L = () => $("#layer-select").value;
    for (const view of ["maps", "dream"]) {
      $(`#${view}-btn`).addEventListener("click", () => ref && go({view, layer: L()}));
    }
    /** The deconvnet choices as URL state: a default is left out (null), so the default view's URL stays short. */
    const deconvChoice = () => {
      const rule = $("#deconv-rule").value;
      const project = $("#deconv-project").value;
      return {rule: rule === BOOT.deconv.rule ? null : rule, project: project === BOOT.deconv.project ? null : project};
    };
    function showDeconvText() {
      const r = BOOT.deconv.rules.find((x) => x.name === $("#deconv-rule").value);
      const p = BOOT.deconv.projects.find((x) => x.name === $("#deconv-project").value);
      $("#deconv-rule-text").textContent = r && p ? `Deconvnet panel: ${r.text}; ${p.text}.` : "";
    }
    $("#deconv-btn").addEventListener("click", () => ref && go({view: "deconv", layer: L(), ...deconvChoice()}));
    for (const id of ["#deconv-rule", "#deconv-project"]) {  // a new choice redraws the panel when it is shown
      $(id).addEventListener("change", () => {
        showDeconvText();
        if (ref && state.view === "deconv") go({layer: L(), ...deconvChoice()});
      });
    }
    apply(readState());
  }

  async function classPage() {
    const q = $("#class-q");
    const list = $("#class-list");
    let timer = null;
    q.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        try {
          const cs = await api(`/api/models/${enc(MID)}/classes?q=${enc(q.value.trim())}`);
          list.replaceChildren(...cs.map((c) => el("option", {value: c.label, text: `#${c.index}`})));
        } catch (e) { /* the search is a convenience */ }
      }, 200);
    });
    /** Render the class image the server built from the URL (BOOT.spec: only what the user chose; the rest is
        the job spec's defaults, as `cnnvis class` asks). */
    async function show(spec) {
      const out = $("#class-out");
      if (!spec) return;
      const t = spec.target;
      out.replaceChildren();
      let st;
      try {
        st = await startJob(spec, $("#class-job"), `class ${t}`);
      } catch (e) {
        return;
      }
      const d = st.result.data;
      const rob = d.robustness || {};
      const rows = [["class", `${d.class.label} (#${d.class.index})`],
                    ["probability of the saved PNG", pct(d.prob_png)],
                    ["steps", `${d.steps}` + (d.stopped ? ` (stopped: ${d.stopped})` : "")]];
      for (const [k, v] of Object.entries(rob)) rows.push([`probability after ${d.perturbations && d.perturbations[k]
        ? d.perturbations[k] : k}`, pct(v)]);
      if (d.judge) rows.push([`judge ${d.judge.model}`, `${pct(d.judge.prob)} · ${d.judge.agrees ? "agrees" : "top-1 " +
        d.judge.top1.label}`]);
      else rows.push(["judge", "none (serve a second model with the same classes)"]);
      if (d.message) rows.push(["note", d.message]);
      out.append(el("div", {class: "photo-row"},
        el("figure", {}, el("img", {src: st.result.main, class: "class-img", alt: `class image of ${d.class.label}`,
                                   "data-testid": "class-img"})),
        el("div", {},
          el("table", {class: "kv", "data-testid": "class-numbers"}, ...rows.map(([k, v]) =>
            el("tr", {}, el("th", {text: k}), el("td", {text: v})))),
          el("h3", {text: "top-5 of the saved image"}),
          el("table", {class: "probs"}, ...(d.top5 || []).map((p) => el("tr", {},
            el("td", {class: "label", text: p.label}), el("td", {class: "num", text: pct(p.prob)})))))));
    }
    show(BOOT.spec);
  }

  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf"];

  function scatter(d) {
    const P = d.points;
    const n = P.x.length;
    const W = 520, pad = 10;
    const mn = (a) => Math.min(...a), mx = (a) => Math.max(...a);
    const [x0, x1, y0, y1] = [mn(P.x), mx(P.x), mn(P.y), mx(P.y)];
    const ux = (v) => (x1 > x0 ? (v - x0) / (x1 - x0) : 0.5), uy = (v) => (y1 > y0 ? (v - y0) / (y1 - y0) : 0.5);
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${W}`);
    svg.setAttribute("class", "scatter");
    svg.setAttribute("data-testid", "scatter");
    const classes = (d.dataset || {}).classes || [];
    for (let i = 0; i < n; i++) {
      const c = document.createElementNS(NS, "circle");
      c.setAttribute("cx", (pad + ux(P.x[i]) * (W - 2 * pad)).toFixed(1));
      c.setAttribute("cy", (pad + uy(P.y[i]) * (W - 2 * pad)).toFixed(1));
      c.setAttribute("r", "3");
      c.setAttribute("fill", PALETTE[P.label[i] % PALETTE.length]);
      c.dataset.i = i;
      svg.append(c);
    }
    // hover: the point's own image, read from the served dataset (GET /api/models/{mid}/data/{index}.png)
    const split = (d.dataset || {}).split;
    const tip = el("div", {class: "tip", "data-testid": "scatter-tip"});
    tip.hidden = true;
    const thumb = el("img", {class: "thumb", alt: ""});
    const cap = el("div", {class: "small"});
    tip.append(thumb, cap);
    svg.addEventListener("mousemove", (ev) => {
      const t = ev.target;
      if (!(t instanceof SVGCircleElement)) { tip.hidden = true; return; }
      const i = Number(t.dataset.i);
      const lab = P.label[i];
      const src = `/api/models/${encodeURIComponent(MID)}/data/${P.index[i]}.png` +
        (split ? `?split=${encodeURIComponent(split)}` : "");
      if (thumb.getAttribute("src") !== src) thumb.setAttribute("src", src);
      cap.textContent = `image #${P.index[i]} · ${classes[lab] !== undefined ? classes[lab] : lab}`;
      tip.hidden = false;
      const box = svg.getBoundingClientRect();
      tip.style.left = `${ev.clientX - box.left + 14}px`;
      tip.style.top = `${ev.clientY - box.top + 14}px`;
    });
    svg.addEventListener("mouseleave", () => { tip.hidden = true; });
    const legend = el("div", {class: "legend"}, ...classes.map((c, k) => el("span", {},
      el("i", {style: `background:${PALETTE[k % PALETTE.length]}`}), ` ${c}`)));
    return el("div", {class: "scatter-wrap"}, svg, tip, legend);
  }

  async function studyPage() {
    const ready = models().then((ms) => {
      const me = ms.find((m) => m.id === MID);
      if (me && !me.data) {
        for (const id of ["#eval-btn", "#embed-btn"]) $(id).disabled = true;
        $("#study-note").textContent = `No dataset that fits ${MID} is served (${me.data_note || "none given"}): ` +
          "the study needs one. Serve a checkpoint trained by cnnvis train (its training data is used), or start " +
          `cnnvis serve with --data ${MID}=DATA.`;
        $("#study-note").hidden = false;
      } else if (me && me.evaluate_note) {  // a photo folder for top examples: no labels to score
        $("#eval-btn").disabled = true;
        $("#study-note").textContent = `Accuracy cannot be measured on ${me.data}: ${me.evaluate_note}. The t-SNE ` +
          "map below still works.";
        $("#study-note").hidden = false;
      }
    }).catch(() => {});
    let state = readState();  // eval=1, embed=LIMIT: the study's views, as in the URL
    async function evaluate() {
      const out = $("#eval-out");
      out.replaceChildren();
      await ready;
      if ($("#eval-btn").disabled) return;  // no data to score (the note says why): no job to fail
      let st, spec;
      try {
        const t = BOOT.training;
        spec = {kind: "evaluate"};
        if (t && typeof t.held_out === "number") Object.assign(spec, {held_out: t.held_out}, t.split ? {split: t.split} : {});
        st = await startJob(spec, $("#eval-job"), "evaluate");
      } catch (e) {
        return;
      }
      const d = st.result.data;
      const files = st.result.files || {};
      const t = BOOT.training;
      const held = spec.held_out ? `the ${d.n} images training held out of ${d.data}` : `${d.n} images of ${d.data}` +
        (d.split ? ` (${d.split})` : "");
      const pc = Object.entries(d.per_class || {});
      out.append(el("p", {class: "big", "data-testid": "accuracy"}, `accuracy ${pct(d.accuracy)}`,
                        el("span", {class: "muted small", text: ` on ${held}` + (t && t.held_out_accuracy != null
                          ? `; training reported ${pct(t.held_out_accuracy)}` : "")})),
        el("table", {class: "per-class"}, el("tr", {}, el("th", {text: "class"}), ...pc.map(([k]) => el("th", {text: k}))),
          el("tr", {}, el("th", {text: "accuracy"}), ...pc.map(([, v]) => el("td", {class: "num", text: pct(v)})))),
        files["confusion.png"] ? el("img", {src: files["confusion.png"], alt: "confusion matrix", class: "result-img"}) : null,
        files["mistakes.png"] ? el("img", {src: files["mistakes.png"], alt: "most confident mistakes", class: "result-img"}) : null);
    }
    async function embed(limit) {
      const out = $("#embed-out");
      out.replaceChildren();
      await ready;
      if ($("#embed-btn").disabled) return;  // no data served (the note says why): no job to fail
      $("#embed-limit").value = limit;
      let st;
      try {
        st = await startJob({kind: "embed", limit}, $("#embed-job"), "t-SNE");
      } catch (e) {
        return;
      }
      const d = st.result.data;
      const files = st.result.files || {};
      out.append(el("p", {"data-testid": "purity"}, `${d.n} images, ${d.layer} (${d.dim} features). k=${d.k} nearest ` +
        `neighbours of the same class: feature purity ${d.feature_purity.toFixed(3)}, pixel purity ` +
        `${d.pixel_purity.toFixed(3)}`), scatter(d),
        el("h3", {text: "atlas"}), files["atlas.png"] ? el("img", {src: files["atlas.png"], class: "result-img", alt: "atlas"}) : null,
        el("h3", {text: "neighbours (feature space vs pixel space)"}),
        files["neighbours.png"] ? el("img", {src: files["neighbours.png"], class: "result-img", alt: "neighbours"}) : null);
    }
    function apply(s, before) {
      if (s.eval && !before.eval) evaluate();
      if (!s.eval) for (const id of ["#eval-out", "#eval-job"]) $(id).replaceChildren();
      if (s.embed && s.embed !== before.embed) embed(Number(s.embed) || BOOT.embed_limit);
      if (!s.embed) for (const id of ["#embed-out", "#embed-job"]) $(id).replaceChildren();
      state = s;
    }
    $("#eval-btn").addEventListener("click", () => {
      const s = Object.assign({}, state, {eval: "1"});
      writeState(s);
      apply(s, {});
    });
    $("#embed-btn").addEventListener("click", () => {
      const s = Object.assign({}, state, {embed: String(Number($("#embed-limit").value) || BOOT.embed_limit)});
      writeState(s);
      apply(s, Object.assign({}, state, {embed: null}));
    });
    window.addEventListener("popstate", () => apply(readState(), state));
    apply(state, {});
  }

  /** Rows [name, value] of a lens result's numbers (cnnvis.web.lenses pages). */
  function lensRows(kind, d) {
    const f = (v, n) => (v === null || v === undefined ? "–" : Number(v).toFixed(n === undefined ? 3 : n));
    if (kind === "occlusion") {
      const rows = [["class", d.label ? `${d.label} (#${d.target})` : "the output's mean"],
                    ["probability, unoccluded", d.base_prob === null ? "–" : pct(d.base_prob)],
                    ["lowest probability", `${pct(d.min_prob)} with the patch at y ${d.worst_position[0]}, x ` +
                                           `${d.worst_position[1]}`],
                    ["patch", `${d.window.join("×")} px, stride ${d.stride[0]} px, ${d.positions.join("×")} positions`]];
      if (d.channel !== null && d.channel !== undefined) {
        rows.push(["feature map", `${d.layer} channel ${d.channel} (total activation ${f(d.base_activation)})`]);
      }
      if (d.top1_classes) rows.push(["most probable class over the positions", d.top1_classes.slice(0, 4).map((c) =>
        `${c.label} ${pct(c.share)}`).join(", ")]);
      return rows;
    }
    if (kind === "inversion") {
      const rows = [["photo's class", d.photo_class ? `${d.photo_class.label} (#${d.photo_class.index})` : "–"]];
      for (const r of d.layers) {
        let v = `distance ${f(r.distance)}`;
        if (r.model) v += ` · model: ${r.model.label} (photo's class ${pct(r.model.prob_photo_class)})`;
        if (r.judge) v += ` · judge ${r.judge.model}: ${r.judge.label}${r.judge.agrees ? " (agrees)" : ""}`;
        rows.push([r.layer, v]);
      }
      return rows;
    }
    if (kind === "compare") {
      const n = Math.min(d.layers.length, d.other_layers.length);
      const diag = [...Array(n).keys()].map((i) => d.cka[i][i]);
      const rows = [["A / B", `${d.model} / ${d.other}`], ["images", String(d.n)],
                    ["CKA of the same layers (diagonal)", diag.map((v, i) => `${d.layers[i]} ${f(v)}`).join(", ")]];
      if (d.match) rows.push([`channels matched at ${d.match.layer}`, `mean best correlation ` +
        `${f(d.match.mean_best_corr)}, ${d.match["above_0.5"]} above 0.5, ${d.match.dead} dead`]);
      return rows;
    }
    if (kind === "evolution") {
      const rows = [["run", d.run], ["snapshots", d.snapshots.map((s) => `epoch ${s.epoch}` + (s.held_out_accuracy !== null
        && s.held_out_accuracy !== undefined ? ` (acc ${f(s.held_out_accuracy)})` : "")).join(", ")]];
      for (const l of d.layers) {
        rows.push([`${l.layer}: filter correlation with the last snapshot`, l.snapshots.map((s) => `epoch ${s.epoch} ` +
          (s.weight_corr_to_last ? f(s.weight_corr_to_last.reduce((a, b) => a + (b || 0), 0) /
            s.weight_corr_to_last.length) : "–")).join(", ")]);
      }
      if (d.note) rows.push(["note", d.note]);
      return rows;
    }
    return [];
  }

  /** A lens page: the server built the job spec from the URL (BOOT.spec); run it, show picture + numbers. */
  async function lensPage() {
    const spec = BOOT.spec;
    if (!spec) return;
    const out = $("#lens-out");
    let st;
    try {
      st = await startJob(spec, $("#lens-job"), BOOT.lens);
    } catch (e) {
      return;
    }
    const res = st.result || {};
    const d = res.data || {};
    const files = res.files || {};
    const imgs = [res.main];
    if (files["matches.png"]) imgs.push(files["matches.png"]);
    out.replaceChildren(...imgs.filter(Boolean).map((u) => el("img", {src: u, class: "result-img", alt: BOOT.lens,
                                                                        "data-testid": "lens-img", onload: enlarge})),
      el("table", {class: "kv", "data-testid": "lens-numbers"}, ...lensRows(spec.kind, d).map(([k, v]) =>
        el("tr", {}, el("th", {text: k}), el("td", {text: v})))));
  }

  window.cnnvis = {startJob, api, indexPage, modelPage, layerPage, channelPage, photoPage, classPage, studyPage,
                   lensPage};
  if (MID) header();
})();
