"""GPU part of ``benchmarks/attention_stats_kernels.py --gpu / --gpu-only``: the Triton statistics kernels on an
8B-shaped layer against the flash SDPA forward of the same layer, in one process.

Layer: batch 1, 32 query / 8 kv heads, d_head 128, bf16, 32K tokens (Llama-3-8B shapes), x 32 layers.
Paths (each timed with CUDA events, >= 10 repetitions after a warm-up, median reported):
    sdpa_flash        F.scaled_dot_product_attention(is_causal) pinned to the flash backend (kv heads repeated,
                      as HF's repeat_kv does): 1 QK^T + 1 PV pass, the forward a capture rides on;
    flash_lse         aten._scaled_dot_product_flash_attention: the same forward, also returning the row LSE;
    triton_rows       row statistics only, two-pass row kernel (LSE pass + statistics pass): 2 QK^T passes;
    triton_rows+lse   the same given flash's row LSE (one-pass row kernel): 1 QK^T pass;
    triton            the typical request incl. column statistics: 2 row passes + 1 column pass = 3 QK^T;
    triton+lse        the typical request given the LSE: 1 row pass + 1 column pass = 2 QK^T.
Effective QK-TFLOP/s = one causal QK^T (2 d_head heads n(n+1)/2 FLOP) / time, whatever the passes; 'actual'
multiplies by the passes.  SDPA's own TFLOP/s counts QK^T + PV.  Correctness: every statistic of the timed
request on the kv group of head 0 (4 query heads) against the chunked path in float64 on the GPU, at the
kernels' stated tolerance.  Peak GPU memory per path (torch.cuda.max_memory_allocated, reset before each).
Targets printed beside the measurements: all 32 layers' statistics <= 1.0 s, >= 350 effective QK-TFLOP/s,
the two-pass row kernel within 1.5x of a flash SDPA forward.

Without CUDA ``run_gpu`` records the skip; ``dry_run=True`` runs the same code on CPU under
``TRITON_INTERPRET=1`` at a tiny size (tests/kernels/test_triton_bench.py), where the numbers mean nothing.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

ROW_ONLY = ("lse", "entropy", "mass_first", "argmax")
TYPICAL = ("lse", "entropy", "mass_first", "col_sum", "col_alpha", "argmax")
TARGETS = dict(all_layers_stats_s=1.0, effective_qk_tflops=350.0, two_pass_vs_flash=1.5)
PATHS = (  # name, stats, given the LSE, QK^T passes
    ("triton_rows", ROW_ONLY, False, 2), ("triton_rows+lse", ROW_ONLY, True, 1),
    ("triton", TYPICAL, False, 3), ("triton+lse", TYPICAL, True, 2),
)


def versions() -> dict:
    import triton

    v = dict(torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
             cuda=torch.version.cuda)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        v.update(gpu=p.name, capability=f"sm_{p.major}{p.minor}", gpu_memory_gb=round(p.total_memory / 2**30, 1),
                 sms=p.multi_processor_count)
    return v


def _timer(device):
    """fn -> seconds of one call: CUDA events on CUDA, perf_counter elsewhere."""
    if device.type == "cuda":
        def t(fn):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b) / 1e3
    else:
        def t(fn):
            s = time.perf_counter()
            fn()
            return time.perf_counter() - s
    return t


def _flash(q, kr, vr, scale, device):
    if device.type == "cuda":
        return torch.ops.aten._scaled_dot_product_flash_attention(q, kr, vr, 0.0, True, False, scale=scale)[:2]
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, kr, vr, 0.0, True, scale=scale)


def _sdpa(q, kr, vr, device):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type != "cuda":
        return F.scaled_dot_product_attention(q, kr, vr, is_causal=True)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # pinned: raises if flash cannot run these inputs
        return F.scaled_dot_product_attention(q, kr, vr, is_causal=True)


def _measure(fn, reps, timer, device):
    """Warm-up once (compiles), then ``reps`` timed calls; peak memory of one call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = [timer(fn) for _ in range(reps)]
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else None
    return dict(median_s=statistics.median(times), min_s=min(times), times_s=times, peak_extra_mb=peak)


def _check(ast, q, k, lse, stats, given):
    """Max |error| of each statistic on head 0's kv group vs chunked float64; ok at the stated tolerance."""
    from interp.kernels.attention_stats.triton_impl import tolerance

    g = q.shape[1] // k.shape[1]
    qs, ks = q[:, :g], k[:, :1]
    hint = lse[:, :g].contiguous() if given else None
    out = ast.compute_attention_stats(qs, ks, stats=stats, scale=q.shape[-1] ** -0.5, impl="triton", row_lse=hint)
    ref = ast.compute_attention_stats(qs.double(), ks.double(), stats=stats, scale=q.shape[-1] ** -0.5,
                                      impl="chunked", memory_budget_mb=2048)
    rtol, atol = tolerance(q.dtype)
    res = {}
    for name, r in ref.items():
        o = out[name]
        if name == "argmax":
            res[name] = dict(agree=float((o == r).double().mean()))
            continue
        err = (o.double() - r).abs()
        res[name] = dict(max_abs_err=float(err.max()), ok=bool((err <= atol + rtol * r.abs()).all()))
    return res


def _resources(q, k, stats, hint) -> dict:
    """Registers, spilled bytes and shared memory of the kernels this request launched (None in the interpreter)."""
    from interp.kernels.attention_stats._spec import validate
    from interp.kernels.attention_stats.triton_impl import triton_stats

    ran: dict = {}
    triton_stats(q, k, validate(q, k, stats=stats, scale=q.shape[-1] ** -0.5, row_lse=hint), launched=ran)
    return {name: None if kern is None else dict(regs=kern.n_regs, spill_bytes=4 * kern.n_spills,
                                                 shared_bytes=kern.metadata.shared, num_warps=kern.metadata.num_warps)
            for name, kern in ran.items()}


def _row(name, passes, m, layers, flop_qk):
    t = m["median_s"]
    return dict(path=name, qk_passes=passes, layer_s=t, all_layers_s=t * layers,
                effective_qk_tflops=flop_qk / t / 1e12, actual_qk_tflops=passes * flop_qk / t / 1e12, **m)


def _sdpa_rows(q, k, v, reps, timer, device, layers, flop_qk):
    """The flash SDPA forward (plain and returning the LSE) on kv heads repeated to the query heads."""
    g = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scale, rows = q.shape[-1] ** -0.5, []
    for name, fn in (("sdpa_flash", lambda: _sdpa(q, kr, vr, device)),
                     ("flash_lse", lambda: _flash(q, kr, vr, scale, device))):
        m = _measure(fn, reps, timer, device)
        rows.append(dict(_row(name, 1, m, layers, flop_qk), sdpa_tflops=2 * flop_qk / m["median_s"] / 1e12))
    return rows, _flash(q, kr, vr, scale, device)[1].float()


def run_gpu(*, n=32768, layers=32, heads=32, kv=8, d=128, reps=10, dry_run=False, out=None) -> dict:
    """Benchmark the 8B-shaped layer; return (and write to ``out``) the JSON record."""
    from interp.kernels import attention_stats as ast

    if not dry_run and not torch.cuda.is_available():
        rec = dict(skipped="no CUDA device", versions=versions())
        print("--gpu: no CUDA device, skipped", flush=True)
        return _write(rec, out)
    device = torch.device("cpu" if dry_run else "cuda")
    dtype = torch.float16 if dry_run else torch.bfloat16  # the CPU interpreter runs no bf16 dot
    reps = reps if dry_run else max(10, reps)  # >= 10 timed repetitions on the GPU
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, heads, n, d, generator=g, device=device).to(dtype)
    k = torch.randn(1, kv, n, d, generator=g, device=device).to(dtype)
    v = torch.randn(1, kv, n, d, generator=g, device=device).to(dtype)
    scale, timer = d**-0.5, _timer(device)
    flop_qk = 2 * d * heads * n * (n + 1) / 2
    rows, lse = _sdpa_rows(q, k, v, reps, timer, device, layers, flop_qk)
    del v
    for name, stats, given, passes in PATHS:
        hint = lse if given else None
        def fn(s=stats, h=hint):
            return ast.compute_attention_stats(q, k, stats=s, scale=scale, impl="triton", row_lse=h)

        m = _measure(fn, reps, timer, device)
        rows.append(dict(_row(name, passes, m, layers, flop_qk), check=_check(ast, q, k, lse, stats, given),
                         kernels=_resources(q, k, stats, hint)))
        _write(dict(status="partial", rows=rows), out)  # a timeout keeps what was measured
    verdict = _verdict(rows)
    shape = dict(batch=1, heads=heads, kv_heads=kv, d_head=d, n=n, layers=layers, dtype=str(dtype))
    rec = dict(status="ok" if verdict["checks_ok"] else "failed", shape=shape,
               reps=reps, rows=rows, targets=TARGETS, verdict=verdict, versions=versions(),
               dry_run=dry_run)
    _print(rec)
    return _write(rec, out)


def _verdict(rows) -> dict:
    by = {r["path"]: r for r in rows}
    best = min((by[p] for p in ("triton", "triton+lse")), key=lambda r: r["layer_s"])
    return dict(all_layers_stats_s=best["all_layers_s"], all_layers_path=best["path"],
                effective_qk_tflops=best["effective_qk_tflops"],
                two_pass_vs_flash=by["triton_rows"]["layer_s"] / by["sdpa_flash"]["layer_s"],
                checks_ok=all(c.get("ok", True) for r in rows for c in r.get("check", {}).values()))


def _print(rec):
    s = rec["shape"]
    print(f"GPU {rec['versions'].get('gpu', 'cpu (dry run)')}: {s['layers']} layers x [{s['heads']} heads / "
          f"{s['kv_heads']} kv, d_head {s['d_head']}, {s['dtype']}, n={s['n']}], {rec['reps']} reps (CUDA events)")
    print(f"{'path':>16} {'QK passes':>9} {'layer ms':>9} {str(s['layers']) + 'L s':>7} {'eff QK TF/s':>11} "
          f"{'act QK TF/s':>11} {'peak MB':>8} check")
    for r in rec["rows"]:
        chk = r.get("check")
        ok = "-" if chk is None else ("ok" if all(c.get("ok", True) for c in chk.values()) else "FAIL")
        peak = f"{r['peak_extra_mb']:8.0f}" if r["peak_extra_mb"] is not None else f"{'-':>8}"
        extra = f"  (SDPA {r['sdpa_tflops']:.0f} TFLOP/s)" if "sdpa_tflops" in r else ""
        print(f"{r['path']:>16} {r['qk_passes']:>9d} {r['layer_s'] * 1e3:9.2f} {r['all_layers_s']:7.3f} "
              f"{r['effective_qk_tflops']:11.1f} {r['actual_qk_tflops']:11.1f} {peak} {ok}{extra}")
    v, t = rec["verdict"], rec["targets"]
    print(f"all {s['layers']} layers' statistics: {v['all_layers_stats_s']:.3f} s ({v['all_layers_path']}; target "
          f"<= {t['all_layers_stats_s']} s); effective {v['effective_qk_tflops']:.0f} QK-TFLOP/s (target >= "
          f"{t['effective_qk_tflops']:.0f}); two-pass rows / flash SDPA = {v['two_pass_vs_flash']:.2f}x (target "
          f"<= {t['two_pass_vs_flash']}x); checks {'ok' if v['checks_ok'] else 'FAILED'}", flush=True)


def _write(rec, out):
    if out:
        from interp.io import write_json

        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_json(p, rec, indent=1, sort_keys=False)
        if rec.get("status") != "partial":
            print(f"wrote {p}")
    return rec
