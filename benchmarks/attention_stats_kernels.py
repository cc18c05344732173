"""Benchmark: attention statistics (chunked / fused CPU paths, Triton) vs a plain causal SDPA forward.

Synthetic layer-shaped inputs (batch 1, 9 heads, 3 kv heads, d_head 64, fp32) at several sequence lengths.
For each n: median wall time of torch SDPA (is_causal, enable_gqa) and of ``compute_attention_stats`` for the
typical request (lse, entropy, mass_first, col_sum, col_alpha, argmax), interleaved so that machine load hits
both alike, for each ``--impls``: ``chunked`` (torch ops), ``fused`` (matmul + C sweep, computing its own
LSE) and ``fused+lse`` (given the row LSE that the flash SDPA kernel returns, as inside a model forward).
Prints a table and writes JSON to reports/bench/attention_stats_kernels.json.
``--gpu``: additionally benchmark the Triton path on an 8B-shaped layer (32 heads, 8 kv, d 128, bf16, 32K) against
the flash SDPA forward (``benchmarks/_gpu_kernels.py``; JSON to ``--gpu-out``); ``--gpu-only``: only that (the
CPU sweep needs a C compiler and minutes).

    python benchmarks/attention_stats_kernels.py [--n 512 2048 8192] [--reps 3] [--layers 30] [--gpu]
    python benchmarks/attention_stats_kernels.py --gpu-only [--gpu-n 32768] [--gpu-reps 10] [--gpu-out PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
TYPICAL = ("lse", "entropy", "mass_first", "col_sum", "col_alpha", "argmax")


def _kernels():
    try:
        from interp.kernels import attention_stats
    except ModuleNotFoundError:  # plain checkout: register kernels/ as interp.kernels
        import interp

        spec = importlib.util.spec_from_file_location(
            "interp.kernels",
            ROOT / "kernels" / "__init__.py",
            submodule_search_locations=[str(ROOT / "kernels")],
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules["interp.kernels"] = mod
        spec.loader.exec_module(mod)
        interp.kernels = mod
        from interp.kernels import attention_stats
    return attention_stats


def _time(fn, sync=lambda: None):
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def bench_layer(
    n, reps, *, heads=9, kv=3, d=64, dtype=torch.float32, device="cpu", impl="chunked", stats=TYPICAL
):
    ast = _kernels()
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, heads, n, d, generator=g, device=device).to(dtype)
    k = torch.randn(1, kv, n, d, generator=g, device=device).to(dtype)
    v = torch.randn(1, kv, n, d, generator=g, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
    lse = None
    if impl.endswith("+lse"):  # the row LSE the flash SDPA kernel returns (as inside a model forward)
        impl = impl[: -len("+lse")]
        group = heads // kv
        kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        if device == "cuda":
            lse = torch.ops.aten._scaled_dot_product_flash_attention(q, kr, vr, 0.0, True, False, scale=d**-0.5)[1]
        else:
            lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, kr, vr, 0.0, True, scale=d**-0.5)[1]
        del kr, vr
    run = lambda: ast.compute_attention_stats(q, k, stats=stats, scale=d**-0.5, impl=impl, row_lse=lse)  # noqa: E731
    sdpa(), run()  # warm-up (and Triton compilation)
    t_sdpa, t_stats = [], []
    for _ in range(reps):
        t_sdpa.append(_time(sdpa, sync))
        t_stats.append(_time(run, sync))
    return statistics.median(t_sdpa), statistics.median(t_stats)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=30, help="layers for the whole-model extrapolation")
    ap.add_argument("--impls", nargs="+", default=["chunked", "fused", "fused+lse"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--gpu", action="store_true", help="also time Triton on an 8B-shaped layer (needs CUDA)")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU benchmark (no CPU sweep)")
    ap.add_argument("--gpu-n", type=int, default=32768, help="tokens of the GPU benchmark layer")
    ap.add_argument("--gpu-reps", type=int, default=10, help="timed repetitions on the GPU (at least 10)")
    ap.add_argument("--gpu-out", default=str(ROOT / "reports" / "bench" / "attention_stats_gpu.json"))
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench" / "attention_stats_kernels.json"))
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.gpu or a.gpu_only:
        _kernels()  # registers interp.kernels on a plain checkout
        from _gpu_kernels import run_gpu

        run_gpu(n=a.gpu_n, reps=a.gpu_reps, out=a.gpu_out)
        if a.gpu_only:
            return
    rows = []
    print(
        f"CPU, batch 1, 9 heads / 3 kv heads, d_head 64, fp32, threads={torch.get_num_threads()}, "
        f"stats={list(TYPICAL)}"
    )
    print(f"{'impl':>10} {'n':>6} {'sdpa s':>9} {'stats s':>9} {'ratio':>6} {f'model({a.layers}L) stats s':>22}")
    for n, impl in ((n, impl) for n in a.n for impl in a.impls):
        t_sdpa, t_stats = bench_layer(n, a.reps, impl=impl)
        rows.append(
            dict(
                device="cpu",
                impl=impl,
                n=n,
                heads=9,
                kv_heads=3,
                d_head=64,
                dtype="float32",
                sdpa_s=t_sdpa,
                stats_s=t_stats,
                ratio=t_stats / t_sdpa,
                model_stats_s=t_stats * a.layers,
                model_sdpa_s=t_sdpa * a.layers,
            )
        )
        print(f"{impl:>10} {n:>6} {t_sdpa:>9.3f} {t_stats:>9.3f} {t_stats / t_sdpa:>6.2f} {t_stats * a.layers:>22.1f}")
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from interp.io import write_json

    write_json(out, dict(stats=list(TYPICAL), results=rows), sort_keys=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
