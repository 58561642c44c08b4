"""Benchmark the selective scan on CPU: ours (numba) vs a sequential loop vs mambapy's pscan.

All three compute ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = C_t h_t + D u_t``
with gradients w.r.t. every input (forward + backward of ``<y, w>`` for a fixed ``w``), in
one process, each warmed up first, timing the median of ``--repeats`` runs interleaved
round-robin (``--ours-factor`` times as many for ours, whose runs are short):

- ``ours``: :func:`neurossm_app.model.scan.selective_scan` with ``backend="cpu"``;
- ``loop``: a well-written sequential loop over ``unbind`` slices of the precomputed
  ``exp(dt A)`` and ``dt B u`` tensors (its autograd backward is linear in L);
- ``mambapy``: ``mambapy.pscan.pscan`` applied as ``mambapy``'s ``selective_scan`` does,
  with inputs already in its (B, L, D) layout (transposes are not timed).

When CUDA and ``mamba_ssm`` are available, ``mamba_ssm``'s ``selective_scan_fn`` is also
compared with our ``torch`` back end on the GPU (error and speed); otherwise the reason is
printed.

Usage::

    .venv/bin/python benchmarks/bench_scan.py --repeats 5 --json bench_scan.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from einops import rearrange

from neurossm_app.model.scan import selective_scan, selective_scan_torch


def make_inputs(batch: int, d_inner: int, d_state: int, length: int, device="cpu", seed=0):
    """Mamba-like inputs in the (B, D, L) layout of ``selective_scan``."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, d_inner, length, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(batch, d_inner, length, generator=g) - 3)
    A = -torch.exp(torch.randn(d_inner, d_state, generator=g) * 0.5)
    B = torch.randn(batch, d_state, length, generator=g)
    C = torch.randn(batch, d_state, length, generator=g)
    D = torch.randn(d_inner, generator=g)
    w = torch.randn(batch, d_inner, length, generator=g)
    return {k: v.to(device) for k, v in dict(u=u, delta=delta, A=A, B=B, C=C, D=D, w=w).items()}


def scan_ours(u, delta, A, B, C, D):
    return selective_scan(u, delta, A, B, C, D, backend="cpu")  # (B, D, L)


def scan_loop(u, delta, A, B, C, D):
    """Sequential reference: precompute, then step over ``unbind`` slices."""
    delta_a = torch.exp(torch.einsum("bdl,dn->lbdn", delta, A))  # (L, B, D, N)
    delta_bu = torch.einsum("bdl,bnl,bdl->lbdn", delta, B, u)  # (L, B, D, N)
    c_t = rearrange(C, "b n l -> l b n")
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, D, N)
    ys = []
    for da, dbu, c in zip(delta_a.unbind(0), delta_bu.unbind(0), c_t.unbind(0), strict=True):
        h = da * h + dbu
        ys.append(torch.einsum("bdn,bn->bd", h, c))
    return torch.stack(ys, dim=-1) + u * D[:, None]  # (B, D, L)


def scan_mambapy(x, delta, A, B, C, D):
    """``mambapy``'s selective_scan; x, delta: (B, L, D), B, C: (B, L, N)."""
    from mambapy.pscan import pscan

    delta_a = torch.exp(delta.unsqueeze(-1) * A)  # (B, L, D, N)
    bx = delta.unsqueeze(-1) * B.unsqueeze(2) * x.unsqueeze(-1)  # (B, L, D, N)
    hs = pscan(delta_a, bx)  # (B, L, D, N)
    return (hs @ C.unsqueeze(-1)).squeeze(3) + D * x  # (B, L, D)


def to_mambapy_layout(inp: dict) -> dict:
    out = {k: inp[k] for k in ("A", "D")}
    for k, pattern in (
        ("u", "b d l -> b l d"),
        ("delta", "b d l -> b l d"),
        ("B", "b n l -> b l n"),
        ("C", "b n l -> b l n"),
        ("w", "b d l -> b l d"),
    ):
        out[k] = rearrange(inp[k], pattern).contiguous()
    return out


def run_fwd_bwd(fn: Callable, inp: dict, sync: bool = False) -> tuple[float, torch.Tensor]:
    """Seconds of one forward + backward, and its output.

    ``sync``: wait for the GPU before reading the clock.
    """
    leaves = [inp[k].detach().clone().requires_grad_() for k in ("u", "delta", "A", "B", "C", "D")]
    t0 = time.perf_counter()
    out = fn(*leaves)
    (out * inp["w"]).sum().backward()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out.detach()


def time_interleaved(methods: dict, repeats: int, ours_factor: int, sync: bool = False):
    """Median seconds per method, runs interleaved round-robin after one warm-up each.

    Interleaving spreads any background load over all methods alike; the short method
    ``"ours"`` runs ``ours_factor`` times per round so its median rests on more samples.

    Parameters
    ----------
    methods : dict of str to (callable, inputs)

    Returns
    -------
    dict of str to (median seconds, output of the last run)
    """
    times = {name: [] for name in methods}
    outputs = {}
    for name, (fn, inp) in methods.items():
        outputs[name] = run_fwd_bwd(fn, inp, sync)[1]  # warm-up (and JIT)
    for _ in range(repeats):
        for name, (fn, inp) in methods.items():
            for _ in range(ours_factor if name == "ours" else 1):
                seconds, outputs[name] = run_fwd_bwd(fn, inp, sync)
                times[name].append(seconds)
    return {name: (statistics.median(times[name]), outputs[name]) for name in methods}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def cuda_comparison(args) -> dict:
    """mamba_ssm's selective_scan_fn vs ours on the GPU, or the reason it cannot run."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device visible to torch"}
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as err:  # noqa: BLE001 - any import failure means: skip, say why
        return {"skipped": f"mamba_ssm does not import ({type(err).__name__}: {err})"}
    rows = []
    for length in args.lengths:
        inp = make_inputs(args.batch, args.d_inner, args.d_state, length, device="cuda")

        def theirs(u, delta, A, B, C, D):
            return selective_scan_fn(u, delta, A, B, C, D)

        def ours_torch(u, delta, A, B, C, D):
            return selective_scan_torch(u, delta, A, B, C, D)

        res = time_interleaved(
            {"mamba_ssm": (theirs, inp), "ours_torch": (ours_torch, inp)}, args.repeats, 1, sync=True
        )
        (t_theirs, out_theirs), (t_ours, out_ours) = res["mamba_ssm"], res["ours_torch"]
        rows.append(
            {
                "length": length,
                "mamba_ssm_s": t_theirs,
                "ours_torch_s": t_ours,
                "max_rel_err": rel_err(out_ours, out_theirs),
            }
        )
    return {"rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (median)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[150, 600, 1200])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--d-inner", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument(
        "--ours-factor", type=int, default=5, help="runs of ours per round (it is short, so more samples)"
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON here")
    args = parser.parse_args(argv)

    import numba

    meta = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "batch": args.batch,
        "d_inner": args.d_inner,
        "d_state": args.d_state,
        "repeats": args.repeats,
        "ours_factor": args.ours_factor,
    }
    print(
        f"# selective scan, forward + backward, CPU ({meta['torch_threads']} threads), "
        f"torch {meta['torch']}, numba {meta['numba']}; batch {args.batch}, "
        f"d_inner {args.d_inner}, d_state {args.d_state}; median of {args.repeats} "
        f"interleaved runs ({args.repeats * args.ours_factor} for ours)\n"
    )
    rows = []
    for length in args.lengths:
        inp = make_inputs(args.batch, args.d_inner, args.d_state, length)
        res = time_interleaved(
            {
                "ours": (scan_ours, inp),
                "loop": (scan_loop, inp),
                "mambapy": (scan_mambapy, to_mambapy_layout(inp)),
            },
            args.repeats,
            args.ours_factor,
        )
        (t_ours, y_ours), (t_loop, y_loop), (t_mpy, y_mpy) = (res["ours"], res["loop"], res["mambapy"])
        rows.append(
            {
                "length": length,
                "ours_s": t_ours,
                "loop_s": t_loop,
                "mambapy_s": t_mpy,
                "err_ours_vs_loop": rel_err(y_ours, y_loop),
                "err_mambapy_vs_loop": rel_err(rearrange(y_mpy, "b l d -> b d l"), y_loop),
            }
        )
        print(f"L={length}: done", file=sys.stderr)

    print(
        "| L | loop (s) | mambapy pscan (s) | ours (s) | loop / ours | mambapy / ours "
        "| max rel err ours vs loop |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['length']} | {r['loop_s']:.3f} | {r['mambapy_s']:.3f} | {r['ours_s']:.3f} "
            f"| {r['loop_s'] / r['ours_s']:.1f}x | {r['mambapy_s'] / r['ours_s']:.1f}x "
            f"| {r['err_ours_vs_loop']:.1e} |"
        )
    growth = []
    for short, long in zip(rows, rows[1:], strict=False):
        ratio = long["ours_s"] / short["ours_s"]
        growth.append({"from": short["length"], "to": long["length"], "ratio": ratio})
        print(
            f"\nours({long['length']}) / ours({short['length']}) = {ratio:.2f} "
            f"(length ratio {long['length'] / short['length']:.2f})"
        )

    cuda = cuda_comparison(args)
    if "skipped" in cuda:
        print(f"\nCUDA comparison with mamba_ssm skipped: {cuda['skipped']}")
    else:
        print("\n| L (GPU) | mamba_ssm (s) | ours, torch back end (s) | max rel err |")
        print("|---:|---:|---:|---:|")
        for r in cuda["rows"]:
            print(
                f"| {r['length']} | {r['mamba_ssm_s']:.4f} | {r['ours_torch_s']:.4f} "
                f"| {r['max_rel_err']:.1e} |"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "cpu": rows, "growth": growth, "cuda": cuda}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
