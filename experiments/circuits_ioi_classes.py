"""IOI head classes by path patching on a real model (Wang et al. 2022, §3), with attention checks.

Backwards from the logits on ``ioi_task`` prompts (ABC corruption, metric = logit(IO) − logit(S) at END), using
``interp.analyses.circuits.ioi_classes`` (direct paths, other heads and MLPs frozen; see its docstring):

  1. name movers (NM): h → logits; the ``--k`` most negative effects among heads with END → IO > END → S1+S2
  2. S-inhibition (SI): h → q of the NMs; the ``--k`` most negative effects
  3. induction / duplicate-token: h → v of the SIs' KV heads; checks S2 → S1 (duplicate) and S2 → S1+1
     (induction)
  4. previous-token: h → k of the induction candidates' KV heads; checks S1+1 → S1 and mean p → p−1

With ``--screen N`` steps 3-4 measure exactly only the N senders with the largest first-order estimate (the
summed EAP scores of their edges into the receivers; EAP scores from ``circuits_real.py``'s cache or computed),
the rest are NaN (not measured); steps 1-2 always measure every sender. Effects are reported raw and relative to
the clean logit difference; the tables also list the largest positive effects (e.g. negative name movers).
Each step is checkpointed into the JSON (a re-run with the same settings and receivers skips finished steps).
Writes reports/experiments/circuits_ioi_classes_<model>.json.

    OMP_NUM_THREADS=1 python experiments/circuits_ioi_classes.py --model default --n 16 --screen 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

from interp import io


def _parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=16, help="IOI prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=4, help="heads kept per class as receivers of the next step")
    ap.add_argument("--show", type=int, default=10, help="rows printed per table")
    ap.add_argument("--screen-step2", action="store_true",
                    help="apply --screen to step 2 (S-inhibition) too: needed for larger models on a CPU")
    ap.add_argument("--screen", type=int, default=0,
                    help="steps 3-4: measure exactly only the top-N senders of a first-order (EAP edge) estimate "
                         "(0: all senders)")
    ap.add_argument("--cache", default="/tmp/circuits_cache", help="EAP scores cached by circuits_real.py")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    return ap


def setup(args) -> SimpleNamespace:
    """The model, the IOI task, its clean/corrupt logit differences and the heads' attention checks."""
    import torch

    import interp
    from interp.analyses.circuits import ioi_task
    from interp.analyses.circuits.ioi_classes import attention_stats, head_patterns, ioi_positions

    torch.set_num_threads(args.threads)
    c = SimpleNamespace(args=args, t_start=time.perf_counter(), eap_cache={})
    c.model = model = interp.load_model(args.model)
    c.s = model.shape
    c.out = Path(args.out or f"reports/experiments/circuits_ioi_classes_{model.name}.json")
    settings = {"model": model.name, "n": args.n, "seed": args.seed, "k": args.k}
    c.res = json.loads(c.out.read_text()) if c.out.exists() else {}
    if c.res.get("settings") != settings:
        c.res = {"settings": settings, "steps": {}}
    task = ioi_task(model, args.n, seed=args.seed)
    c.tt = tt = task.tokens(model)
    c.pos = ioi_positions(tt.clean, tt.answer, tt.wrong)
    with torch.no_grad():
        lg_clean, lg_corr = model.logits(tt.clean), model.logits(tt.corrupt)
    c.ld_clean, ld_corr = float(tt.metric(lg_clean)), float(tt.metric(lg_corr))
    idx = torch.arange(args.n)
    acc = float((lg_clean[idx, -1, tt.answer] > lg_clean[idx, -1, tt.wrong]).float().mean())
    c.res.update(prompt_example=task.clean[0], corrupt_example=task.corrupt[0], n_prompts=args.n,
                 pos=int(tt.clean.shape[1]), logit_diff_clean=c.ld_clean, logit_diff_corrupt=ld_corr,
                 io_over_s_accuracy=acc)
    print(f"{model.name}: {args.n} IOI prompts × {tt.clean.shape[1]} tokens; logit diff clean {c.ld_clean:.3f}, "
          f"corrupt {ld_corr:.3f}; P(logit IO > logit S) = {acc:.2f}", flush=True)
    c.stats = attention_stats(head_patterns(model, tt.clean), c.pos)
    return c


def save(c):
    c.out.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(c.out, c.res, indent=1, sort_keys=False)


def head_rows(c, effect, check=None) -> list[dict]:
    """One row per measured head (NaN: screened out), sorted by effect (most negative first)."""
    import torch

    s = c.s
    flat = sorted((float(effect[l, h]), l, h) for l in range(s.n_layers) for h in range(s.n_heads)
                  if not torch.isnan(effect[l, h]))
    rows = []
    for e, l, h in flat:
        rows.append({"head": f"L{l}H{h}", "layer": l, "head_idx": h, "effect": e, "rel_effect": e / c.ld_clean,
                     **{k: float(c.stats[k][l, h]) for k in c.stats}})
        if check is not None:
            rows[-1]["passes_check"] = bool(check(rows[-1]))
    return rows


def print_rows(c, rows, name, cols, check):
    print(f"\n{name}: top {c.args.show} of {len(rows)} heads by path-patching effect "
          f"(Δ logit diff; relative to clean {c.ld_clean:.3f})")
    print(f"{'head':>8s} {'effect':>8s} {'rel':>7s} " + " ".join(f"{k:>8s}" for k in cols)
          + ("  check" if check else ""))
    for r in rows[: c.args.show]:
        print(f"{r['head']:>8s} {r['effect']:8.3f} {r['rel_effect']:7.1%} "
              + " ".join(f"{r[k]:8.3f}" for k in cols) + (f"  {r['passes_check']}" if check else ""))
    pos_rows = [r for r in rows[::-1][:5] if r["effect"] > 0]
    if pos_rows:  # heads that help when patched, e.g. negative name movers at step 1
        print("   largest positive effects: " + ", ".join(
            f"{r['head']} {r['effect']:+.3f} (" + " ".join(f"{k} {r[k]:.2f}" for k in cols) + ")"
            for r in pos_rows))


def heads_table(c, effect, name, cols, k, check=None):
    """Rows sorted by effect (most negative first); the class is the first k rows with a negative effect
    that pass ``check(row)`` (an attention check), if given."""
    rows = head_rows(c, effect, check)
    print_rows(c, rows, name, cols, check)
    chosen = [r["head"] for r in rows if r["effect"] < 0 and r.get("passes_check", True)][:k]
    if not chosen:
        chosen = [r["head"] for r in rows[:k]]
        print("   no head passes the check: falling back to the top effects")
    print(f"   → class: {chosen}", flush=True)
    return rows, chosen


def run_step(c, name, fn, receivers=("logits",)):
    import torch

    done = c.res["steps"].get(name)
    if done is not None and done.get("receivers") == list(receivers):
        print(f"[{name}] loaded from {c.out}", flush=True)
        return torch.tensor(done["effect"], dtype=torch.float64)
    t0 = time.perf_counter()
    eff = fn()
    c.res["steps"][name] = {"effect": eff.tolist(), "seconds": time.perf_counter() - t0,
                            "receivers": list(receivers)}
    save(c)
    print(f"[{name}] {time.perf_counter() - t0:.1f} s", flush=True)
    return eff


def progress(i, n):
    if i % 25 == 0 or i == n:
        print(f"    {i}/{n} senders", flush=True)


def eap_edge_scores(c):
    import torch

    if "scores" not in c.eap_cache:
        from interp.analyses.circuits import eap_scores

        f = Path(c.args.cache) / c.model.name / f"ioi_eap_n{c.args.n}_s{c.args.seed}.pt"
        if f.exists():
            c.eap_cache["scores"] = torch.load(f)
        else:
            t0 = time.perf_counter()
            c.eap_cache["scores"] = eap_scores(c.model, c.tt.clean, c.tt.corrupt, c.tt.metric)
            c.res["eap_seconds"] = time.perf_counter() - t0
    return c.eap_cache["scores"]


def screened(c, receivers):
    """Senders to measure exactly: all (None), or the top ``--screen`` by |Σ EAP edge score into the
    receivers| (a first-order estimate of the same path patch)."""
    import torch

    from interp.graph import Graph

    if not c.args.screen:
        return None
    scores, s = eap_edge_scores(c), c.s
    g = Graph.of(c.model)
    cols = [g.inputs.index(tuple(r)) for r in receivers]
    est = torch.zeros(s.n_layers, s.n_heads, dtype=torch.float64)
    for layer in range(s.n_layers):
        for head in range(s.n_heads):
            est[layer, head] = float(scores[g.nodes.index(f"L{layer}H{head}"), cols].sum())
    order = sorted(((layer, head) for layer in range(s.n_layers) for head in range(s.n_heads)
                    if est[layer, head] != 0), key=lambda x: -abs(float(est[x])))
    return order[: c.args.screen], est


def kv_of(c, head):
    l, h = (int(x) for x in head[1:].split("H"))
    return f"L{l}KV{c.s.kv_head_of(h)}"


def edge_step(c, name, rcv, labels, screen: bool):
    """Path-patching effects of every sender head into the receivers ``rcv`` (optionally screened by EAP)."""
    from interp.analyses.circuits.ioi_classes import edge_path_effects

    scr = screened(c, rcv) if screen else None
    eff = run_step(c, name, lambda: edge_path_effects(
        c.model, c.tt.clean, c.tt.corrupt, rcv, c.tt.metric, progress=progress, senders=scr and scr[0]), labels)
    if scr:
        if name != "s_inhibition":
            c.res["steps"][name]["eap_estimate"] = scr[1].tolist()
        c.res["steps"][name]["screened_senders"] = len(scr[0])
    return eff


def step_name_movers(c):
    """1. name movers: h → logits, cross-checked against the hook-based path patching."""
    from interp.analyses.circuits import path_patch
    from interp.analyses.circuits.ioi_classes import direct_path_effects

    tt, args = c.tt, c.args
    eff_nm = run_step(c, "name_movers", lambda: direct_path_effects(c.model, tt.clean, tt.corrupt, tt.metric))
    rows_nm, nm = heads_table(c, eff_nm, "1. name movers (h → logits; check: END → IO > END → S1+S2)",
                              ["end_io", "end_s"], args.k, check=lambda r: r["end_io"] > r["end_s"])
    # heads with a large direct effect that attend END → S instead (S-suppression, cf. negative name movers)
    s_suppr = [r["head"] for r in rows_nm[:args.show] if r["effect"] < 0 and r["end_s"] > max(0.3, r["end_io"])]
    c.res["s_suppression_candidates"] = s_suppr
    print(f"   heads in the top {args.show} attending END → S rather than IO: {s_suppr}")
    top = rows_nm[0]["head"]
    check = path_patch(c.model, tt.clean, tt.corrupt, top, "logits", tt.metric)
    c.res["check_hook_path_patch"] = {"head": top, "hook_based": check, "direct": rows_nm[0]["effect"]}
    print(f"check: hook-based path_patch({top} → logits) = {check:.4f} vs direct {rows_nm[0]['effect']:.4f}")
    return rows_nm, nm


def step_induction(c, si):
    """3. induction / duplicate-token: h → v of the S-inhibition heads' KV heads."""
    si_kv = sorted({kv_of(c, h) for h in si})
    eff = edge_step(c, "induction_duplicate", [(kv, "v") for kv in si_kv], [f"{kv}.v" for kv in si_kv], True)
    rows, ind = heads_table(c, eff, f"3. induction / duplicate-token (h → v of {', '.join(si_kv)}; "
                            "check: S2 → S1 or S2 → S1+1 > 0.2)", ["s2_s1", "s2_s1p1", "prev", "end_io"], c.args.k,
                            check=lambda r: max(r["s2_s1"], r["s2_s1p1"]) > 0.2)
    kinds = {r["head"]: ("duplicate" if r["s2_s1"] >= r["s2_s1p1"] else "induction") for r in rows}
    c.res["induction_duplicate_kind"] = {h: kinds[h] for h in ind}
    print(f"   kinds: {c.res['induction_duplicate_kind']}")
    return rows, ind, si_kv, [h for h in ind if kinds[h] == "induction"] or ind


def finish(c, tables, classes, receivers):
    import torch

    pos = c.pos  # random baseline for the attention checks: uniform attention over the causal prefix
    base = {"end_io": float((1.0 / (pos["end"] + 1)).mean()), "s2_s1": float((1.0 / (pos["s2"] + 1)).mean())}
    c.res.update(classes=classes, receivers=receivers, tables={k: r[:30] for k, r in tables.items()},
                 tables_positive={k: r[::-1][:10] for k, r in tables.items()},
                 uniform_attention_baseline=base, threads=torch.get_num_threads(),
                 total_seconds=time.perf_counter() - c.t_start)
    save(c)
    print(f"\nclasses: {c.res['classes']}\nuniform-attention baseline: {base}\nwrote {c.out}")


def main() -> None:
    c = setup(_parser().parse_args())
    rows_nm, nm = step_name_movers(c)
    # 2. S-inhibition: h → q of the name movers (the check is on the class: they attend END → S1 or S2)
    eff_si = edge_step(c, "s_inhibition", [(h, "q") for h in nm], [f"{h}.q" for h in nm], c.args.screen_step2)
    rows_si, si = heads_table(c, eff_si, f"2. S-inhibition (h → q of {', '.join(nm)})",
                              ["end_io", "end_s", "s2_s1", "s2_s1p1"], c.args.k)
    rows_ind, ind, si_kv, induction = step_induction(c, si)
    # 4. previous-token: h → k of the induction candidates' KV heads
    ind_kv = sorted({kv_of(c, h) for h in induction})
    eff_prev = edge_step(c, "previous_token", [(kv, "k") for kv in ind_kv], [f"{kv}.k" for kv in ind_kv], True)
    rows_prev, prev = heads_table(c, eff_prev, f"4. previous-token (h → k of {', '.join(ind_kv)}; check: S1+1 → "
                                  "S1 > 0.2)", ["s1p1_s1", "prev", "s2_s1p1"], c.args.k,
                                  check=lambda r: r["s1p1_s1"] > 0.2)
    finish(c, {"name_movers": rows_nm, "s_inhibition": rows_si, "induction_duplicate": rows_ind,
               "previous_token": rows_prev},
           {"name_movers": nm, "s_inhibition": si, "induction_duplicate": ind, "previous_token": prev},
           {"s_inhibition": [f"{h}.q" for h in nm], "induction_duplicate": [f"{k}.v" for k in si_kv],
            "previous_token": [f"{k}.k" for k in ind_kv]})


if __name__ == "__main__":
    main()
