/* interp head atlas: draws the page from the JSON in #atlas-data (see interp/report/atlas.py). No network. */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("atlas-data").textContent);
  var S = D.shape, NL = S.n_layers, NH = S.n_heads, NKV = Math.max(1, S.n_kv_heads);
  var G = Math.max(1, Math.floor(NH / NKV));
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d"];
  var CONFIG = {displaylogo: false, responsive: true};

  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "style") e.style.cssText = attrs[k];
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    });
    (kids || []).forEach(function (c) { if (c != null) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function fmt(v) { return v == null ? "–" : (Math.abs(v) === Infinity ? String(v) : Number(v.toPrecision(4)).toString()); }
  function name(l, h) { return "L" + l + "H" + h; }

  // ---- roles ----
  var roles = [], roleColor = {}, roleRules = {};
  D.rules.forEach(function (r) {
    if (!(r.role in roleColor)) { roleColor[r.role] = PALETTE[roles.length % PALETTE.length]; roles.push(r.role); roleRules[r.role] = []; }
    roleRules[r.role].push(r);
  });
  var ran = {};
  D.analyses.forEach(function (a) { ran[a] = true; });
  var headRoles = {}, counts = {};
  Object.keys(D.roles).forEach(function (n) {
    var seen = {};
    D.roles[n].forEach(function (e) { seen[e[0]] = true; });
    headRoles[n] = roles.filter(function (r) { return seen[r]; });
    headRoles[n].forEach(function (r) { counts[r] = (counts[r] || 0) + 1; });
  });
  // the legend lists the roles whose analysis ran (and any role that fired, e.g. circuit classes)
  var shown = roles.filter(function (r) {
    return counts[r] || roleRules[r].some(function (x) { return ran[x.analysis]; });
  });
  function abbrev(role) {
    var p = role.split("_");
    return (p.length > 1 ? p[0][0] + p[1][0] : role.slice(0, 2)).toUpperCase();
  }
  function badge(role) {
    return el("span", {"class": "badge", style: "background:" + roleColor[role], title: role, text: abbrev(role)});
  }

  // ---- layout ----
  var app = document.getElementById("app");
  var analyses = D.analyses.join(", ") || "(none)";
  app.appendChild(el("h1", {text: "Head atlas: " + D.model}));
  app.appendChild(el("p", {"class": "meta", text: NL + " layers × " + NH + " heads (" + S.n_kv_heads + " KV heads" +
    (G > 1 ? ", GQA groups of " + G + " query heads, shaded" : "") + "). Analyses: " + analyses +
    ". Tables: scores.parquet, roles.parquet; provenance: manifest.json."}));
  var top = el("div", {id: "top"}), mapSec = el("section", {id: "map-section"}), card = el("section", {id: "card", hidden: ""});
  top.appendChild(mapSec); top.appendChild(card); app.appendChild(top);

  // ---- head map ----
  mapSec.appendChild(el("h2", {text: "Head map"}));
  var msg = el("span", {id: "search-msg"});
  var search = el("input", {id: "search", type: "search", placeholder: "L" + Math.floor(NL / 2) + "H0", "aria-label": "find a head"});
  mapSec.appendChild(el("div", {"class": "controls"}, [el("label", {text: "Find head "}, [search]), msg,
    el("button", {id: "clear-filters", type: "button", text: "all roles", onclick: function () { setFilters([]); }})]));
  var legend = el("div", {id: "legend"});
  shown.forEach(function (r) {
    var box = el("input", {type: "checkbox", "data-role": r, onchange: applyFilters});
    legend.appendChild(el("label", {"class": "role-filter", "data-role": r}, [box, badge(r), " " + r + " ",
      el("span", {"class": "count", text: "(" + (counts[r] || 0) + ")"})]));
  });
  mapSec.appendChild(legend);
  var ruleRows = [el("tr", {}, [el("th", {"class": "l", text: "role"}), el("th", {"class": "l", text: "rule"}),
    el("th", {text: "heads"}), el("th", {"class": "l", text: "source"})])];
  shown.forEach(function (r) {
    roleRules[r].forEach(function (x) {
      ruleRows.push(el("tr", {}, [el("td", {"class": "l"}, [badge(r), " " + r]),
        el("td", {"class": "l", text: (x.analysis ? x.analysis + ": " : "") + x.rule}),
        el("td", {text: String(counts[r] || 0)}), el("td", {"class": "l", text: x.source})]));
    });
  });
  mapSec.appendChild(el("details", {id: "rules"}, [el("summary", {text: "Role rules (click a legend entry to filter; a cell shows every role that fired)"}),
    el("table", {}, ruleRows)]));
  var grid = el("div", {id: "headmap", "class": "headmap", style: "grid-template-columns:3.2em repeat(" + NH + ",minmax(2.2em,1fr))"});
  grid.appendChild(el("div"));
  for (var h = 0; h < NH; h++) grid.appendChild(el("div", {"class": "hdr", text: "H" + h}));
  for (var l = 0; l < NL; l++) {
    grid.appendChild(el("div", {"class": "lab", text: "L" + l}));
    for (h = 0; h < NH; h++) {
      var n = name(l, h), rs = headRoles[n] || [];
      grid.appendChild(el("div", {"class": "cell" + (G > 1 ? " kv" + (Math.floor(h / G) % 4) : ""), id: "cell-" + n,
        "data-name": n, "data-roles": rs.join(" "), title: n + (rs.length ? ": " + rs.join(", ") : ""),
        onclick: (function (l, h) { return function () { openCard(l, h); }; })(l, h)}, rs.map(badge)));
    }
  }
  mapSec.appendChild(grid);

  function checked() {
    return Array.prototype.filter.call(legend.querySelectorAll("input"), function (b) { return b.checked; })
      .map(function (b) { return b.getAttribute("data-role"); });
  }
  function setFilters(list) {
    legend.querySelectorAll("input").forEach(function (b) { b.checked = list.indexOf(b.getAttribute("data-role")) >= 0; });
    applyFilters();
  }
  function applyFilters() {
    var want = checked();
    grid.querySelectorAll(".cell").forEach(function (c) {
      var rs = (c.getAttribute("data-roles") || "").split(" ");
      var on = !want.length || want.some(function (r) { return rs.indexOf(r) >= 0; });
      c.classList.toggle("dim", !on);
    });
  }
  function findHead() {
    var v = search.value.trim(), m = /^L(\d+)\s*H(\d+)$/i.exec(v);
    grid.querySelectorAll(".found").forEach(function (c) { c.classList.remove("found"); });
    if (!v) { msg.textContent = ""; return; }
    if (!m) { msg.textContent = "type a head as L{layer}H{head}, e.g. L3H1"; return; }
    var l = +m[1], h = +m[2];
    if (l >= NL || h >= NH) { msg.textContent = "no head " + v + ": this model has " + NL + " layers × " + NH + " heads"; return; }
    msg.textContent = "";
    var c = document.getElementById("cell-" + name(l, h));
    c.classList.add("found");
    c.scrollIntoView({block: "nearest"});
    openCard(l, h);
  }
  search.addEventListener("input", findHead);
  search.addEventListener("keydown", function (e) { if (e.key === "Enter") findHead(); });

  // ---- scores: ranks, percentiles ----
  function finite(vals) { return vals.filter(function (v) { return v != null && !isNaN(v); }); }
  function rankOf(entry, v) {
    var xs = finite(entry.values), above = 0, le = 0;
    xs.forEach(function (x) { if (x > v) above++; if (x <= v) le++; });
    return {rank: above + 1, n: xs.length, pct: 100 * le / xs.length};
  }
  function headValue(entry, l, h) {
    if (entry.level === "head") return entry.values[l * NH + h];
    if (entry.level === "kv_head") return entry.values[l * NKV + Math.floor(h / G)];
    return null;
  }
  var headEntries = D.scores.filter(function (e) { return e.level === "head" || e.level === "kv_head"; });

  // ---- head card ----
  var current = null;
  function openCard(l, h) {
    var n = name(l, h);
    current = [l, h];
    grid.querySelectorAll(".selected").forEach(function (c) { c.classList.remove("selected"); });
    document.getElementById("cell-" + n).classList.add("selected");
    card.hidden = false;
    card.innerHTML = "";
    card.setAttribute("data-head", n);
    var kv = Math.floor(h / G);
    card.appendChild(el("div", {style: "display:flex;justify-content:space-between;align-items:center"}, [
      el("h2", {id: "card-title", text: n}),
      el("button", {type: "button", id: "card-close", text: "×", onclick: function () { card.hidden = true; }})]));
    card.appendChild(el("p", {"class": "meta", text: "layer " + l + ", head " + h + ", KV head " + kv +
      (G > 1 ? " (shared by L" + l + "H" + kv * G + "–H" + (kv * G + G - 1) + ")" : "")}));
    var rs = D.roles[n] || [];
    card.appendChild(el("h3", {text: "Roles"}));
    var rl = el("ul", {id: "card-roles"});
    rs.forEach(function (e) {
      rl.appendChild(el("li", {"data-role": e[0]}, [badge(e[0]), " " + e[0] + ": " + e[1] + " " + e[3] + " (value " + fmt(e[4]) + ")"]));
    });
    card.appendChild(rs.length ? rl : el("p", {"class": "meta", id: "card-roles", text: "no role: no rule fired for this head"}));
    card.appendChild(el("h3", {text: "Scores"}));
    var rows = [el("tr", {}, ["analysis", "score", "value", "rank", "percentile"].map(function (t, i) {
      return el("th", {"class": i < 2 ? "l" : "", text: t}); }))];
    headEntries.forEach(function (e) {
      var v = headValue(e, l, h);
      if (v == null) return;
      var r = rankOf(e, v);
      rows.push(el("tr", {"data-score": e.analysis + "/" + e.score}, [el("td", {"class": "l", text: e.analysis}),
        el("td", {"class": "l", text: e.score + (e.level === "kv_head" ? " (KV " + kv + ")" : "")}),
        el("td", {"class": "value", "data-value": String(v), text: fmt(v)}),
        el("td", {"class": "rank", text: r.rank + " / " + r.n}), el("td", {"class": "pct", text: r.pct.toFixed(1)})]));
    });
    card.appendChild(el("table", {id: "card-scores"}, rows));
    var layerRows = [el("tr", {}, ["analysis", "layer-level score", "value", "rank of layer"].map(function (t, i) {
      return el("th", {"class": i < 2 ? "l" : "", text: t}); }))];
    D.scores.forEach(function (e) {
      var v = e.level === "layer" ? e.values[l] : null;
      if (v == null) return;
      var r = rankOf(e, v);
      layerRows.push(el("tr", {"data-score": e.analysis + "/" + e.score}, [el("td", {"class": "l", text: e.analysis}),
        el("td", {"class": "l", text: e.score}), el("td", {"data-value": String(v), text: fmt(v)}),
        el("td", {text: r.rank + " / " + r.n})]));
    });
    if (layerRows.length > 1) {
      card.appendChild(el("h3", {text: "Layer " + l + " (layer-level scores)"}));
      card.appendChild(el("table", {id: "card-layer-scores"}, layerRows));
    }
    cardDistribution(card, l, h);
    cardAttention(card, l, h);
  }

  function scoreSelect(id, entries, onchange) {
    var sel = el("select", {id: id}), groups = {};
    entries.forEach(function (e, i) {
      if (!groups[e.analysis]) { groups[e.analysis] = el("optgroup", {label: e.analysis}); sel.appendChild(groups[e.analysis]); }
      groups[e.analysis].appendChild(el("option", {value: String(i), text: e.score + " (" + e.level + ")"}));
    });
    sel.addEventListener("change", onchange);
    return sel;
  }

  var distChoice = 0;
  function cardDistribution(card, l, h) {
    if (!headEntries.length) return;
    card.appendChild(el("h3", {text: "Layer " + l + ": this head among its layer"}));
    var fig = el("div", {id: "card-dist", style: "height:230px"});
    var sel = scoreSelect("card-dist-score", headEntries, function () { distChoice = +sel.value; draw(); });
    sel.value = String(distChoice);
    card.appendChild(sel); card.appendChild(fig);
    function draw() {
      var e = headEntries[distChoice], kvl = e.level === "kv_head", n = kvl ? NKV : NH;
      var xs = [], ys = [], col = [], size = [], me = kvl ? Math.floor(h / G) : h;
      for (var i = 0; i < n; i++) {
        xs.push((kvl ? "KV" : "H") + i); ys.push(e.values[l * n + i]);
        col.push(i === me ? "#d62728" : "#4c72b0"); size.push(i === me ? 14 : 8);
      }
      Plotly.react(fig, [{type: "scatter", mode: "markers", x: xs, y: ys, marker: {color: col, size: size},
        hovertemplate: "%{x}: %{y:.4g}<extra></extra>"}], {margin: {l: 45, r: 10, t: 10, b: 30}, height: 230,
        yaxis: {title: {text: e.score}}}, CONFIG);
    }
    draw();
  }

  var EX = D.example, exIdx = null, exProb = null;
  function decode() {
    if (exIdx || !EX) return;
    var b = atob(EX.idx), u = new Uint8Array(b.length);
    for (var i = 0; i < b.length; i++) u[i] = b.charCodeAt(i);
    exIdx = new Uint16Array(u.buffer);
    var p = atob(EX.prob);
    exProb = new Uint8Array(p.length);
    for (i = 0; i < p.length; i++) exProb[i] = p.charCodeAt(i);
  }
  function cardAttention(card, l, h) {
    card.appendChild(el("h3", {text: "Attention on the example text"}));
    if (!EX) { card.appendChild(el("p", {"class": "meta", text: "no example text in this report"})); return; }
    decode();
    var N = EX.n_tokens, K = EX.k, base = (l * NH + h) * N * K;
    card.appendChild(el("p", {"class": "meta", text: EX.text + ", " + N + " tokens: the top-" + K +
      " keys of each query (statistics engine top-k, no n×n pattern). Click a token to see where it looks."}));
    var box = el("div", {id: "card-tokens"}), table = el("table", {id: "card-attn"}), spans = [];
    EX.tokens.forEach(function (t, i) {
      var s = el("span", {"class": "tok", "data-pos": String(i), title: "position " + i, text: t});
      s.addEventListener("click", function () { show(i); });
      spans.push(s); box.appendChild(s);
    });
    card.appendChild(box); card.appendChild(table);
    function show(q) {
      spans.forEach(function (s) { s.style.background = ""; s.classList.remove("q"); });
      spans[q].classList.add("q");
      table.innerHTML = "";
      table.appendChild(el("tr", {}, [el("th", {text: "query " + q}), el("th", {"class": "l", text: "key token"}),
        el("th", {text: "key_pos"}), el("th", {text: "weight"})]));
      for (var j = 0; j < K; j++) {
        var key = exIdx[base + q * K + j], w = exProb[base + q * K + j] / 255;
        if (w === 0 && j > 0) continue;
        spans[key].style.background = "rgba(214,39,40," + (0.15 + 0.85 * w).toFixed(3) + ")";
        table.appendChild(el("tr", {"class": "attn-row"}, [el("td", {text: "#" + (j + 1)}),
          el("td", {"class": "l", text: JSON.stringify(EX.tokens[key])}), el("td", {"class": "key", text: String(key)}),
          el("td", {"class": "w", text: w.toFixed(3)})]));
      }
    }
    show(N - 1);
  }

  // ---- score browser ----
  var browser = el("section", {id: "browser"});
  app.appendChild(browser);
  browser.appendChild(el("h2", {text: "Score browser"}));
  var plotted = D.scores;
  if (!plotted.length) browser.appendChild(el("p", {"class": "meta", text: "no head-, KV-head- or layer-level scores"}));
  else {
    var bsel = scoreSelect("score-select", plotted, function () { drawScore(+bsel.value); });
    browser.appendChild(el("label", {text: "Score "}, [bsel]));
    var bmeta = el("p", {"class": "meta", id: "browser-meta"});
    var heat = el("div", {id: "browser-heat"}), dist = el("div", {id: "browser-dist"}), btop = el("div", {id: "browser-top"});
    browser.appendChild(bmeta);
    browser.appendChild(el("div", {id: "browser-figs"}, [heat, dist]));
    browser.appendChild(btop);
    var first = plotted.findIndex(function (e) { return e.level === "head"; });
    bsel.value = String(Math.max(0, first));
    drawScore(Math.max(0, first));
  }
  function drawScore(i) {
    var e = plotted[i], layout = {margin: {l: 50, r: 10, t: 30, b: 40}};
    bmeta.textContent = e.analysis + " / " + e.score + ": " + e.level + " level, n_samples " + e.n_samples +
      (D.params[e.analysis] ? "; params " + JSON.stringify(D.params[e.analysis]) : "");
    browser.setAttribute("data-score", e.analysis + "/" + e.score);
    var xs = finite(e.values), order = [], cols = e.level === "head" ? NH : (e.level === "kv_head" ? NKV : 1);
    e.values.forEach(function (v, j) { if (v != null) order.push(j); });
    order.sort(function (a, b) { return e.values[b] - e.values[a] || a - b; });
    var label = function (j) {
      var l = Math.floor(j / cols), c = j % cols;
      return e.level === "head" ? name(l, c) : (e.level === "kv_head" ? "L" + l + "KV" + c : "L" + l);
    };
    if (e.level === "layer") {
      Plotly.react(heat, [{type: "bar", x: e.values.map(function (v, j) { return j; }), y: e.values, marker: {color: "#4c72b0"},
        hovertemplate: "layer %{x}: %{y:.4g}<extra></extra>"}], Object.assign({height: 320, title: {text: e.score + " per layer", font: {size: 13}},
        xaxis: {title: {text: "layer"}}}, layout), CONFIG);
    } else {
      var z = [];
      for (var l = 0; l < NL; l++) z.push(e.values.slice(l * cols, (l + 1) * cols));
      Plotly.react(heat, [{type: "heatmap", z: z, colorscale: "Viridis", hovertemplate: (e.level === "head" ? "L%{y}H%{x}" : "L%{y}KV%{x}") +
        ": %{z:.4g}<extra></extra>"}], Object.assign({height: Math.max(320, 110 + 14 * NL), title: {text: e.score + ": layer × " +
        (e.level === "head" ? "head" : "KV head"), font: {size: 13}}, xaxis: {title: {text: e.level === "head" ? "head" : "KV head"}},
        yaxis: {title: {text: "layer"}}}, layout), CONFIG);
      if (e.level === "head") {
        heat.removeAllListeners && heat.removeAllListeners("plotly_click");
        heat.on("plotly_click", function (ev) { var p = ev.points[0]; openCard(p.y, p.x); });
      }
    }
    Plotly.react(dist, [{type: "histogram", x: xs, marker: {color: "#4c72b0"}, nbinsx: Math.min(40, Math.max(5, Math.floor(xs.length / 3)))}],
      Object.assign({height: 320, title: {text: "distribution (" + xs.length + " values)", font: {size: 13}},
        xaxis: {title: {text: "value"}}, yaxis: {title: {text: "count"}}}, layout), CONFIG);
    var rows = [el("tr", {}, [el("th", {text: "#"}), el("th", {text: e.level === "layer" ? "layer" : "head"}), el("th", {text: "value"})])];
    order.slice(0, 10).forEach(function (j, r) {
      rows.push(el("tr", {"class": "top-row"}, [el("td", {text: String(r + 1)}), el("td", {text: label(j)}), el("td", {text: fmt(e.values[j])})]));
    });
    btop.innerHTML = "";
    btop.appendChild(el("b", {text: "top " + Math.min(10, order.length) + (e.level === "layer" ? " layers" : " heads")}));
    btop.appendChild(el("table", {id: "browser-top-table"}, rows));
  }

  // ---- model-level numbers ----
  if (D.model_scores.length) {
    var ms = el("section", {id: "model-level"}, [el("h2", {text: "Model-level numbers"})]), wrap = el("div", {"class": "model-tables"});
    D.analyses.forEach(function (a) {
      var rs = D.model_scores.filter(function (r) { return r.analysis === a; });
      if (!rs.length) return;
      var rows = [el("tr", {}, ["score", "value", "ci_low", "ci_high", "n_samples"].map(function (t, i) { return el("th", {"class": i ? "" : "l", text: t}); }))];
      rs.forEach(function (r) {
        rows.push(el("tr", {}, [el("td", {"class": "l", text: r.score}), el("td", {text: r.text || fmt(r.value)}), el("td", {text: fmt(r.ci_low)}),
          el("td", {text: fmt(r.ci_high)}), el("td", {text: String(r.n_samples)})]));
      });
      wrap.appendChild(el("div", {}, [el("h3", {text: a}), el("table", {"class": "model-level"}, rows)]));
    });
    ms.appendChild(wrap); app.appendChild(ms);
  }
  // ---- further views: scripts loaded before this one register a function in window.interpAtlasViews ----
  var api = {D: D, el: el, badge: badge, name: name, grid: grid, app: app, before: browser, headRoles: headRoles,
             roles: roles, PALETTE: PALETTE, openCard: openCard};
  (window.interpAtlasViews || []).forEach(function (view) { view(api); });
  document.body.setAttribute("data-ready-ms", String(Math.round(performance.now())));
  document.body.setAttribute("data-ready", "1");
})();
