"""Compile the Triton statistics kernels for a GPU target without a GPU, and read their resource usage.

The CPU interpreter (``TRITON_INTERPRET=1``) runs kernels as NumPy code: it does not check what only the real
compiler checks (e.g. that a ``@triton.jit`` function reads no non-constexpr global) and says nothing about
registers. This module lowers each kernel variant the launcher uses (``triton_impl.launch_config``) to a
cubin for sm_80 / sm_90 with the ``ptxas`` bundled in the triton wheel and reads registers, stack (spills),
and shared memory with the bundled ``cuobjdump``.

    python -m interp.kernels.attention_stats.triton_aot            # table for sm_90, bf16/fp16/fp32 × d_head
    python -m interp.kernels.attention_stats.triton_aot --json out.json --arch 80 90

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

ROW_STATS = dict(ARGMAX=True, S_ENT=2, S_FIRST=3, S_KEYSET=4, S_RECENT=5, S_SELF=6, S_PREV=7, S_DIST=8, S_DUP=9,
                 S_IND=10, PASS2=True)
PTR_T = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}


def _signature(fn, consts: dict, ptrs: dict) -> dict:
    floats = {"scale", "softcap"}
    return {n: "constexpr" if n in consts else ptrs.get(n, "fp32" if n in floats else "i32") for n in fn.arg_names}


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


def compile_kernel(kernel: str, dtype: str, d_head: int, arch: int = 90, *, features: bool = True) -> dict:
    """Compile ``kernel`` for ``sm_{arch}`` with the launcher's tiles; return its resources.

    ``kernel``: 'row' (two passes: LSE, then statistics), 'row+lse' (the row LSE given: one pass) or 'col'.

    ``features``: padding, sliding window and softcap on (the heaviest variant); every row statistic is on.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import triton_impl as T

    bd, bm, bn, warps, stages = T.launch_config(d_head, dtype == "fp32")
    flags = dict(SOFTCAP=features, HAS_PAD=features, HAS_WIN=features, IEEE=dtype == "fp32", BLOCK_M=bm,
                 BLOCK_N=bn, BLOCK_D=bd)
    if kernel in ("row", "row+lse"):
        fn, consts = T._row_kernel, {**flags, **ROW_STATS, "PASS1": kernel == "row"}
        ptrs = dict(q_ptr=PTR_T[dtype], k_ptr=PTR_T[dtype], pad_ptr="*i8", tok_ptr="*i64", ks_ptr="*i8",
                    lse_in_ptr="*fp32", out_ptr="*fp32", amax_ptr="*i64")
    elif kernel == "col":
        fn, consts = T._col_kernel, {**flags, "ALOGA": True}
        ptrs = dict(q_ptr=PTR_T[dtype], k_ptr=PTR_T[dtype], pad_ptr="*i8", lse_ptr="*fp32", col_ptr="*fp32")
    else:
        raise ValueError(f"kernel must be 'row', 'row+lse' or 'col', got {kernel!r}")
    src = ASTSource(fn, _signature(fn, consts, ptrs), consts)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps, num_stages=stages))
    return dict(kernel=kernel, dtype=dtype, d_head=d_head, arch=f"sm_{arch}", block_m=bm, block_n=bn,
                num_warps=warps, num_stages=stages, dyn_shared=int(k.metadata.shared), **_usage(k.asm["cubin"]))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, nargs="+", default=[90])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp32"], choices=sorted(PTR_T))
    p.add_argument("--d-head", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("triton_aot needs the real compiler: run it with TRITON_INTERPRET unset")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    rows = []
    print(f"{'kernel':7s} {'dtype':5s} {'d_head':>6s} {'arch':6s} {'tile':>7s} {'regs':>5s} {'spill B':>8s} "
          f"{'smem KB':>8s}")
    for arch in a.arch:
        for dt in a.dtypes:
            for d in a.d_head:
                for kern in ("row", "row+lse", "col"):
                    r = compile_kernel(kern, dt, d, arch)
                    rows.append(r)
                    print(f"{kern:7s} {dt:5s} {d:6d} {r['arch']:6s} {r['block_m']:>3d}x{r['block_n']:<3d} "
                          f"{r['regs']:5d} {r['stack_bytes']:8d} {r['dyn_shared'] / 1024:8.1f}", flush=True)
    if a.json:
        from interp.io import write_json

        write_json(a.json, rows, indent=1, sort_keys=False)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
