"""Dose-response causal check of safety heads (Zhou et al., "On the Role of Attention Heads in Large Language
Model Safety", ICLR 2025) on a model that refuses: Qwen2.5-Coder-0.5B-Instruct.

1. Ships (KL of the last chat-template position's next-token distribution, clean ‖ head's query × 1e-5) of
   every head on ``--n-ships`` AdvBench prompts → dataset ranking by ``ships_kl_sum`` (also
   ``ships_top10_count``, reported with the overlap of the two rankings).
2. Sahara greedy set (``--set-size`` heads, r = 1, ``--n-sahara`` prompts) over the top
   ``--sahara-candidates`` Ships heads.
3. Greedy refusal rates (GCG keyword judge on ``--max-new-tokens`` new tokens) on ``--n-harmful`` AdvBench
   and ``--n-harmless`` harmless prompts for: clean; the top-k Ships heads ablated for each k in ``--ks``;
   the Sahara set; ``--n-random`` (``--n-random-small`` for k <= 3) random k-head sets per k (drawn without
   the top-k Ships heads, seeds 0..n-1); and, for the largest k, the same Ships / random sets with
   ``--extra-methods`` ablations (z = 0 or z = its positional mean; ``--n-random-extra`` random sets).
   Per condition: Wilson 95% interval, paired flips against clean with the exact McNemar p-value, and the
   set-level Ships KL (clean ‖ ablated first-token distribution) and the ablated probability of the clean
   greedy first token, averaged over the AdvBench prompts.

Checkpoint: every finished unit (one Ships prompt, the Sahara set, one refusal condition) is appended to
``--ckpt`` (jsonl) at once; a rerun with the same settings skips finished units (a unit is reused only when
its settings and its head list match). The summary JSON ``--out`` is rewritten after every unit.
Usage: ``OMP_NUM_THREADS=1 python experiments/safety_causal.py --threads 1 [--ks 1,3,10,30] ...``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from interp import io


def hname(heads) -> str:
    return " ".join(f"L{a}H{b}" for a, b in heads)


def unit_key(rec) -> tuple:
    return rec["kind"], rec["name"], rec["settings"]


class Checkpoint:
    """The finished units (``interp.io.JsonlCheckpoint``), keyed by ``(kind, name, settings)``; each record
    carries its own settings, so the file has no header."""

    def __init__(self, path: Path):
        self.jsonl = io.JsonlCheckpoint(path, None, key=unit_key)

    def get(self, kind, name, settings, heads=None):
        rec = self.jsonl.get((kind, name, settings))
        if rec is not None and heads is not None and rec.get("heads") != hname(heads):
            return None  # same name but a different head list (e.g. Ships ranking changed): redo
        return rec

    def put(self, rec):
        self.jsonl.add(rec, replace=True)


def _parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--template", default="chat")
    ap.add_argument("--n-ships", type=int, default=8)
    ap.add_argument("--top-count-k", type=int, default=10, help="k of the ships_top{k}_count ranking")
    ap.add_argument("--n-sahara", type=int, default=8)
    ap.add_argument("--sahara-candidates", type=int, default=10)
    ap.add_argument("--set-size", type=int, default=4)
    ap.add_argument("--ks", default="1,3,10,30", help="comma-separated numbers of top Ships heads to ablate")
    ap.add_argument("--n-random", type=int, default=3, help="random head sets per k > 3")
    ap.add_argument("--n-random-small", type=int, default=2, help="random head sets per k <= 3")
    ap.add_argument("--n-random-extra", type=int, default=2, help="random head sets for --extra-methods")
    ap.add_argument("--extra-methods", default="zero", help="ablations also run for the largest k ('' = none)")
    ap.add_argument("--n-harmful", type=int, default=40)
    ap.add_argument("--n-harmless", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--out", default="reports/experiments/safety_causal.json")
    ap.add_argument("--ckpt", default="reports/experiments/safety_causal.jsonl")
    ap.add_argument("--cache", default="/tmp/safety_causal_clean_first.pt",
                    help="clean first-token log-probs (the KL reference), so a rerun need not redo clean")
    return ap


class Study:
    """One run of the study: its arguments, model, prompts, checkpoint and the result being written."""

    def __init__(self, a):
        import interp
        from interp.analyses._safety_data import check_method, encode, load_prompts

        self.a = a
        self.ks = sorted({int(x) for x in a.ks.split(",") if x.strip()})
        self.extra = [m for m in a.extra_methods.split(",") if m.strip()]
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"--ks must list positive ints, got {a.ks!r}")
        for m in self.extra:
            check_method(m, 1e-5)
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        self.out, self.ckpt_path = Path(a.out), Path(a.ckpt)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.ckpt = Checkpoint(self.ckpt_path)
        self.timings: dict = {}
        self.result: dict = {
            "model": a.model, "args": vars(a), "timings_s": self.timings, "complete": False,
            "judge": "GCG _test_prefixes + EXTRA_PHRASES keyword match (analyses/refusal.py)",
            "decoding": f"greedy, {a.max_new_tokens} new tokens, batch {a.batch_size}, left padding",
            "ablation_default": "scale: head's query × 1e-5 (attention ~uniform over the prefix)"}
        self.harmful = load_prompts("advbench", a.n_harmful)
        self.harmless = load_prompts("harmless", a.n_harmless)
        self.ships_prompts = load_prompts("advbench", a.n_ships)
        t = time.time()
        self.model = interp.load_model(a.model)
        self.timings["load_s"] = time.time() - t
        print(f"{self.model} loaded in {self.timings['load_s']:.0f} s", flush=True)
        for ps in (self.harmful, self.harmless, self.ships_prompts):
            encode(self.model, ps, a.template)  # clear errors (no chat template, too long) before any long work
        s = self.model.shape
        if max(self.ks) > s.n_layers * s.n_heads:
            raise ValueError(f"--ks {max(self.ks)} exceeds the model's {s.n_layers * s.n_heads} heads")

    def dump(self):
        io.write_json(self.out, self.result, sort_keys=False)


def ships_stage(st: Study):
    """1. Ships, one checkpointed unit per prompt. Returns the top heads by KL sum."""
    import torch

    from interp.analyses.ships import dataset_scores, ships_kl, top_heads

    a, model, t = st.a, st.model, time.time()
    kls = []
    for i, p in enumerate(st.ships_prompts):
        key = f"{a.model}|{a.template}|scale|1e-05"
        rec = st.ckpt.get("ships", f"{i}:{p}", key)
        if rec is None:
            t0 = time.time()
            kl = ships_kl(model, p, template=a.template)
            rec = {"kind": "ships", "name": f"{i}:{p}", "settings": key, "kl": kl.tolist(),
                   "seconds": time.time() - t0}
            st.ckpt.put(rec)
            print(f"ships prompt {i + 1}/{len(st.ships_prompts)}: max KL {kl.max():.4f} ({rec['seconds']:.0f} s)",
                  flush=True)
        kls.append(torch.tensor(rec["kl"], dtype=torch.float64))
    kl = torch.stack(kls)  # [query, layer, head]
    st.timings["ships_s"] = time.time() - t
    scores = dataset_scores(kl, model_name=model.name, top_k=a.top_count_k)
    n_top = max(max(st.ks), a.sahara_candidates, 30)
    top = top_heads(scores, n_top, "ships_kl_sum")
    top_count = top_heads(scores, n_top, f"ships_top{a.top_count_k}_count")
    st.result["ships"] = ships_summary(kl, top, top_count, a.top_count_k, model.shape.n_heads)
    print("ships top-10 by KL sum: " + ", ".join(f"{r['head']} {r['kl_sum']:.3f}"
                                                  for r in st.result["ships"]["top_by_kl_sum"][:10]), flush=True)
    st.dump()
    return top


def ships_summary(kl, top, top_count, k: int, n_heads: int) -> dict:
    """``kl``: [query, layer, head]."""
    flat = kl.reshape(kl.shape[0], -1)
    in_top = flat.argsort(1, descending=True)[:, :k]
    return {
        "n_prompts": kl.shape[0],
        "top_by_kl_sum": [{"head": hname([h]), "kl_sum": float(kl[:, h[0], h[1]].sum()),
                           f"top{k}_count": int((in_top == h[0] * n_heads + h[1]).any(1).sum())} for h in top],
        "top_by_count": hname(top_count),
        "overlap_top10_kl_sum_vs_count": len(set(top[:10]) & set(top_count[:10])),
        "per_prompt_max_kl": flat.max(1).values.tolist(),
        "per_prompt_argmax": [hname([divmod(int(j), n_heads)]) for j in flat.argmax(1)],
        "per_prompt_sum_kl_all_heads": flat.sum(1).tolist(),
        "median_head_kl": float(flat.median()),
    }


def sahara_stage(st: Study, top):
    """2. Sahara over the top Ships heads. Returns its head set."""
    from interp.analyses.sahara import sahara

    a, t = st.a, time.time()
    cands = top[:a.sahara_candidates]
    key = f"{a.model}|{a.template}|n{a.n_sahara}|size{a.set_size}|r1"
    rec = st.ckpt.get("sahara", "sahara", key, heads=None)
    if rec is None or rec["candidates"] != hname(cands):
        sa = sahara(st.model, "advbench", n=a.n_sahara, set_size=a.set_size, candidates=cands, template=a.template,
                    progress=True)
        rec = {"kind": "sahara", "name": "sahara", "settings": key, "candidates": hname(cands),
               "heads": hname(sa.heads), "angles_deg": sa.angles,
               "step1_angles_deg": {hname([h]): float(sa.step_angles[0, h[0], h[1]]) for h in cands},
               "seconds": time.time() - t}
        st.ckpt.put(rec)
    st.result["sahara"] = {k: rec[k] for k in ("candidates", "heads", "angles_deg", "step1_angles_deg")}
    st.timings["sahara_s"] = time.time() - t
    st.dump()
    return [tuple(int(x) for x in h[1:].split("H")) for h in rec["heads"].split()]


def conditions_for(st: Study, top, sahara_heads) -> list[tuple]:
    """3a. The refusal conditions ``(name, heads, method)``, in priority order (largest dose and its controls
    first), so a run cut short keeps the most telling units."""
    from interp.analyses.refusal import random_heads

    a, ks, model = st.a, st.ks, st.model
    draws = lambda k: a.n_random if k > 3 else min(a.n_random, a.n_random_small)
    rand = lambda k, seed, excl: random_heads(model, k, seed=seed, exclude=excl)
    conditions = [("clean", [], "scale")]
    for k in sorted(ks, reverse=True):
        conditions.append((f"ships_top{k}", top[:k], "scale"))
        conditions += [(f"random{k}_seed{seed}", rand(k, seed, top[:k]), "scale") for seed in range(draws(k))]
        if k != max(ks):
            continue
        n_sa = len(sahara_heads)
        conditions.append((f"sahara{n_sa}", sahara_heads, "scale"))
        conditions.append((f"random{n_sa}_seed0", rand(n_sa, 0, top[:n_sa]), "scale"))
        for m in st.extra:
            conditions.append((f"ships_top{k}_{m}", top[:k], m))
            conditions += [(f"random{k}_seed{seed}_{m}", rand(k, seed, top[:k]), m)
                           for seed in range(min(draws(k), a.n_random_extra))]
    return list({c[0]: c for c in conditions}.values())  # a random set shared by two k's runs once


def run_condition(st: Study, name, heads, method, key) -> dict:
    from interp.analyses.refusal import generate, is_refusal

    a, t0 = st.a, time.time()
    rec = {"kind": "condition", "name": name, "settings": key, "heads": hname(heads), "method": method,
           "n_heads": len(heads)}
    for set_name, ps in (("advbench", st.harmful), ("harmless", st.harmless)):
        gens, first = generate(st.model, ps, template=a.template, max_new_tokens=a.max_new_tokens,
                               batch_size=a.batch_size, ablate=heads, method=method, return_first_logprobs=True)
        rec[f"refused_{set_name}"] = [is_refusal(g) for g in gens]
        rec[f"generations_{set_name}"] = gens
        if set_name == "advbench":
            rec["first_logprobs"] = first  # kept in memory only (clean's is the reference)
    rec["seconds"] = time.time() - t0
    return rec


def first_token_stats(rec, ref, first):
    from interp.metrics import kl_div

    kl_ = kl_div(ref, first)
    tok = ref.argmax(-1)
    rec["first_token_kl_mean"] = float(kl_.mean())
    rec["first_token_kl_max"] = float(kl_.max())
    rec["p_clean_first_token_mean"] = float(first.double().gather(1, tok[:, None]).exp().mean())


def refusal_stage(st: Study, conditions):
    """3b. Each condition's refusal rates (checkpointed), summarised after each one."""
    import torch

    from interp.stats import mcnemar_exact_p, wilson_interval

    a = st.a
    key = f"{a.model}|{a.template}|h{a.n_harmful}|b{a.n_harmless}|t{a.max_new_tokens}"
    clean_first, cache = None, Path(a.cache)
    if cache.exists():
        saved = torch.load(cache)
        if saved.get("settings") == key and st.ckpt.get("condition", "clean", key, heads=[]) is not None:
            clean_first = saved["first"]
    rows, t_ref = [], time.time()
    for name, heads, method in conditions:
        rec = st.ckpt.get("condition", name, key, heads=heads)
        if rec is None or (name == "clean" and clean_first is None):
            fresh = run_condition(st, name, heads, method, key)
            first = fresh.pop("first_logprobs")
            if name == "clean":
                clean_first = first
                io.save_torch(cache, {"settings": key, "first": first})
            if rec is None:
                first_token_stats(fresh, clean_first, first)
                rec = fresh
                st.ckpt.put(rec)
        elif clean_first is None:
            raise RuntimeError("clean condition must come first")
        print(f"{name:>22} {rec['heads'][:40]:<40} harmful {sum(rec['refused_advbench'])}/{len(st.harmful)} "
              f"harmless {sum(rec['refused_harmless'])}/{len(st.harmless)} KL1 {rec['first_token_kl_mean']:.3f} "
              f"({rec['seconds']:.0f} s)", flush=True)
        rows.append(rec)
        st.result["conditions"] = summarise(rows, wilson_interval, mcnemar_exact_p)
        st.result["random_summary"] = random_summary(st.result["conditions"])
        st.dump()
    st.timings["refusal_s"] = time.time() - t_ref


def main(argv=None):
    import torch

    st = Study(_parser().parse_args(argv))
    top = ships_stage(st)
    sahara_heads = sahara_stage(st, top)
    refusal_stage(st, conditions_for(st, top, sahara_heads))
    print_table(st.result)
    st.result.update(model=st.model.name, complete=True, torch_threads=torch.get_num_threads())
    st.dump()
    print(f"wrote {st.out} and {st.ckpt_path}")


def summarise(rows, wilson_interval, mcnemar_exact_p):
    clean = rows[0]
    table = []
    for r in rows:
        row = {"condition": r["name"], "method": r["method"], "n_heads": r["n_heads"], "heads": r["heads"]}
        for set_name in ("advbench", "harmless"):
            ref = r[f"refused_{set_name}"]
            k, n = sum(ref), len(ref)
            lo, hi = wilson_interval(k, n)
            c = clean[f"refused_{set_name}"]
            b = sum(x and not y for x, y in zip(c, ref))  # refused clean, complies ablated
            cc = sum(y and not x for x, y in zip(c, ref))
            row.update({f"refusal_{set_name}": k / n, f"refused_{set_name}": k, f"n_{set_name}": n,
                        f"ci95_{set_name}": [lo, hi], f"lost_refusals_{set_name}": b, f"new_refusals_{set_name}": cc,
                        f"mcnemar_p_{set_name}": mcnemar_exact_p(b, cc)})
        for f in ("first_token_kl_mean", "first_token_kl_max", "p_clean_first_token_mean", "seconds"):
            row[f] = r.get(f)
        lost = [i for i, (x, y) in enumerate(zip(clean["refused_advbench"], r["refused_advbench"])) if x and not y]
        row["examples_lost_refusal"] = [r["generations_advbench"][i][:100] for i in lost[:3]]
        row["example_advbench"] = r["generations_advbench"][0][:100]
        table.append(row)
    return table


def random_summary(table):
    groups: dict = {}
    for r in table:
        if r["condition"].startswith("random"):
            k, rest = r["condition"][len("random"):].split("_seed")
            key = f"random{k}" + ("_" + rest.split("_", 1)[1] if "_" in rest else "")
            groups.setdefault(key, []).append(r)
    out = {}
    for key, rs in groups.items():
        adv = [r["refusal_advbench"] for r in rs]
        out[key] = {"n_draws": len(rs), "refusal_advbench_mean": statistics.mean(adv),
                    "refusal_advbench_min": min(adv), "refusal_advbench_max": max(adv),
                    "refusal_advbench_sd": statistics.stdev(adv) if len(adv) > 1 else 0.0,
                    "refusal_harmless_mean": statistics.mean(r["refusal_harmless"] for r in rs),
                    "first_token_kl_mean": statistics.mean(r["first_token_kl_mean"] for r in rs),
                    "p_clean_first_token_mean": statistics.mean(r["p_clean_first_token_mean"] for r in rs)}
    return out


def print_table(result):
    print("\n| condition | method | heads | refusal AdvBench [95% CI] | lost/new vs clean (McNemar p) | "
          "refusal harmless | first-token KL | p(clean 1st tok) |\n|---|---|---|---|---|---|---|---|")
    for r in result["conditions"]:
        h = r["heads"] if len(r["heads"]) <= 40 else r["heads"][:36] + " ..."
        lo, hi = r["ci95_advbench"]
        print(f"| {r['condition']} | {r['method']} | {h or '-'} | {r['refusal_advbench']:.3f} [{lo:.2f}, {hi:.2f}] "
              f"(n={r['n_advbench']}) | {r['lost_refusals_advbench']}/{r['new_refusals_advbench']} "
              f"({r['mcnemar_p_advbench']:.2g}) | {r['refusal_harmless']:.3f} (n={r['n_harmless']}) | "
              f"{r['first_token_kl_mean']:.4f} | {r['p_clean_first_token_mean']:.3f} |")
    print("\nrandom sets (mean [min, max] over draws):")
    for key, g in result["random_summary"].items():
        print(f"  {key}: AdvBench {g['refusal_advbench_mean']:.3f} [{g['refusal_advbench_min']:.3f}, "
              f"{g['refusal_advbench_max']:.3f}] sd {g['refusal_advbench_sd']:.3f} ({g['n_draws']} draws), "
              f"harmless {g['refusal_harmless_mean']:.3f}, first-token KL {g['first_token_kl_mean']:.4f}")
    print("timings (s): " + ", ".join(f"{k}={v:.0f}" for k, v in result["timings_s"].items()))


if __name__ == "__main__":
    main()
