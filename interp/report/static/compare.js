/* interp compare: one figure per score from the JSON in #cmp-data (see interp/report/compare_html.py). */
(function () {
  "use strict";
  var F = JSON.parse(document.getElementById("cmp-data").textContent), C = {displaylogo: false, displayModeBar: false};
  var box = document.getElementById("figs");
  F.figs.forEach(function (f, i) {
    var d = document.createElement("div");
    d.className = "fig"; d.id = "cmp-fig" + i; box.appendChild(d);
    var t = f.key + ": \u03c1 = " + (f.rho == null ? "n/a" : f.rho.toFixed(3)) + " (" + f.method + ")";
    var L = {title: {text: t, font: {size: 11}}, margin: {l: 50, r: 10, t: 40, b: 40}, showlegend: !("x" in f)};
    if ("x" in f) {
      Plotly.newPlot(d, [{type: "scatter", mode: "markers", x: f.x, y: f.y, text: f.labels, marker: {size: 6},
        hovertemplate: "%{text}: %{x:.4g} \u2192 %{y:.4g}<extra></extra>"}],
        Object.assign(L, {xaxis: {title: {text: F.a}}, yaxis: {title: {text: F.b}}}), C);
    } else {
      Plotly.newPlot(d, [{type: "scatter", mode: "lines+markers", x: f.depth_a, y: f.a, name: F.a},
        {type: "scatter", mode: "lines+markers", x: f.depth_b, y: f.b, name: F.b}],
        Object.assign(L, {xaxis: {title: {text: "relative depth"}}, legend: {font: {size: 9}}}), C);
    }
  });
  document.body.setAttribute("data-ready", "1");
})();
