#!/usr/bin/env python3
"""Peers of `lynx-worker gpu-bench --e2e --json` on the same GPU, in the same call:
HF transformers `generate()` on a LLaMA-7B-shaped random bf16 model (decode tokens/s per batch
size) and timm's EVA ViT-g/14 at 420 px, 39 blocks, eager bf16 (vision images/s). Prints one table
with ours, the peer and the ratio.

Usage: e2e_peers.py OURS_E2E.jsonl REPORT.md [--steps N]
"""
import json
import sys
import time

import torch


def timed(fn, iters=3):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def hf_decode(batches, steps, prompt):
    """tokens/s of generate() (greedy, fixed length) per batch size, decode time only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, vocab_size=32001, max_position_embeddings=2048)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    out = {}
    for b in batches:
        ids = torch.randint(3, 32000, (b, prompt), device="cuda")

        def gen(n):
            return lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                          pad_token_id=0)

        with torch.no_grad():
            full = timed(gen(steps + 1), iters=2)
            first = timed(gen(1), iters=2)
        out[b] = b * steps / max(full - first, 1e-9)
        print(f"  HF generate bs{b}: {out[b]:.1f} tokens/s", file=sys.stderr)
    del model
    torch.cuda.empty_cache()
    return out


def timm_vision(batches):
    import timm

    model = timm.create_model("eva_giant_patch14_224", pretrained=False, img_size=420, depth=39,
                              num_classes=0).cuda().to(torch.bfloat16).eval()
    out = {}
    for b in batches:
        x = torch.randn(b, 3, 420, 420, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            s = timed(lambda: model.forward_features(x))
        out[b] = b / s
        print(f"  timm EVA-g bs{b}: {out[b]:.1f} images/s", file=sys.stderr)
    del model
    torch.cuda.empty_cache()
    return out


def main():
    ours_path, report_path = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 32
    lines = [json.loads(l) for l in open(ours_path) if l.strip()]
    device = lines[0]
    rows = [l for l in lines[1:] if "id" in l]
    decode = {r["batch"]: r for r in rows if r["id"].startswith("decode-")}
    vision = {r["batch"]: r for r in rows if r["id"].startswith("vision-b")}
    try:
        hf = hf_decode(sorted(decode), steps, 56)
    except Exception as e:  # transformers missing or out of memory
        print(f"HF transformers peer failed: {type(e).__name__}: {e}", file=sys.stderr)
        hf = {}
    try:
        tv = timm_vision(sorted(vision) + [40])
    except Exception as e:
        print(f"timm EVA-g peer failed: {type(e).__name__}: {e}", file=sys.stderr)
        tv = {}
    fmt = lambda x: "n/a" if x is None else f"{x:.1f}"
    ratio = lambda a, b: f"{a / b:.2f}" if a and b else "n/a"
    table = [
        f"Device: {torch.cuda.get_device_name()} (ours: {device.get('name')}); torch {torch.__version__}; bf16",
        "",
        "| id | what | unit | ours | peer | peer | ours / peer | % of weight-streaming limit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peer, name = None, ""
        if r["id"].startswith("decode-"):
            peer, name = hf.get(r["batch"]), "HF generate()"
        elif r["id"].startswith("vision-b"):
            peer, name = tv.get(r["batch"]), "timm EVA-g (ViT only)"
        elif r["id"].startswith("vision-frames"):
            peer, name = tv.get(40), "timm EVA-g bs40"
        pct = r.get("pct_of_limit")
        table.append(
            f"| {r['id']} | {r['shape']} | {r['unit']} | {fmt(r['value'])} | {name} | {fmt(peer)} "
            f"| {ratio(r['value'], peer)} | {'' if pct is None else f'{pct:.0f}%'} |"
        )
    text = "\n".join(table)
    print(text)
    with open(report_path, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
