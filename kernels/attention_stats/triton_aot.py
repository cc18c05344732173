"""Compile the Triton statistics kernels for a GPU target without a GPU, and read their resource usage.

The CPU interpreter (``TRITON_INTERPRET=1``) runs kernels as NumPy code: it does not check what only the real
compiler checks (e.g. that a ``@triton.jit`` function reads no non-constexpr global) and says nothing about
registers. This module builds the exact launch ``triton_impl.triton_stats`` makes for a model-shaped input
(``triton_impl.plan`` on ``meta`` tensors: q, k as the transposed ``[batch, pos, head, d_head]`` views an HF
attention layer hands over), passes its arguments through the JIT's own binder (``create_function_from_signature``
+ ``JITFunction._pack_args``, Triton 3.9), so that every pointer and int argument gets the specialisation the
JIT would give it (16-divisibility ``tt.divisibility`` attributes, stride 1 as a constexpr, i64 for ints >= 2**31),
and lowers it to a cubin for sm_80 / sm_90 with the ``ptxas`` bundled in the triton wheel; the bundled
``cuobjdump`` reads registers, stack (spills) and shared memory.

    python -m interp.kernels.attention_stats.triton_aot            # table for sm_90, bf16/fp16/fp32 × d_head
    python -m interp.kernels.attention_stats.triton_aot --json out.json --arch 80 90 --n 4096 4095
    python -m interp.kernels.attention_stats.triton_aot --gpu      # read them from kernels launched on a GPU

The JIT compiles one variant per specialisation, so a sequence length that is not a multiple of 16 (``--n
4095``) gets another kernel; ``--gpu`` launches real CUDA tensors of the same shapes and reads
``kernel.n_regs``, ``kernel.n_spills`` (local memory, 4-byte words) and ``kernel.metadata.shared``.
Must run in a process where ``TRITON_INTERPRET`` is unset (``triton.jit`` returns interpreter objects
otherwise); ``main`` refuses with a clear message.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

KERNELS = ("row", "row+lse", "col")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ROW_STATS = ("lse", "max", "entropy", "entropy_norm", "argmax", "mass_first", "mass_keyset", "mass_recent",
             "mass_self", "attn_distance", "prev_token", "duplicate", "induction")
COL_STATS = ("col_sum", "col_alpha", "col_entropy")
HEADS, KV_HEADS, WINDOW, SOFTCAP = 32, 8, 512, 30.0  # 8B-shaped layer; Gemma-like window and softcap


def scenario(kernel: str, dtype: str, d_head: int, n: int = 4096, *, features: bool = True, device="meta",
             seed: int = 0):
    """(q, k, spec) as a model layer hands them to ``triton_stats``: q ``[1, 32, n, d_head]``, k ``[1, 8, n,
    d_head]``, transposed views of ``[1, n, heads, d_head]``; every statistic of ``kernel`` requested;
    ``features``: key padding mask, window 512 and softcap 30 on (the heaviest variant)."""
    from ._spec import validate

    dt = DTYPES[dtype]
    if device == "meta":
        q = torch.empty(1, n, HEADS, d_head, dtype=dt, device=device).transpose(1, 2)
        k = torch.empty(1, n, KV_HEADS, d_head, dtype=dt, device=device).transpose(1, 2)
    else:
        g = torch.Generator(device=device).manual_seed(seed)
        q = torch.randn(1, n, HEADS, d_head, generator=g, device=device).to(dt).transpose(1, 2)
        k = torch.randn(1, n, KV_HEADS, d_head, generator=g, device=device).to(dt).transpose(1, 2)
    stats = COL_STATS if kernel == "col" else ROW_STATS
    kw = dict(token_ids=torch.zeros(1, n, dtype=torch.int64, device=device),
              key_set=torch.ones(1, n, dtype=torch.bool, device=device))
    if features:
        kw.update(key_padding_mask=torch.ones(1, n, dtype=torch.bool, device=device), window=WINDOW,
                  softcap=SOFTCAP)
    if kernel == "row+lse":
        kw["row_lse"] = torch.zeros(1, HEADS, n, dtype=torch.float32, device=device)
    elif kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")
    return q, k, validate(q, k, stats=stats, scale=d_head**-0.5, **kw)


def _launch(kernel, dtype, d_head, n, features, precision):
    from . import triton_impl as T

    q, k, spec = scenario(kernel, dtype, d_head, n, features=features)
    row, col, _ = T.plan(q, k, spec, precision=precision)
    return col if kernel == "col" else row


def jit_source(launch, target):
    """``(ASTSource, options)`` exactly as ``JITFunction.run`` builds them for ``launch``'s arguments."""
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    backend = make_backend(target)
    try:
        from triton import knobs

        kwargs = dict(launch.kwargs)  # the options JITFunction.run adds before binding
        kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*launch.args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    except (AttributeError, TypeError, ImportError) as e:  # private Triton API (3.9): say so, no deep traceback
        import triton

        raise RuntimeError(f"triton {triton.__version__}: the JIT's binder API changed ({e}); triton_aot "
                           "reproduces the specialisation of Triton 3.9") from e
    return ASTSource(fn, signature, constexprs, attrs), options


def _usage(cubin: bytes) -> dict:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "k.cubin"
        f.write_bytes(cubin)
        out = subprocess.run([str(tool), "--dump-resource-usage", str(f)], capture_output=True, text=True,
                             check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if m is None:
        raise RuntimeError(f"cuobjdump printed no resource line:\n{out}")
    return dict(zip(("regs", "stack_bytes", "static_shared", "local_bytes"), map(int, m.groups())))


def _row(launch, kernel, dtype, d_head, n, arch, precision) -> dict:
    kw = launch.kwargs
    return dict(kernel=kernel, dtype=dtype, precision=kw["PREC"], d_head=d_head, n=n, arch=arch,
                block_m=kw["BLOCK_M"], block_n=kw["BLOCK_N"], num_warps=kw["num_warps"],
                num_stages=kw["num_stages"])


def compile_kernel(kernel: str, dtype: str, d_head: int, arch: int = 90, *, features: bool = True, n: int = 4096,
                   precision: str | None = None) -> dict:
    """Compile ``kernel`` for ``sm_{arch}`` as the JIT would for the model-shaped launch; return its resources.

    ``kernel``: 'row' (two passes: LSE, then statistics), 'row+lse' (the row LSE given: one pass) or 'col'.
    ``precision``: fp32 dot precision (fp32 only; default 'ieee').  ``features``: see ``scenario``.
    """
    import triton
    from triton.backends.compiler import GPUTarget

    launch = _launch(kernel, dtype, d_head, n, features, precision)
    target = GPUTarget("cuda", arch, 32)
    src, options = jit_source(launch, target)
    k = triton.compile(src, target=target, options=options.__dict__)
    return dict(**_row(launch, kernel, dtype, d_head, n, f"sm_{arch}", precision),
                dyn_shared=int(k.metadata.shared), **_usage(k.asm["cubin"]))


def launched_resources(kernel: str, dtype: str, d_head: int, *, n: int = 4096, features: bool = True,
                       precision: str | None = None, device="cuda") -> dict:
    """Run ``triton_stats`` on CUDA tensors of the ``scenario`` and read registers, spills and shared memory
    from the kernel that ran (``CompiledKernel.n_regs / n_spills / metadata.shared``).  Needs a GPU."""
    from . import triton_impl as T

    q, k, spec = scenario(kernel, dtype, d_head, n, features=features, device=device)
    ran: dict = {}
    T.triton_stats(q, k, spec, precision=precision, launched=ran)
    torch.cuda.synchronize(device)
    kern = ran["col" if kernel == "col" else "row"]
    launch = _launch(kernel, dtype, d_head, n, features, precision)
    cc = torch.cuda.get_device_capability(torch.device(device))
    return dict(**_row(launch, kernel, dtype, d_head, n, f"sm_{cc[0]}{cc[1]}", precision),
                dyn_shared=int(kern.metadata.shared), regs=int(kern.n_regs), stack_bytes=4 * int(kern.n_spills),
                source="launched", device_name=torch.cuda.get_device_name(torch.device(device)))


def _configs(a):
    for dt in a.dtypes:
        for prec in (a.fp32_precision if dt == "fp32" else [None]):
            for d in a.d_head:
                for n in a.n:
                    for kern in KERNELS:
                        yield kern, dt, d, n, prec


def _print(r):
    prec = r["precision"] or "-"
    print(f"{r['kernel']:7s} {r['dtype']:5s} {prec:6s} {r['d_head']:6d} {r['n']:6d} {r['arch']:6s} "
          f"{r['block_m']:>3d}x{r['block_n']:<3d} {r['num_warps']:2d} {r['regs']:5d} {r['stack_bytes']:8d} "
          f"{r['dyn_shared'] / 1024:8.1f}", flush=True)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, nargs="+", default=[90])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp32"], choices=sorted(DTYPES))
    p.add_argument("--fp32-precision", nargs="+", default=["ieee"], choices=["ieee", "tf32x3", "tf32"])
    p.add_argument("--d-head", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--n", type=int, nargs="+", default=[4096], help="sequence lengths (n %% 16 != 0 compiles "
                   "the JIT's unaligned variant)")
    p.add_argument("--gpu", action="store_true", help="launch on the current CUDA device and read the "
                   "resources from the kernels that ran (ignores --arch)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("triton_aot needs the real compiler: run it with TRITON_INTERPRET unset")
    if a.gpu and not torch.cuda.is_available():
        raise SystemExit("triton_aot --gpu needs a CUDA device; without one, drop --gpu (ahead-of-time compile)")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the JIT's default in Triton 3.9
    rows = []
    print(f"{'kernel':7s} {'dtype':5s} {'prec':6s} {'d_head':>6s} {'n':>6s} {'arch':6s} {'tile':>7s} {'nw':>2s} "
          f"{'regs':>5s} {'spill B':>8s} {'smem KB':>8s}")
    for arch in ([None] if a.gpu else a.arch):
        for kern, dt, d, n, prec in _configs(a):
            if a.gpu:
                r = launched_resources(kern, dt, d, n=n, precision=prec)
            else:
                r = compile_kernel(kern, dt, d, arch, n=n, precision=prec)
            rows.append(r)
            _print(r)
    if a.json:
        from interp.io import write_json

        write_json(a.json, rows, indent=1, sort_keys=False)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
