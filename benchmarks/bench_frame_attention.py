"""Frame-sparse attention on a GPU: vidgen's fused kernels vs the formulations people run today.

    python -m benchmarks.bench_frame_attention [--dtype bf16] [--frames 8 16 24] [--modes sparse_causal first_frame]

Cases: Stable Diffusion 1.5 self-attention levels (N = 4096/1024/256/64 tokens per frame with
D = 40/80/160/160, 8 heads) and SDXL-like levels (N = 4096/1024 with D = 64, 10/20 heads),
batch 2 (CFG), F frames. Every implementation starts from the projection outputs
``(B*F, N, H*D)`` and ends in the layout ``to_out`` takes, so layout copies a method needs are
part of its time. Peers:

* ``sdpa_gather``: Tune-A-Video's formulation -- gather + concatenate K/V per frame, then
  PyTorch SDPA (best available backend);
* ``flex``: FlexAttention (compiled) over all frames with a block mask encoding the key table;
* ``xformers``: ``memory_efficient_attention`` on the gathered K/V, if xformers is installed;
* ``vidgen_pad64`` (D = 40 only): our kernel on inputs zero-padded to D = 64, i.e. what padding
  to the next power of two would cost, to show the effect of the 32 + 16 head-dim blocking;
* ``vidgen_fp8`` (fp16/bf16 on sm_90): ``precision="fp8"``, the scores on e4m3 tensor cores,
  forward only (inference), beside its error: every row has ``rel_l2_vs_fp32``, the relative L2
  distance of its output to vidgen's kernel on the same inputs in fp32 (exact IEEE products).

Reported per case and pass (fwd, bwd, fwd+bwd): median time, useful-work TFLOP/s (4 N M D per
head per query frame forward, M = distinct key tokens of that frame; backward 2.5x that), the
fraction of the bf16 matmul rate measured in this run, peak memory, speedups vs each peer, and
each peer's max deviation from vidgen's output. Results go to ``benchmarks/results/``.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from benchmarks import harness

SD15_LEVELS = [(4096, 40, 8), (1024, 80, 8), (256, 160, 8), (64, 160, 8)]   # (N, D, heads)
SDXL_LEVELS = [(4096, 64, 10), (1024, 64, 20)]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def key_table(mode: str, frames: int) -> list[list[int]]:
    from vidgen.kernels import frame_attention as kernels

    return {"sparse_causal": kernels.sparse_causal_key_frames, "first_frame": kernels.first_frame_key_frames,
            "full": kernels.full_key_frames}[mode](frames)


def useful_flops(batch, heads, tokens, head_dim, table) -> float:
    """Forward: 4 N M_f D per head per query frame, M_f = tokens of the distinct key frames of f."""
    return sum(4.0 * batch * heads * tokens * len(set(row)) * tokens * head_dim for row in table)


# ----------------------------------------------------------------------------------------------
# Implementations: each maps projection outputs q, k, v (B*F, N, H*D) to (B*F, N, H*D).
# ----------------------------------------------------------------------------------------------
def vidgen_impl(batch, frames, heads, head_dim, table, precision="auto"):
    from vidgen.ops import frame_attention

    def run(q, k, v):
        view = lambda t: t.view(batch, frames, -1, heads, head_dim)  # noqa: E731
        out = frame_attention(view(q), view(k), view(v), table, precision=precision)
        return out.view(batch * frames, -1, heads * head_dim)
    return run


FORWARD_ONLY = {"vidgen_fp8"}  # inference-only implementations: no backward to time


def vidgen_padded_impl(batch, frames, heads, head_dim, table, padded_dim=64):
    """Our kernel at D = 64 on zero-padded inputs: what rounding D up would cost (padding included)."""
    from vidgen.ops import frame_attention

    def run(q, k, v):
        pad = lambda t: F.pad(t.view(batch, frames, -1, heads, head_dim), (0, padded_dim - head_dim))  # noqa: E731
        out = frame_attention(pad(q), pad(k), pad(v), table, scale=head_dim ** -0.5)
        return out[..., :head_dim].reshape(batch * frames, -1, heads * head_dim)
    return run


def _gather(t, batch, frames, table):
    """(B*F, M, C) -> (B*F, K*M, C): the distinct key frames of every query frame, concatenated."""
    t = t.view(batch, frames, -1, t.shape[-1])
    width = max(len(set(row)) for row in table)
    rows = [sorted(set(row)) for row in table]
    rows = [row + row[:1] * (width - len(row)) for row in rows]  # equal widths (only ragged tables)
    cols = [torch.tensor([row[j] for row in rows], device=t.device) for j in range(width)]
    return torch.cat([t[:, c] for c in cols], dim=2).flatten(0, 1)


def sdpa_gather_impl(batch, frames, heads, head_dim, table):
    def run(q, k, v):
        heads_first = lambda t: t.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # noqa: E731
        keys, values = _gather(k, batch, frames, table), _gather(v, batch, frames, table)
        out = F.scaled_dot_product_attention(heads_first(q), heads_first(keys), heads_first(values))
        return out.transpose(1, 2).reshape(batch * frames, -1, heads * head_dim)
    return run


def xformers_impl(batch, frames, heads, head_dim, table):
    import xformers.ops as xops

    def run(q, k, v):
        split = lambda t: t.unflatten(-1, (heads, head_dim))  # noqa: E731
        keys, values = _gather(k, batch, frames, table), _gather(v, batch, frames, table)
        out = xops.memory_efficient_attention(split(q), split(keys), split(values))
        return out.reshape(batch * frames, -1, heads * head_dim)
    return run


def flex_impl(batch, frames, heads, head_dim, table, tokens, device):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    allowed = torch.zeros(frames, frames, dtype=torch.bool, device=device)
    for f, row in enumerate(table):
        allowed[f, list(set(row))] = True

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed[q_idx // tokens, kv_idx // tokens]

    length = frames * tokens
    block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=length, KV_LEN=length, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v):
        video = lambda t: t.view(batch, length, heads, head_dim).transpose(1, 2)  # noqa: E731
        out = compiled(video(q), video(k), video(v), block_mask=block_mask)
        return out.transpose(1, 2).reshape(batch * frames, tokens, heads * head_dim)
    return run


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------
def measure(fn, q, k, v, dout, forward_only: bool = False) -> dict:
    """Times of forward, backward (from a saved graph) and forward + backward; peak memory."""
    inputs = (q, k, v)
    row = {}
    with torch.no_grad():
        row.update({f"fwd_{key}": val for key, val in harness.time_ms(lambda: fn(*inputs)).items()})
        row["fwd_peak_bytes"] = harness.peak_memory_bytes(lambda: fn(*inputs))
    if forward_only:
        return row
    out = fn(*inputs)
    row.update({f"bwd_{key}": val for key, val in harness.time_ms(
        lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)).items()})
    del out

    def fwd_bwd():
        torch.autograd.grad(fn(*inputs), inputs, dout)
    row.update({f"fwdbwd_{key}": val for key, val in harness.time_ms(fwd_bwd).items()})
    row["fwdbwd_peak_bytes"] = harness.peak_memory_bytes(fwd_bwd)
    return row


def run_case(suite, mode, batch, frames, tokens, head_dim, heads, dtype, ceilings, peers) -> list[dict]:
    from vidgen.ops import use_backend

    device = torch.device("cuda")
    table = key_table(mode, frames)
    width = heads * head_dim
    gen = torch.Generator(device).manual_seed(0)
    qkv = torch.randn(batch * frames, tokens, 3 * width, device=device, dtype=dtype, generator=gen)
    q, k, v = (t.detach().requires_grad_(True) for t in qkv.split(width, dim=-1))   # projection views
    dout = torch.randn(batch * frames, tokens, width, device=device, dtype=dtype, generator=gen)
    flops = useful_flops(batch, heads, tokens, head_dim, table)
    impls = {"vidgen": vidgen_impl(batch, frames, heads, head_dim, table)}
    if head_dim == 40:
        impls["vidgen_pad64"] = vidgen_padded_impl(batch, frames, heads, head_dim, table)
    if dtype != torch.float32 and torch.cuda.get_device_capability(device) >= (9, 0):
        impls["vidgen_fp8"] = vidgen_impl(batch, frames, heads, head_dim, table, precision="fp8")
    if "sdpa_gather" in peers:
        impls["sdpa_gather"] = sdpa_gather_impl(batch, frames, heads, head_dim, table)
    if "flex" in peers:
        impls["flex"] = flex_impl(batch, frames, heads, head_dim, table, tokens, device)
    if "xformers" in peers:
        impls["xformers"] = xformers_impl(batch, frames, heads, head_dim, table)

    with use_backend("triton"), torch.no_grad():
        reference = impls["vidgen"](q, k, v).float()
        exact = impls["vidgen"](*(t.float() for t in (q, k, v)))  # fp32 inputs: exact IEEE products
    base = dict(suite=suite, mode=mode, batch=batch, frames=frames, tokens=tokens, head_dim=head_dim, heads=heads,
                dtype=str(dtype).removeprefix("torch."), fwd_gflop=flops / 1e9)
    rows = []
    for name, fn in impls.items():
        row = dict(base, impl=name)
        try:
            with use_backend("triton"):
                with torch.no_grad():
                    got = fn(q, k, v).float()
                    row["max_abs_diff_vs_vidgen"] = (got - reference).abs().max().item()
                    row["rel_l2_vs_fp32"] = ((got - exact).norm() / exact.norm()).item()
                row.update(measure(fn, q, k, v, dout, forward_only=name in FORWARD_ONLY))
        except Exception as exc:  # a peer that cannot run this shape is a result, not a crash
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            rows.append(row)
            continue
        for phase, work in (("fwd", flops), ("bwd", 2.5 * flops), ("fwdbwd", 3.5 * flops)):
            if f"{phase}_ms" not in row:
                continue
            rate = harness.throughput(work, row[f"{phase}_ms"], ceilings)
            row.update({f"{phase}_{field}": value for field, value in rate.items()})
        rows.append(row)
        torch.cuda.empty_cache()
    ours = rows[0]
    for row in rows[1:]:
        for phase in ("fwd", "bwd", "fwdbwd"):
            if f"{phase}_ms" in row and f"{phase}_ms" in ours:
                ours[f"{phase}_speedup_vs_{row['impl']}"] = row[f"{phase}_ms"] / ours[f"{phase}_ms"]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 24])
    parser.add_argument("--modes", nargs="+", default=["sparse_causal", "first_frame"],
                        choices=["sparse_causal", "first_frame", "full"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--peers", nargs="+", default=["sdpa_gather", "flex", "xformers"])
    parser.add_argument("--suites", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    args = parser.parse_args(argv)
    harness.require_cuda()
    peers = set(args.peers)
    if "xformers" in peers:
        try:
            import xformers.ops  # noqa: F401
        except ImportError:
            peers.discard("xformers")
            print("xformers is not installed: skipped")

    env = harness.environment()
    ceilings = harness.ceilings()
    print(f"{env.get('gpu')}: bf16 matmul {ceilings['bf16_matmul_tflops']:.0f} TFLOP/s, "
          f"copy {ceilings['copy_gbs']:.0f} GB/s")
    rows = []
    levels = {"sd15": SD15_LEVELS, "sdxl": SDXL_LEVELS}
    for suite in args.suites:
        for mode in args.modes:
            for frames in args.frames:
                for tokens, head_dim, heads in levels[suite]:
                    case = run_case(suite, mode, args.batch, frames, tokens, head_dim, heads, DTYPES[args.dtype],
                                    ceilings, peers)
                    rows.extend(case)
                    ours = case[0]
                    print(f"{suite} {mode:13s} F={frames:2d} N={tokens:4d} D={head_dim:3d} H={heads:2d}: "
                          + ", ".join(f"{p} {ours.get(p + '_ms', float('nan')):.3f} ms "
                                      f"{ours.get(p + '_tflops', float('nan')):.0f} TF/s" for p in ("fwd", "fwdbwd"))
                          + "".join(f" | x{ours[key]:.2f} {key.removeprefix('fwd_speedup_vs_')}"
                                    for key in ours if key.startswith("fwd_speedup_vs_")))
    stem = harness.write_results(f"frame_attention-{args.dtype}", rows, env, ceilings)
    ours = [r for r in rows if r["impl"] == "vidgen" and "fwd_speedup_vs_sdpa_gather" in r]
    for r in ours:
        r["label"] = f"{r['suite']} {r['mode']} F{r['frames']} N{r['tokens']} D{r['head_dim']}"
    if ours:
        harness.plot_speedups(stem, ours, label_key="label", speedup_key="fwdbwd_speedup_vs_sdpa_gather",
                              title=f"frame attention fwd+bwd speedup vs gather+SDPA ({env.get('gpu')})")
    print(f"wrote {stem}.csv / .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
