#!/usr/bin/env python3
"""Times the shapes of `lynx-worker gpu-bench --json` through PyTorch SDPA (cuDNN and flash
backends) in the same session, and prints one table: ours vs the peers. Projection rows are
compared with PyTorch's unfused (frame add +) LayerNorm + linear and the linear alone.

Usage: sdpa_bench.py OURS.jsonl REPORT.md [--iters N]
Rates use the same conventions as ours: TFLOP/s = 4*B*H*Sq*Skv*D (halved when causal) / time;
GB/s = bytes of Q, K, V read once and O written once / time. PyTorch decode reads a contiguous
KV cache (ours is paged).
"""
import json
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, sets, iters):
    for i in range(3):
        fn(*sets[i % len(sets)])
    torch.cuda.synchronize()
    times = []
    for i in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        args = sets[i % len(sets)]
        start.record()
        fn(*args)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def rate(row, p, ms):
    if row["unit"] == "TFLOP/s":
        flops = 4.0 * p["batch"] * p["heads"] * p["seq_q"] * p["seq_kv"] * p["head_dim"]
        if p["causal"]:
            flops /= 2
        return flops / ms / 1e9
    q = p["batch"] * p["heads"] * p["seq_q"] * p["head_dim"]
    kv = p["batch"] * p["heads"] * p["seq_kv"] * p["head_dim"]
    return 2.0 * (2 * q + 2 * kv) / ms / 1e6


def peer(row, backend, iters):
    p = row["problem"]
    b, h, sq, skv, d = p["batch"], p["heads"], p["seq_q"], p["seq_kv"], p["head_dim"]
    nbytes = 2 * b * h * (sq + 2 * skv) * d
    sets = []
    for _ in range(max(1, min(4, -(-256_000_000 // nbytes)))):
        mk = lambda s: torch.rand(b, h, s, d, device="cuda", dtype=torch.bfloat16) * 2 - 1
        sets.append((mk(sq), mk(skv), mk(skv)))
    causal = p["causal"]

    def call(q, k, v):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    try:
        out = call(*sets[0])
        if torch.isnan(out).any():
            return None
        return rate(row, p, median_ms(call, sets, iters))
    except Exception as e:  # backend does not support the shape
        print(f"  {row['id']} {backend}: {type(e).__name__}: {str(e).splitlines()[0][:100]}", file=sys.stderr)
        return None
    finally:
        del sets
        torch.cuda.empty_cache()


def copy_rate(iters):
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda s, d: d.copy_(s), [(src, dst)], iters)
    return 2.0 * (2 << 30) / ms / 1e6


def projection_peers(row, iters):
    """PyTorch on the same projection: (frame add +) LayerNorm + linear unfused, and the linear
    alone (cuBLAS), in TFLOP/s."""
    p = row["projection"]
    rows, k, n, frames, tpf = p["rows"], p["k_dim"], p["n_dim"], p["frames"], p["tokens_per_frame"]
    f = torch.nn.functional
    bf = dict(device="cuda", dtype=torch.bfloat16)
    x = torch.rand(rows, k, **bf) * 2 - 1
    w = (torch.rand(n, k, **bf) * 2 - 1) / k**0.5
    g, b = torch.ones(k, **bf), torch.zeros(k, **bf)
    fpos = torch.rand(frames, k, **bf) if frames else None

    def unfused(x, w):
        h = x
        if fpos is not None:
            h = (x.view(-1, frames, tpf, k) + fpos.view(1, frames, 1, k)).view(rows, k)
        return f.linear(f.layer_norm(h, (k,), g, b, 1e-5), w)

    flops = 2.0 * rows * k * n
    with torch.no_grad():
        t_unfused = median_ms(unfused, [(x, w)], iters)
        t_linear = median_ms(lambda x, w: f.linear(x, w), [(x, w)], iters)
    return flops / t_unfused / 1e9, flops / t_linear / 1e9


def fmt(x):
    return "n/a" if x is None else f"{x:.1f}"


def main():
    ours_path, report_path = sys.argv[1], sys.argv[2]
    iters = int(sys.argv[sys.argv.index("--iters") + 1]) if "--iters" in sys.argv else 30
    lines = [json.loads(l) for l in open(ours_path) if l.strip()]
    device = lines[0]
    rows = [l for l in lines[1:] if "id" in l]
    name = torch.cuda.get_device_name()
    table = [
        f"Device: {name} (ours: {device.get('name')}, {device.get('arch')}); torch {torch.__version__}; bf16, median of {iters}",
        "",
        "| id | shape | unit | ours | cuDNN | flash | ours / flash | ours / best peer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    proj_table = [
        "",
        "| id | shape | ours TFLOP/s | torch LN+linear unfused | torch linear alone (cuBLAS) | ours / unfused | ours / linear |",
        "|---|---|---|---|---|---|---|",
    ]
    copy_ours = None
    peers = {}  # variants of one shape share the peer timings
    for row in rows:
        if row["id"] == "copy":
            copy_ours = row["value"]
            torch_copy = copy_rate(iters)
            table.append(f"| copy | {row['shape']} | GB/s | {fmt(row['value'])} | torch copy_: {fmt(torch_copy)} | | | |")
            continue
        if row.get("projection"):
            unfused, linear = projection_peers(row, iters)
            proj_table.append(
                f"| {row['id']} | {row['shape']} | {fmt(row['value'])} | {fmt(unfused)} | {fmt(linear)} "
                f"| {row['value'] / unfused:.2f} | {row['value'] / linear:.2f} |"
            )
            continue
        key = tuple(sorted(row["problem"].items()))
        if key not in peers:
            peers[key] = (peer(row, SDPBackend.CUDNN_ATTENTION, iters), peer(row, SDPBackend.FLASH_ATTENTION, iters))
        cudnn, flash = peers[key]
        best = max([x for x in (cudnn, flash) if x is not None], default=None)
        r_flash = f"{row['value'] / flash:.2f}" if flash else "n/a"
        r_best = f"{row['value'] / best:.2f}" if best else "n/a"
        table.append(
            f"| {row['id']} | {row['shape']} | {row['unit']} | {fmt(row['value'])} | {fmt(cudnn)} | {fmt(flash)} | {r_flash} | {r_best} |"
        )
    decode = next((r for r in rows if r["id"] == "decode"), None)
    if decode and copy_ours:
        table.append("")
        table.append(f"Decode B64 bandwidth = {100 * decode['value'] / copy_ours:.0f}% of the copy bandwidth measured in the same run.")
    if len(proj_table) > 3:
        table.extend(proj_table)
    text = "\n".join(table)
    print(text)
    with open(report_path, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
