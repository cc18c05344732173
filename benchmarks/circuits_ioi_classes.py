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
Writes reports/bench/circuits_ioi_classes_<model>.json.

    OMP_NUM_THREADS=1 python benchmarks/circuits_ioi_classes.py --model default --n 16 --screen 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from interp import io


def main() -> None:
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
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import interp
    from interp.analyses.circuits import ioi_task, path_patch
    from interp.analyses.circuits.ioi_classes import (
        attention_stats,
        direct_path_effects,
        edge_path_effects,
        head_patterns,
        ioi_positions,
    )

    t_start = time.perf_counter()
    model = interp.load_model(args.model)
    s = model.shape
    out = Path(args.out or f"reports/bench/circuits_ioi_classes_{model.name}.json")
    settings = {"model": model.name, "n": args.n, "seed": args.seed, "k": args.k}
    res = json.loads(out.read_text()) if out.exists() else {}
    if res.get("settings") != settings:
        res = {"settings": settings, "steps": {}}

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        io.write_json(out, res, indent=1, sort_keys=False)

    task = ioi_task(model, args.n, seed=args.seed)
    tt = task.tokens(model)
    pos = ioi_positions(tt.clean, tt.answer, tt.wrong)
    with torch.no_grad():
        lg_clean, lg_corr = model.logits(tt.clean), model.logits(tt.corrupt)
    ld_clean, ld_corr = float(tt.metric(lg_clean)), float(tt.metric(lg_corr))
    idx = torch.arange(args.n)
    acc = float((lg_clean[idx, -1, tt.answer] > lg_clean[idx, -1, tt.wrong]).float().mean())
    res.update(prompt_example=task.clean[0], corrupt_example=task.corrupt[0], n_prompts=args.n,
               pos=int(tt.clean.shape[1]), logit_diff_clean=ld_clean, logit_diff_corrupt=ld_corr,
               io_over_s_accuracy=acc)
    print(f"{model.name}: {args.n} IOI prompts × {tt.clean.shape[1]} tokens; logit diff clean {ld_clean:.3f}, "
          f"corrupt {ld_corr:.3f}; P(logit IO > logit S) = {acc:.2f}", flush=True)
    stats = attention_stats(head_patterns(model, tt.clean), pos)

    def heads_table(effect, name, cols, k, check=None):
        """Rows sorted by effect (most negative first); the class is the first k rows with a negative effect
        that pass ``check(row)`` (an attention check), if given."""
        flat = [(float(effect[l, h]), l, h) for l in range(s.n_layers) for h in range(s.n_heads)
                if not torch.isnan(effect[l, h])]  # NaN: not measured (screened out)
        flat.sort(key=lambda r: r[0])
        rows = []
        for e, l, h in flat:
            rows.append({"head": f"L{l}H{h}", "layer": l, "head_idx": h, "effect": e, "rel_effect": e / ld_clean,
                         **{c: float(stats[c][l, h]) for c in stats}})
            if check is not None:
                rows[-1]["passes_check"] = bool(check(rows[-1]))
        print(f"\n{name}: top {args.show} of {len(rows)} heads by path-patching effect "
              f"(Δ logit diff; relative to clean {ld_clean:.3f})")
        print(f"{'head':>8s} {'effect':>8s} {'rel':>7s} " + " ".join(f"{c:>8s}" for c in cols)
              + ("  check" if check else ""))
        for r in rows[: args.show]:
            print(f"{r['head']:>8s} {r['effect']:8.3f} {r['rel_effect']:7.1%} "
                  + " ".join(f"{r[c]:8.3f}" for c in cols) + (f"  {r['passes_check']}" if check else ""))
        pos_rows = [r for r in rows[::-1][:5] if r["effect"] > 0]
        if pos_rows:  # heads that help when patched, e.g. negative name movers at step 1
            print("   largest positive effects: " + ", ".join(
                f"{r['head']} {r['effect']:+.3f} (" + " ".join(f"{c} {r[c]:.2f}" for c in cols) + ")"
                for r in pos_rows))
        chosen = [r["head"] for r in rows if r["effect"] < 0 and r.get("passes_check", True)][:k]
        if not chosen:
            chosen = [r["head"] for r in rows[:k]]
            print("   no head passes the check: falling back to the top effects")
        print(f"   → class: {chosen}", flush=True)
        return rows, chosen

    def run_step(name, fn, receivers=("logits",)):
        done = res["steps"].get(name)
        if done is not None and done.get("receivers") == list(receivers):
            print(f"[{name}] loaded from {out}", flush=True)
            return torch.tensor(done["effect"], dtype=torch.float64)
        t0 = time.perf_counter()
        eff = fn()
        res["steps"][name] = {"effect": eff.tolist(), "seconds": time.perf_counter() - t0,
                              "receivers": list(receivers)}
        save()
        print(f"[{name}] {time.perf_counter() - t0:.1f} s", flush=True)
        return eff

    def progress(i, n):
        if i % 25 == 0 or i == n:
            print(f"    {i}/{n} senders", flush=True)

    eap_cache = {}

    def screened(receivers):
        """Senders to measure exactly: all (None), or the top ``--screen`` by |Σ EAP edge score into the
        receivers| (a first-order estimate of the same path patch)."""
        if not args.screen:
            return None
        if "scores" not in eap_cache:
            from interp.analyses.circuits import eap_scores

            f = Path(args.cache) / model.name / f"ioi_eap_n{args.n}_s{args.seed}.pt"
            if f.exists():
                eap_cache["scores"] = torch.load(f)
            else:
                t0 = time.perf_counter()
                eap_cache["scores"] = eap_scores(model, tt.clean, tt.corrupt, tt.metric)
                res["eap_seconds"] = time.perf_counter() - t0
        from interp.graph import Graph

        g = Graph.of(model)
        cols = [g.inputs.index(tuple(r)) for r in receivers]
        est = torch.zeros(s.n_layers, s.n_heads, dtype=torch.float64)
        for layer in range(s.n_layers):
            for head in range(s.n_heads):
                est[layer, head] = float(eap_cache["scores"][g.nodes.index(f"L{layer}H{head}"), cols].sum())
        order = sorted(((layer, head) for layer in range(s.n_layers) for head in range(s.n_heads)
                        if est[layer, head] != 0), key=lambda x: -abs(float(est[x])))
        return order[: args.screen], est

    def kv_of(head):
        l, h = (int(x) for x in head[1:].split("H"))
        return f"L{l}KV{s.kv_head_of(h)}"

    # 1. name movers: h → logits
    eff_nm = run_step("name_movers", lambda: direct_path_effects(model, tt.clean, tt.corrupt, tt.metric))
    rows_nm, nm = heads_table(eff_nm, "1. name movers (h → logits; check: END → IO > END → S1+S2)",
                              ["end_io", "end_s"], args.k, check=lambda r: r["end_io"] > r["end_s"])
    # heads with a large direct effect that attend END → S instead (S-suppression, cf. negative name movers)
    s_suppr = [r["head"] for r in rows_nm[:args.show] if r["effect"] < 0 and r["end_s"] > max(0.3, r["end_io"])]
    res["s_suppression_candidates"] = s_suppr
    print(f"   heads in the top {args.show} attending END → S rather than IO: {s_suppr}")
    top = rows_nm[0]["head"]  # cross-check the direct computation against the hook-based path patching
    check = path_patch(model, tt.clean, tt.corrupt, top, "logits", tt.metric)
    res["check_hook_path_patch"] = {"head": top, "hook_based": check, "direct": rows_nm[0]["effect"]}
    print(f"check: hook-based path_patch({top} → logits) = {check:.4f} vs direct {rows_nm[0]['effect']:.4f}")

    # 2. S-inhibition: h → q of the name movers
    rcv2 = [(h, "q") for h in nm]
    scr2 = screened(rcv2) if args.screen_step2 else None
    eff_si = run_step("s_inhibition", lambda: edge_path_effects(
        model, tt.clean, tt.corrupt, rcv2, tt.metric, progress=progress, senders=scr2 and scr2[0]),
        [f"{h}.q" for h in nm])
    if scr2:
        res["steps"]["s_inhibition"]["screened_senders"] = len(scr2[0])
    rows_si, si = heads_table(eff_si, f"2. S-inhibition (h → q of {', '.join(nm)})",
                              ["end_io", "end_s", "s2_s1", "s2_s1p1"], args.k)
    # the check is on the class, not the selection: S-inhibition heads attend END → S (S1 or S2)

    # 3. induction / duplicate-token: h → v of the S-inhibition heads' KV heads
    si_kv = sorted({kv_of(h) for h in si})
    rcv3 = [(kv, "v") for kv in si_kv]
    scr3 = screened(rcv3)
    eff_ind = run_step("induction_duplicate", lambda: edge_path_effects(
        model, tt.clean, tt.corrupt, rcv3, tt.metric, progress=progress, senders=scr3 and scr3[0]),
        [f"{kv}.v" for kv in si_kv])
    if scr3:
        res["steps"]["induction_duplicate"]["eap_estimate"] = scr3[1].tolist()
        res["steps"]["induction_duplicate"]["screened_senders"] = len(scr3[0])
    rows_ind, ind = heads_table(eff_ind, f"3. induction / duplicate-token (h → v of {', '.join(si_kv)}; "
                                "check: S2 → S1 or S2 → S1+1 > 0.2)", ["s2_s1", "s2_s1p1", "prev", "end_io"], args.k,
                                check=lambda r: max(r["s2_s1"], r["s2_s1p1"]) > 0.2)
    kinds = {r["head"]: ("duplicate" if r["s2_s1"] >= r["s2_s1p1"] else "induction") for r in rows_ind}
    res["induction_duplicate_kind"] = {h: kinds[h] for h in ind}
    print(f"   kinds: {res['induction_duplicate_kind']}")

    # 4. previous-token: h → k of the induction candidates' KV heads
    induction = [h for h in ind if kinds[h] == "induction"] or ind
    ind_kv = sorted({kv_of(h) for h in induction})
    rcv4 = [(kv, "k") for kv in ind_kv]
    scr4 = screened(rcv4)
    eff_prev = run_step("previous_token", lambda: edge_path_effects(
        model, tt.clean, tt.corrupt, rcv4, tt.metric, progress=progress, senders=scr4 and scr4[0]),
        [f"{kv}.k" for kv in ind_kv])
    if scr4:
        res["steps"]["previous_token"]["eap_estimate"] = scr4[1].tolist()
        res["steps"]["previous_token"]["screened_senders"] = len(scr4[0])
    rows_prev, prev = heads_table(eff_prev, f"4. previous-token (h → k of {', '.join(ind_kv)}; check: S1+1 → S1 "
                                  "> 0.2)", ["s1p1_s1", "prev", "s2_s1p1"], args.k,
                                  check=lambda r: r["s1p1_s1"] > 0.2)

    # random-baseline for the attention checks: uniform attention over the causal prefix
    base = {"end_io": float((1.0 / (pos["end"] + 1)).mean()), "s2_s1": float((1.0 / (pos["s2"] + 1)).mean())}
    res.update(classes={"name_movers": nm, "s_inhibition": si, "induction_duplicate": ind, "previous_token": prev},
               receivers={"s_inhibition": [f"{h}.q" for h in nm], "induction_duplicate": [f"{k}.v" for k in si_kv],
                          "previous_token": [f"{k}.k" for k in ind_kv]},
               tables={"name_movers": rows_nm[:30], "s_inhibition": rows_si[:30],
                       "induction_duplicate": rows_ind[:30], "previous_token": rows_prev[:30]},
               tables_positive={"name_movers": rows_nm[::-1][:10], "s_inhibition": rows_si[::-1][:10],
                                "induction_duplicate": rows_ind[::-1][:10], "previous_token": rows_prev[::-1][:10]},
               uniform_attention_baseline=base, threads=torch.get_num_threads(),
               total_seconds=time.perf_counter() - t_start)
    save()
    print(f"\nclasses: {res['classes']}\nuniform-attention baseline: {base}\nwrote {out}")


if __name__ == "__main__":
    main()
