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

When CUDA and mamba-ssm's kernels are available, ``mamba_ssm``'s ``selective_scan_fn`` is also
compared with our ``torch`` back end on the GPU, with everything the Mamba block passes (gate
``z``, skip ``D``, ``delta_bias`` and the softplus in the kernel): speed, and the error of the
output and of every gradient; otherwise the reason is printed (the import error, once).

Usage::

    .venv/bin/python benchmarks/bench_scan.py --repeats 5 --json bench_scan.json
    .venv/bin/python benchmarks/bench_scan.py --methods ours --lengths 600 1200   # ours only
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

from neurossm_app.model.backends import cuda_backend_status
from neurossm_app.model.scan import selective_scan, selective_scan_torch

#: The arguments differentiated: the recurrence alone, or everything the Mamba block passes.
BARE = ("u", "delta", "A", "B", "C", "D")
FULL = (*BARE, "z", "delta_bias")


def make_inputs(batch: int, d_inner: int, d_state: int, length: int, device="cpu", seed=0):
    """Mamba-like inputs in the (B, D, L) layout of ``selective_scan``.

    ``delta`` is a step size already (softplus of a normal - 3); ``delta_raw`` and
    ``delta_bias`` are the pre-softplus pair the Mamba block passes with ``z``.
    """
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, d_inner, length, generator=g)
    delta_raw = torch.randn(batch, d_inner, length, generator=g)
    delta = torch.nn.functional.softplus(delta_raw - 3)
    A = -torch.exp(torch.randn(d_inner, d_state, generator=g) * 0.5)
    B = torch.randn(batch, d_state, length, generator=g)
    C = torch.randn(batch, d_state, length, generator=g)
    D = torch.randn(d_inner, generator=g)
    z = torch.randn(batch, d_inner, length, generator=g)
    delta_bias = torch.randn(d_inner, generator=g) * 0.5 - 3
    w = torch.randn(batch, d_inner, length, generator=g)
    values = dict(u=u, delta=delta, delta_raw=delta_raw, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, w=w)
    return {k: v.to(device) for k, v in values.items()}


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


def run_fwd_bwd(fn: Callable, inp: dict, sync: bool = False, keys=BARE) -> tuple[float, torch.Tensor]:
    """Seconds of one forward + backward of ``<fn(*inp[keys]), w>``, and the output.

    ``sync``: wait for the GPU before reading the clock. The gradients are left on the
    returned output's ``grads`` attribute (a dict of ``keys``).
    """
    leaves = [inp[k].detach().clone().requires_grad_() for k in keys]
    t0 = time.perf_counter()
    out = fn(*leaves)
    (out * inp["w"]).sum().backward()
    if sync:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    result = out.detach()
    result.grads = {k: leaf.grad for k, leaf in zip(keys, leaves, strict=True)}
    return seconds, result


def time_interleaved(methods: dict, repeats: int, ours_factor: int, sync: bool = False, keys=BARE):
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
        outputs[name] = run_fwd_bwd(fn, inp, sync, keys)[1]  # warm-up (and JIT)
    for _ in range(repeats):
        for name, (fn, inp) in methods.items():
            for _ in range(ours_factor if name == "ours" else 1):
                seconds, outputs[name] = run_fwd_bwd(fn, inp, sync, keys)
                times[name].append(seconds)
    return {name: (statistics.median(times[name]), outputs[name]) for name in methods}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def cuda_comparison(args) -> dict:
    """mamba_ssm's selective_scan_fn vs our torch back end on the GPU, or why it cannot run.

    Both get the Mamba block's full call (``z``, ``D``, ``delta_bias``, softplus in the scan),
    in float32; the errors are of the output and of every gradient, relative to ours.
    """
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device visible to torch"}
    status = cuda_backend_status()
    if not status.available:
        return {"skipped": status.describe()}
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def theirs(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

    def ours_torch(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

    rows = []
    for length in args.lengths:
        inp = make_inputs(args.batch, args.d_inner, args.d_state, length, device="cuda")
        inp = {**inp, "delta": inp["delta_raw"]}
        res = time_interleaved(
            {"mamba_ssm": (theirs, inp), "ours_torch": (ours_torch, inp)},
            args.repeats,
            1,
            sync=True,
            keys=FULL,
        )
        (t_theirs, out_theirs), (t_ours, out_ours) = res["mamba_ssm"], res["ours_torch"]
        rows.append(
            {
                "length": length,
                "mamba_ssm_s": t_theirs,
                "ours_torch_s": t_ours,
                "max_rel_err": rel_err(out_theirs, out_ours),
                "grad_rel_err": {k: rel_err(out_theirs.grads[k], out_ours.grads[k]) for k in FULL},
            }
        )
    return {"rows": rows, "kernels": status.describe()}


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
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=["ours", "loop", "mambapy"],
        default=["ours", "loop", "mambapy"],
        help="CPU methods timed (default: all three; ratios need ours and the other)",
    )
    parser.add_argument("--skip-cuda", action="store_true", help="do not run the GPU comparison")
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
        every = {
            "ours": (scan_ours, inp),
            "loop": (scan_loop, inp),
            "mambapy": (scan_mambapy, to_mambapy_layout(inp)),
        }
        res = time_interleaved({m: every[m] for m in args.methods}, args.repeats, args.ours_factor)
        row = {"length": length, **{f"{m}_s": res[m][0] for m in args.methods}}
        if "loop" in res:
            y_loop = res["loop"][1]
            if "ours" in res:
                row["err_ours_vs_loop"] = rel_err(res["ours"][1], y_loop)
            if "mambapy" in res:
                row["err_mambapy_vs_loop"] = rel_err(rearrange(res["mambapy"][1], "b l d -> b d l"), y_loop)
        rows.append(row)
        print(f"L={length}: done", file=sys.stderr)

    def cell(row, key, fmt):
        return format(row[key], fmt) if key in row else "n/a"

    def ratio(row, other):
        return (
            f"{row[f'{other}_s'] / row['ours_s']:.1f}x" if f"{other}_s" in row and "ours_s" in row else "n/a"
        )

    print(
        "| L | loop (s) | mambapy pscan (s) | ours (s) | loop / ours | mambapy / ours "
        "| max rel err ours vs loop |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['length']} | {cell(r, 'loop_s', '.3f')} | {cell(r, 'mambapy_s', '.3f')} "
            f"| {cell(r, 'ours_s', '.3f')} | {ratio(r, 'loop')} | {ratio(r, 'mambapy')} "
            f"| {cell(r, 'err_ours_vs_loop', '.1e')} |"
        )
    growth = []
    for short, long in zip(rows, rows[1:], strict=False):
        if "ours_s" not in short:
            break
        growth_ratio = long["ours_s"] / short["ours_s"]
        growth.append({"from": short["length"], "to": long["length"], "ratio": growth_ratio})
        print(
            f"\nours({long['length']}) / ours({short['length']}) = {growth_ratio:.2f} "
            f"(length ratio {long['length'] / short['length']:.2f})"
        )

    cuda = {"skipped": "--skip-cuda"} if args.skip_cuda else cuda_comparison(args)
    if "skipped" in cuda:
        print(f"\nCUDA comparison with mamba_ssm skipped: {cuda['skipped']}")
    else:
        print(f"\nGPU, {cuda['kernels']}; float32, z, D, delta_bias and softplus in the scan\n")
        print("| L (GPU) | mamba_ssm (s) | ours, torch back end (s) | max rel err out | max rel err grads |")
        print("|---:|---:|---:|---:|---:|")
        for r in cuda["rows"]:
            worst = max(r["grad_rel_err"], key=r["grad_rel_err"].get)
            print(
                f"| {r['length']} | {r['mamba_ssm_s']:.4f} | {r['ours_torch_s']:.4f} "
                f"| {r['max_rel_err']:.1e} | {r['grad_rel_err'][worst]:.1e} ({worst}) |"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "cpu": rows, "growth": growth, "cuda": cuda}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
