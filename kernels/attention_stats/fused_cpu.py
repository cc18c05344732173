"""Fused CPU path: torch matmul for each logits tile + one C sweep per row for every statistic.

Same formulas as ``reference.py`` (the spec) and ``chunked.py``; the difference is only where the work happens.
The chunked path reduces a tile with ~10 torch ops, each a full pass over the tile in memory; here

    S = (scale q) k^T                       one torch.matmul per (query strip, key tile), GQA views, fp32
    fused_cpu.c, per row of S, in cache:    softcap, masks, m = max_j s, argmax (earliest index on ties),
                                            A = exp(s - lse)  (lse from SDPA's flash kernel, or computed here
                                            when the tile holds the whole row, or by an online pass first),
                                            entropy = sum_j A (lse - s), column sums, the band statistics
                                            (first-k, recent window, distance, self, previous token) only over
                                            their keys, duplicate / induction by token comparison

so each logit is written once by the matmul and read about twice.  Inside a forward pass the flash SDPA op
already returns the row LSE, so tiles can be small 2-D blocks (``q_tile`` x ``k_tile``) that stay in cache.

The C source sits beside this file; it is compiled on first use with the system C compiler into
``$INTERP_CACHE_DIR/kernels`` (default ``~/.cache/interp/kernels``; atomic rename, keyed by source, compiler
and CPU) and loaded with ctypes.  ``available()`` says whether that worked; ``impl="auto"`` then uses this path
on CPU for float32/16 inputs and falls back to ``chunked`` otherwise (no compiler, ``INTERP_FUSED_CPU=0``,
float64 inputs, or ``topk``).  Parity: tests/kernels/test_fused_cpu.py; speed: benchmarks/attention_stats*.py.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ._spec import StatsSpec, finalize, row_valid

SUPPORTED = frozenset({
    "lse", "max", "entropy", "entropy_norm", "argmax", "mass_first", "mass_keyset", "mass_recent", "mass_self",
    "attn_distance", "prev_token", "duplicate", "induction", "col_sum", "col_alpha", "col_entropy"})
NEG = -1.0e30
_FLAGS = {"entropy": 1, "entropy_norm": 1, "col_sum": 2, "col_alpha": 2, "col_entropy": 2 | 4, "max": 8,
          "argmax": 8, "mass_first": 16, "mass_keyset": 32, "mass_recent": 64, "mass_self": 128,
          "prev_token": 256, "attn_distance": 512, "duplicate": 1024, "induction": 2048}
F_LSE_INLINE, F_LSE_PASS, F_WRITE_P = 4096, 8192, 16384
_ROW_ACC = ("entropy", "mass_first", "mass_keyset", "mass_recent", "mass_self", "prev_token", "attn_distance",
            "duplicate", "induction")
_ROW_FIELDS = ("ent", "first", "kset", "recent", "self_", "prev", "dist", "dup", "ind")
_TILE_ELEMS = 2**22  # logits per tile (16 MB): tall enough strips for efficient matmuls, still in L3-ish

_P = ctypes.c_void_p
_I = ctypes.c_int64


class _Args(ctypes.Structure):
    _fields_ = ([(n, _I) for n in ("BH", "H", "T", "W", "Q", "N", "q0", "a0", "j0", "window", "sink_k",
                                   "recent_w", "dist_cap", "flags", "nthreads")]
                + [("softcap", ctypes.c_double)]
                + [(n, _P) for n in ("S", "lse", "rl", "kpm", "keyset", "tok", "mx", "amax", *_ROW_FIELDS,
                                     "col", "calog", "colbuf", "pbuf")])


_LIB: ctypes.CDLL | None = None
_ERROR: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("INTERP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "interp")
    return Path(root) / "kernels"


def _build(src: Path) -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    ver = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    cpu = ""
    try:
        cpu = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        cpu = platform.processor()
    cflags = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC"]
    key = hashlib.sha256("\n".join([src.read_text(), ver, cpu, " ".join(cflags)]).encode()).hexdigest()[:16]
    out = _cache_dir() / f"fused_cpu_{key}.so"
    if out.exists():
        return out
    from interp.io import atomic_path  # standard library only: keeps interp.kernels importable on its own

    out.parent.mkdir(parents=True, exist_ok=True)
    # atomic: a concurrent build or a kill never leaves a half-written library
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp, atomic_path(out, mode=0o777) as so:
        obj = Path(tmp) / "k.o"
        # -ffast-math only when compiling: linking with it would pull in crtfastmath (process-wide flush-to-zero)
        for cmd in ([cc, *cflags, "-c", str(src), "-o", str(obj)],
                    [cc, "-shared", "-fopenmp", str(obj), "-o", str(so), "-lm"]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"compiling the fused CPU kernel failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return out


def load() -> ctypes.CDLL:
    """The compiled kernel (built on first call); raises RuntimeError saying why when it cannot be built."""
    global _LIB, _ERROR
    if _LIB is not None:
        return _LIB
    if os.environ.get("INTERP_FUSED_CPU", "1") == "0":
        raise RuntimeError("the fused CPU kernel is disabled by INTERP_FUSED_CPU=0")
    if _ERROR is not None:
        raise RuntimeError(_ERROR)
    try:
        lib = ctypes.CDLL(str(_build(Path(__file__).with_suffix(".c"))))
        lib.interp_tile_stats.argtypes = [ctypes.POINTER(_Args)]
        lib.interp_tile_stats.restype = ctypes.c_int
        if lib.interp_abi_version() != 1:
            raise RuntimeError("stale fused CPU kernel library (ABI mismatch); delete ~/.cache/interp/kernels")
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _ERROR = f"fused CPU kernel unavailable: {e}"
        raise RuntimeError(_ERROR) from e
    _LIB = lib
    return lib


def available() -> bool:
    try:
        load()
    except RuntimeError:
        return False
    return True


def supports(q: torch.Tensor, k: torch.Tensor, spec: StatsSpec) -> bool:
    """True when this path handles the call (CPU, not float64, no top-k) and the kernel is available."""
    return (q.device.type == "cpu" and torch.float64 not in (q.dtype, k.dtype) and spec.stats <= SUPPORTED
            and available())


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


@torch.no_grad()
def fused_stats(q: torch.Tensor, k: torch.Tensor, spec: StatsSpec, *, v: torch.Tensor | None = None,
                q_tile: int | None = None, k_tile: int | None = None, tile_elems: int = _TILE_ELEMS):
    """Statistics of ``spec`` from q [batch, head, query_pos, d_head], k [batch, kv_head, key_pos, d_head].

    Returns row stats [batch, head, query_pos] and column stats [batch, head, key_pos] in float32 (as
    ``chunked_stats``).  ``q_tile``/``k_tile`` override the tile shape (tests use them to force many tiles).
    With ``v`` [batch, kv_head, key_pos, d_head] it returns ``(out, stats)``: also the attention output
    ``out = A @ v`` [batch, head, query_pos, d_head] (float32; 0 for padding rows) from the same tiles, so a
    forward pass needs no separate SDPA call.
    """
    if not spec.stats <= SUPPORTED:
        raise ValueError(f"the fused CPU path does not compute {sorted(spec.stats - SUPPORTED)}; use impl='chunked'")
    lib = load()
    B, H, Q, D = q.shape
    KV, N = k.shape[1], k.shape[2]
    G, st, off, dev = H // KV, spec.stats, spec.query_offset, q.device
    pre = spec.scale / spec.softcap if spec.softcap is not None else spec.scale
    qg = (q.float() * pre).view(B, KV, G, Q, D)
    kT = k.float().transpose(-1, -2).contiguous()  # [batch, kv_head, d_head, key_pos]
    if v is not None:
        if v.shape != k.shape:
            raise ValueError(f"v must have k's shape {tuple(k.shape)} ([batch, kv_head, key_pos, d_head]), "
                             f"got {tuple(v.shape)}")
        v3 = v.float().contiguous().view(B * KV, N, D)
        out_v = torch.empty(B, KV, G, Q, D, dtype=torch.float32, device=q.device)
    nt = max(1, torch.get_num_threads())
    f32 = dict(dtype=torch.float32, device=dev)

    def width(a0, T):  # keys a strip of T rows starting at absolute position a0 may attend
        lo = 0 if spec.window is None else max(0, a0 - spec.window + 1)
        return a0 + T - lo

    hint = spec.row_lse is not None
    lse = (spec.row_lse.float().contiguous().clone() if hint else torch.full((B, H, Q), NEG, **f32))
    if hint:
        qt_fix = q_tile or max(1, min(128, tile_elems // (B * H * (k_tile or 512))))
        kt_fix = k_tile or 512
    else:
        qt_fix, kt_fix = q_tile, k_tile
    # strips: (q0, T); a strip is "single" when one key tile covers all its allowed keys
    strips, q0 = [], 0
    while q0 < Q:
        if qt_fix:
            T = min(qt_fix, Q - q0)
        else:
            T = 256
            while T > 1 and B * H * T * width(q0 + off, T) > tile_elems:
                T //= 2
            T = min(T, Q - q0)
        strips.append((q0, T))
        q0 += T
    plan = []  # (q0, T, [(j0, j1), ...])
    for q0, T in strips:
        a0, a1 = q0 + off, q0 + off + T
        lo = 0 if spec.window is None else max(0, a0 - spec.window + 1)
        kt = kt_fix or max(1, tile_elems // (B * H * T))
        plan.append((q0, T, [(j, min(a1, j + kt)) for j in range(lo, a1, kt)]))
    Wmax = max(j1 - j0 for _, _, tiles in plan for j0, j1 in tiles)
    buf = torch.empty(max(B * H * T * (j1 - j0) for _, T, tiles in plan for j0, j1 in tiles), **f32)
    need_col = bool(st & {"col_sum", "col_alpha", "col_entropy"})
    colbuf = torch.empty(nt * 2 * B * H * Wmax, **f32) if need_col else None
    pbuf = torch.empty(nt * Wmax, **f32)
    ostrip = torch.empty(B * H * max(T for _, T, _ in plan) * D, **f32) if v is not None else None
    acc = {name: torch.zeros(B, H, Q, **f32) for name in _ROW_ACC if name in st or (name == "entropy" and
                                                                                      "entropy_norm" in st)}
    mx = torch.full((B, H, Q), NEG, **f32)
    amax = torch.full((B, H, Q), -1, dtype=torch.int64, device=dev)
    col = torch.zeros(B, H, N, **f32) if need_col else None
    calog = torch.zeros(B, H, N, **f32) if "col_entropy" in st else None
    rl = torch.zeros(B, H, Q, **f32)
    kpm = spec.key_padding_mask.to(torch.uint8).contiguous() if spec.key_padding_mask is not None else None
    kset = spec.key_set.to(torch.uint8).contiguous() if spec.key_set is not None else None
    tok = spec.token_ids.contiguous() if spec.token_ids is not None else None
    flags = 0
    for name in st:
        flags |= _FLAGS.get(name, 0)

    a = _Args(BH=B * H, H=H, Q=Q, N=N, window=spec.window or 0, sink_k=spec.sink_k, recent_w=spec.recent_w,
              dist_cap=-1 if spec.distance_cap is None else spec.distance_cap, nthreads=nt,
              softcap=spec.softcap or 0.0, S=_ptr(buf), lse=_ptr(lse), rl=_ptr(rl), kpm=_ptr(kpm),
              keyset=_ptr(kset), tok=_ptr(tok), mx=_ptr(mx), amax=_ptr(amax), col=_ptr(col), calog=_ptr(calog),
              colbuf=_ptr(colbuf), pbuf=_ptr(pbuf),
              **{f: _ptr(acc.get(n)) for n, f in zip(_ROW_ACC, _ROW_FIELDS)})
    ap = ctypes.byref(a)

    def run_tile(q0, T, j0, j1, fl, first=True):
        W = j1 - j0
        S = buf[: B * H * T * W].view(B, KV, G * T, W)
        torch.matmul(qg[:, :, :, q0 : q0 + T].reshape(B, KV, G * T, D), kT[..., j0:j1], out=S)
        if v is not None and not fl & F_LSE_PASS:
            fl |= F_WRITE_P
        a.T, a.W, a.q0, a.a0, a.j0, a.flags = T, W, q0, q0 + off, j0, fl
        lib.interp_tile_stats(ap)
        if fl & F_WRITE_P:  # S now holds A (0 where masked): out rows += A @ v
            o = ostrip[: B * KV * G * T * D].view(B * KV, G * T, D)
            if first:
                torch.bmm(S.view(B * KV, G * T, W), v3[:, j0:j1], out=o)
            else:
                o.baddbmm_(S.view(B * KV, G * T, W), v3[:, j0:j1])

    for q0, T, tiles in plan:
        if not hint and len(tiles) == 1:
            run_tile(q0, T, *tiles[0], flags | F_LSE_INLINE)
        else:
            if not hint:  # online LSE over the key tiles first, then the statistics pass
                for j0, j1 in tiles:
                    run_tile(q0, T, j0, j1, F_LSE_PASS)
                sl = lse[:, :, q0 : q0 + T]
                sl.copy_(sl + torch.log(rl[:, :, q0 : q0 + T].clamp_min(1e-30)))
            for n_t, (j0, j1) in enumerate(tiles):
                run_tile(q0, T, j0, j1, flags, first=n_t == 0)
        if v is not None:
            out_v[:, :, :, q0 : q0 + T] = ostrip[: B * KV * G * T * D].view(B, KV, G, T, D)

    valid = row_valid(spec, B, Q, dev)[:, None, :]
    out = {}
    for name in _ROW_ACC:
        if name in acc and name in st:
            out[name] = acc[name]
    if "entropy" in acc:
        out["entropy" if "entropy" in st else "_entropy"] = torch.where(valid, acc["entropy"], 0.0).clamp(min=0)
    if "lse" in st:
        out["lse"] = torch.where(valid, lse, -torch.inf)
    if "max" in st:
        out["max"] = torch.where(valid, mx, -torch.inf)
    if "argmax" in st:
        out["argmax"] = torch.where(valid, amax, -1)
    if need_col:
        out["col_sum" if "col_sum" in st else "_col_sum"] = col
    if calog is not None:
        out["_col_alogA"] = calog
    res = finalize(out, spec, B, Q, N, dev)
    return res if v is None else (out_v.view(B, H, Q, D), res)
