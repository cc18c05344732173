"""Benchmark: the head atlas page (``report.html``) of a report folder in headless Chromium (selenium).

Measures the page size (and the static page of the same scores, ``interp report --static``, for comparison), the
time until the page is interactive (``performance.now()`` when ``atlas.js`` has drawn the map, the score browser
and set ``data-ready``; median of ``--loads`` fresh loads), the click latency (a head cell clicked → its card,
layer plot and attention view drawn; synchronous, median over ``--clicks`` heads) and the search latency.
Prints a table and writes ``reports/bench/atlas_page.json``.

    python benchmarks/atlas_page.py REPORT_DIR [--loads 5] [--clicks 20] [--out reports/bench/atlas_page.json]
        [--screenshots reports/screenshots] [--card L18H6]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

from interp import io


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"]:
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def load_ms(drv, page: Path) -> float:
    from selenium.webdriver.support.ui import WebDriverWait

    drv.get("about:blank")
    drv.get(page.as_uri())
    WebDriverWait(drv, 60).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    return float(drv.execute_script("return +document.body.dataset.readyMs"))


CLICK = """var t = performance.now(); document.getElementById(arguments[0]).click();
return [performance.now() - t, document.getElementById('card-title').textContent];"""
SEARCH = """var s = document.getElementById('search'), t = performance.now(); s.value = arguments[0];
s.dispatchEvent(new Event('input'));
return [performance.now() - t, document.getElementById('card-title').textContent];"""


def static_size(report: Path, manifest: dict) -> int:
    from interp.report.html import render_report
    from interp.scores import ScoreTable

    scores = ScoreTable.read(report / "scores.parquet")
    html = render_report(scores, model_name=manifest["model"], shape=SimpleNamespace(**manifest["shape"]),
                         params=manifest.get("params"))
    return len(html.encode())


def top_head(report: Path) -> str:
    from interp.scores import ScoreTable

    s = ScoreTable.read(report / "scores.parquet")
    sub = s[(s["score"] == "induction") & (s["level"] == "head")]
    sub = sub if len(sub) else s[s["level"] == "head"]
    r = sub.sort_values("value", ascending=False).iloc[0]
    return f"L{int(r['layer'])}H{int(r['head'])}"


def shots(drv, page: Path, out: Path, model: str, head: str) -> None:
    """The head map (card closed) and one head's card, as PNGs in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    drv.set_window_size(1400, 1300)
    load_ms(drv, page)
    drv.save_screenshot(str(out / f"atlas_{model}_map.png"))
    drv.execute_script(f"document.getElementById('cell-{head}').click()")
    time.sleep(0.5)
    drv.save_screenshot(str(out / f"atlas_{model}_card_{head}.png"))
    print(f"screenshots: {out}/atlas_{model}_map.png, atlas_{model}_card_{head}.png")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="a report folder (the --out of `interp report`)")
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--out", default="reports/bench/atlas_page.json")
    ap.add_argument("--screenshots", default=None, help="folder for the head map and a head card screenshot "
                    "(e.g. reports/screenshots)")
    ap.add_argument("--card", default=None, help="head for the card screenshot (default: the top induction head)")
    args = ap.parse_args()
    report = Path(args.report)
    page, manifest = report / "report.html", io.read_json(report / "manifest.json")
    shape = manifest["shape"]
    drv = browser()
    try:
        loads = [load_ms(drv, page) for _ in range(args.loads)]
        heads = [(i * 7) % (shape["n_layers"] * shape["n_heads"]) for i in range(args.clicks)]
        clicks, searches = [], []
        for i in heads:
            name = f"L{i // shape['n_heads']}H{i % shape['n_heads']}"
            ms, title = drv.execute_script(CLICK, f"cell-{name}")
            assert title == name, (title, name)
            clicks.append(ms)
        for i in heads[:5]:
            name = f"L{i // shape['n_heads']}H{(i + 1) % shape['n_heads']}"
            ms, title = drv.execute_script(SEARCH, name)
            assert title == name, (title, name)
            searches.append(ms)
        if args.screenshots:
            shots(drv, page, Path(args.screenshots), manifest["model"], args.card or top_head(report))
    finally:
        drv.quit()
    res = {
        "model": manifest["model"], "shape": shape, "analyses": manifest.get("analyses"),
        "page_mb": round(page.stat().st_size / 1e6, 3), "static_page_mb": round(static_size(report, manifest) / 1e6, 3),
        "interactive_ms_median": round(statistics.median(loads), 1), "interactive_ms_all": [round(x) for x in loads],
        "click_ms_median": round(statistics.median(clicks), 1), "click_ms_max": round(max(clicks), 1),
        "search_ms_median": round(statistics.median(searches), 1),
        "uptime": os.popen("uptime").read().strip(), "platform": platform.platform(),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"{'model':<26}{'page MB':>9}{'static MB':>11}{'ready ms':>10}{'click ms':>10}{'search ms':>11}")
    print(f"{res['model']:<26}{res['page_mb']:>9}{res['static_page_mb']:>11}{res['interactive_ms_median']:>10}"
          f"{res['click_ms_median']:>10}{res['search_ms_median']:>11}")
    print(res["uptime"])
    io.write_json(args.out, res)


if __name__ == "__main__":
    main()
