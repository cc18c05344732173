/* interp head atlas, cluster view: the head_similarity clusters (payload "clusters", see interp/report/atlas.py).
   Registers itself in window.interpAtlasViews; atlas.js calls it with the page's parts once the map is drawn. */
(function () {
  "use strict";
  window.interpAtlasViews = window.interpAtlasViews || [];
  window.interpAtlasViews.push(function (A) {
    var C = A.D.clusters, el = A.el;
    if (!C) return;
    var NH = A.D.shape.n_heads, groups = {};
    C.labels.forEach(function (c, i) {
      if (c == null) return;
      (groups[c] = groups[c] || []).push(A.name(Math.floor(i / NH), i % NH));
    });
    var ids = Object.keys(groups).map(Number).sort(function (a, b) {
      return groups[b].length - groups[a].length || a - b; });
    var colour = {};
    ids.forEach(function (c, i) {  // light fills: the role badges stay readable on them
      colour[c] = "hsl(" + Math.round((i * 137.508) % 360) + ",70%," + (i % 2 ? 82 : 90) + "%)"; });
    var sec = el("section", {id: "clusters"});
    A.app.insertBefore(sec, A.before);
    sec.appendChild(el("h2", {text: "Head clusters"}));
    sec.appendChild(el("p", {"class": "meta", text: ids.length + " clusters of " + C.analysis + "/" + C.score +
      " (average linkage on √JS of the heads' attention rows" +
      (A.D.params[C.analysis] ? "; params " + JSON.stringify(A.D.params[C.analysis]) : "") +
      "). Click a cluster to show its heads on the map; click it again to show all."}));
    var paint = el("input", {type: "checkbox", id: "cluster-colour", onchange: repaint});
    sec.appendChild(el("label", {"class": "controls"}, [paint, " colour the head map by cluster"]));
    var cells = {};
    A.grid.querySelectorAll(".cell").forEach(function (c) { cells[c.getAttribute("data-name")] = c; });
    var head = el("tr", {}, ["cluster", "heads", "roles of its members", "members"].map(function (t, i) {
      return el("th", {"class": i > 1 ? "l" : "", text: t}); }));
    var table = el("table", {id: "cluster-table"}, [head]), picked = null;
    ids.forEach(function (c) {
      var members = groups[c], counts = {};
      members.forEach(function (n) { (A.headRoles[n] || []).forEach(function (r) { counts[r] = (counts[r] || 0) + 1; }); });
      var roleCell = el("td", {"class": "l roles"});
      A.roles.filter(function (r) { return counts[r]; }).forEach(function (r) {
        roleCell.appendChild(el("span", {"data-role": r, "data-count": String(counts[r])}, [A.badge(r), " " + r + " ×" + counts[r] + " "]));
      });
      var shown = members.slice(0, 24).join(" ") + (members.length > 24 ? " … (+" + (members.length - 24) + ")" : "");
      var row = el("tr", {"class": "cluster-row", "data-cluster": String(c), "data-members": members.join(" "),
        style: "cursor:pointer", onclick: function () { pick(picked === c ? null : c); }},
        [el("td", {style: "background:" + colour[c], text: String(c)}), el("td", {"class": "size", text: String(members.length)}),
         roleCell, el("td", {"class": "l members", text: shown})]);
      table.appendChild(row);
    });
    sec.appendChild(table);
    function pick(c) {
      picked = c;
      var on = {};
      (c == null ? [] : groups[c]).forEach(function (n) { on[n] = true; });
      Object.keys(cells).forEach(function (n) { cells[n].classList.toggle("cdim", c != null && !on[n]); });
      table.querySelectorAll(".cluster-row").forEach(function (r) {
        r.classList.toggle("picked", c != null && r.getAttribute("data-cluster") === String(c)); });
    }
    function repaint() {
      C.labels.forEach(function (c, i) {
        var cell = cells[A.name(Math.floor(i / NH), i % NH)];
        if (cell) cell.style.background = paint.checked && c != null ? colour[c] : "";
      });
    }
  });
})();
