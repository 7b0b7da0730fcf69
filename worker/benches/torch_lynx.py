#!/usr/bin/env python3
"""Lynx in plain PyTorch (eager, torch.nn.functional), the reference side of the CPU benchmark
`cargo bench -p lynx-worker --bench cpu_vs_torch` (worker/benches/cpu_vs_torch.rs).

What it is: the Lynx inference network written from /work/shared/lynx/SPEC.md, section 2: the EVA
ViT (patch conv, CLS + learned position embedding, pre-LN blocks with LayerNorm eps 1e-6, q/v
biases and no k bias, exact-erf GELU MLP, no final norm, every token kept; `vision.depth` blocks,
i.e. 39 of EVA-g's 40 for the release), the frame embedding for videos, the Perceiver resampler
(K/V from the LayerNorm'd vision tokens only through `to_kv`, queries from the LayerNorm'd latents,
8 x 64 heads, exact-GELU feed-forward, final LayerNorm: its output is the projection into the LLM),
then LLaMA (RMSNorm, rotate-half RoPE gathered by `cumsum(mask) - 1` positions, SwiGLU) with Lynx's
bottleneck output adapters (LayerNorm eps 1e-5 -> down -> SiLU -> up, times the learned scalar, plus
the residual) after the layers `llm.adapter_layers` lists, a KV cache (per-layer K/V concatenated
step by step, as HF's dynamic cache does) and greedy decoding. Attention is
`F.scaled_dot_product_attention`; q/k/v (and LLaMA's gate/up) are fused into one weight each at
load time, as any tuned eager port does. Everything runs in f32.

It reads a model folder in the project's converted layout: `lynx.json` (the validated config,
worker/src/config.rs `LynxConfig`) and `model.safetensors` or the shards that
`model.safetensors.index.json` names, in the LynxBase key namespace (vision_encoder.*, bridge.*,
LLM.model.*, LLM.lm_head.weight, absolute_frame_pos_embed); f16/bf16 weights are upcast. f32
weights stay memory-mapped (file pages, counted in the RSS once read); every page is read before
the model counts as loaded.

Run (PyTorch from scripts/install-torch):

    PYTHONPATH=$(scripts/install-torch) python3 worker/benches/torch_lynx.py --model DIR --threads 2 --json
    PYTHONPATH=$(scripts/install-torch) python3 worker/benches/torch_lynx.py --check-fixture

`--json` runs the timing protocol and prints ONE JSON object (the Rust bench reads it):
- inputs, reproduced identically by cpu_vs_torch.rs: image b (b = 0..7) is already normalised,
  shape [3][res][res], pixel at flat index i = (float32) sin(0.001 * i + b), computed in float64
  with the C library's sin; the prompt is `[bos] + [min(5 + j, vocab - 1) for j in 0..20]` (21 ids,
  the same for every row);
- one warm-up, then `--repeats` (default 5) medians of: a batch-1 request (vision = ViT +
  resampler, prefill, then greedy decoding to 32 new tokens: the first from the prefill logits,
  31 decode steps, argmax with the lowest index on ties, no EOS stop), and a batch-8 request (8
  images as one batch of 8 rows, 32 new tokens each);
- `vision_ms_per_image_b1|b8`, `prefill_ms_b1`, `decode_ms_per_token_b1` (decode steps' time / 31),
  `one_request_s`, `batch8_s`, `load_s` (reading the weights to ready; `import_s` is `import
  torch`), `rss_after_import_mib` and `peak_rss_mib` (ru_maxrss after `import torch` and at the
  end), `ids_b1` and `ids_b8` (the greedy ids).

`--check-fixture` validates this port against the official outputs of the tiny fixture
(tests/data/tiny): it converts the fixture with `lynx-worker convert` into a temporary folder
($LYNX_WORKER_BIN, else the release binary under $CARGO_TARGET_DIR or target/, else `cargo run
--release`), runs every case on the fixture's preprocessed pixels and prompt ids, and requires the
official greedy ids (with the release processors NoRepeatNGram(2) + MinLength(2), and plain) to be
identical, and the resampler output and prefill logits to be within 1e-4 relative. Exit 1 otherwise.
"""

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_T_IMPORT = time.perf_counter()
try:
    import torch
    import torch.nn.functional as F
    from safetensors import safe_open
except ImportError as e:  # pragma: no cover - environment message
    print(
        f"torch_lynx.py: {e}; install PyTorch with scripts/install-torch and run with "
        "PYTHONPATH=$(scripts/install-torch)",
        file=sys.stderr,
    )
    sys.exit(2)
IMPORT_S = time.perf_counter() - _T_IMPORT
RSS_AFTER_IMPORT_MIB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

REPO = Path(__file__).resolve().parents[2]
NEW_TOKENS = 32
PROMPT_LEN = 20


def bench_pixels(batch, res):
    """Images 0..batch-1: pixel i of image b = float32(sin(0.001 * i + b)), shape [b, 3, res, res]."""
    n = 3 * res * res
    rows = []
    for b in range(batch):
        vals = [math.sin(0.001 * i + b) for i in range(n)]
        rows.append(torch.tensor(vals, dtype=torch.float64).to(torch.float32))
    return torch.stack(rows).view(batch, 3, res, res)


def bench_prompt(cfg):
    """`[bos] + [min(5 + j, vocab - 1) for j in 0..20]`."""
    vocab = cfg["llm"]["vocab_size"]
    return [cfg["tokens"]["bos"]] + [min(5 + j, vocab - 1) for j in range(PROMPT_LEN)]


class Weights:
    """The converted layout's tensors by LynxBase key, read on demand and upcast to f32."""

    def __init__(self, model_dir):
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = ["model.safetensors"]
        self.handles = [safe_open(str(model_dir / f), framework="pt") for f in files]
        self.where = {}
        self.elements = 0
        for h in self.handles:
            for k in h.keys():
                self.where[k] = h

    def __call__(self, key):
        if key not in self.where:
            raise KeyError(f"weight {key} missing from the checkpoint")
        t = self.where[key].get_tensor(key).to(torch.float32).contiguous()
        # An f32 tensor stays a view of the memory-mapped file, read lazily: touch one value per
        # 4 KiB page so that "loaded" means resident, as on our side (which copies the weights).
        t.view(-1)[::1024].sum()
        self.elements += t.numel()
        return t


class _Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class TorchLynx:
    """The Lynx inference network on torch tensors, built from a `LynxConfig` dict and weights."""

    def __init__(self, cfg, w):
        self.cfg = cfg
        v, br, llm = cfg["vision"], cfg["bridge"], cfg["llm"]
        self.patch = v["patch_size"]
        self.vw, self.vheads = v["width"], v["heads"]
        self.patch_w = w("vision_encoder.patch_embed.proj.weight")
        self.patch_b = w("vision_encoder.patch_embed.proj.bias")
        self.cls = w("vision_encoder.cls_token")
        self.pos_embed = w("vision_encoder.pos_embed")
        self.frame_pos = w("absolute_frame_pos_embed")
        self.blocks = []
        for i in range(v["depth"]):
            p = f"vision_encoder.blocks.{i}."
            q_b = w(p + "attn.q_proj.bias")
            self.blocks.append(
                _Obj(
                    n1w=w(p + "norm1.weight"),
                    n1b=w(p + "norm1.bias"),
                    qkv_w=torch.cat(
                        [w(p + "attn.q_proj.weight"), w(p + "attn.k_proj.weight"), w(p + "attn.v_proj.weight")]
                    ),
                    qkv_b=torch.cat([q_b, torch.zeros_like(q_b), w(p + "attn.v_proj.bias")]),
                    proj_w=w(p + "attn.proj.weight"),
                    proj_b=w(p + "attn.proj.bias"),
                    n2w=w(p + "norm2.weight"),
                    n2b=w(p + "norm2.bias"),
                    fc1_w=w(p + "mlp.fc1.weight"),
                    fc1_b=w(p + "mlp.fc1.bias"),
                    fc2_w=w(p + "mlp.fc2.weight"),
                    fc2_b=w(p + "mlp.fc2.bias"),
                )
            )
        self.bheads, self.bdim = br["heads"], br["dim_head"]
        self.latents = w("bridge.latents")
        self.bnorm_w, self.bnorm_b = w("bridge.norm.weight"), w("bridge.norm.bias")
        self.bridge = []
        for i in range(br["depth"]):
            p = f"bridge.layers.{i}."
            self.bridge.append(
                _Obj(
                    nmw=w(p + "0.norm_media.weight"),
                    nmb=w(p + "0.norm_media.bias"),
                    nlw=w(p + "0.norm_latents.weight"),
                    nlb=w(p + "0.norm_latents.bias"),
                    to_q=w(p + "0.to_q.weight"),
                    to_kv=w(p + "0.to_kv.weight"),
                    to_out=w(p + "0.to_out.weight"),
                    fnw=w(p + "1.0.weight"),
                    fnb=w(p + "1.0.bias"),
                    ff1=w(p + "1.1.weight"),
                    ff2=w(p + "1.3.weight"),
                )
            )
        self.hidden, self.heads = llm["hidden"], llm["heads"]
        self.head_dim = self.hidden // self.heads
        self.eps = llm["rms_norm_eps"]
        self.embed = w("LLM.model.embed_tokens.weight")
        self.norm_w = w("LLM.model.norm.weight")
        self.lm_head = w("LLM.lm_head.weight")
        adapters = set(llm["adapter_layers"])
        self.layers = []
        for i in range(llm["layers"]):
            p = f"LLM.model.layers.{i}."
            layer = _Obj(
                in_w=w(p + "input_layernorm.weight"),
                qkv_w=torch.cat([w(p + f"self_attn.{n}_proj.weight") for n in "qkv"]),
                o_w=w(p + "self_attn.o_proj.weight"),
                post_w=w(p + "post_attention_layernorm.weight"),
                gate_up_w=torch.cat([w(p + "mlp.gate_proj.weight"), w(p + "mlp.up_proj.weight")]),
                down_w=w(p + "mlp.down_proj.weight"),
                adapter=None,
            )
            if i in adapters:
                a = p + "output_adapter."
                layer.adapter = _Obj(
                    scaling=w(a + "scaling"),
                    nw=w(a + "adapter_norm_before.weight"),
                    nb=w(a + "adapter_norm_before.bias"),
                    dw=w(a + "adapter_down.weight"),
                    db=w(a + "adapter_down.bias"),
                    uw=w(a + "adapter_up.weight"),
                    ub=w(a + "adapter_up.bias"),
                )
            self.layers.append(layer)
        # RoPE tables in f32, as HF 4.28 builds them: inv_freq from the formula, then cos/sin of
        # cat(freqs, freqs) for every position.
        hd = self.head_dim
        inv_freq = 1.0 / (llm["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        t = torch.arange(llm["max_position_embeddings"], dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()
        self.vocab = llm["vocab_size"]

    # ----- vision -------------------------------------------------------------------------------

    def vit(self, px):
        """[N, 3, R, R] -> [N, 1 + patches, W]: CLS + patch tokens after the last used block."""
        n = px.shape[0]
        x = F.conv2d(px, self.patch_w, self.patch_b, stride=self.patch).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(n, -1, -1), x], dim=1) + self.pos_embed
        t, wd, nh = x.shape[1], self.vw, self.vheads
        for b in self.blocks:
            h = F.layer_norm(x, (wd,), b.n1w, b.n1b, 1e-6)
            qkv = F.linear(h, b.qkv_w, b.qkv_b).view(n, t, 3, nh, wd // nh).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            x = x + F.linear(a.transpose(1, 2).reshape(n, t, wd), b.proj_w, b.proj_b)
            h = F.layer_norm(x, (wd,), b.n2w, b.n2b, 1e-6)
            x = x + F.linear(F.gelu(F.linear(h, b.fc1_w, b.fc1_b)), b.fc2_w, b.fc2_b)
        return x

    def resample(self, x):
        """Vision tokens [B, N, W] -> the LLM prefix [B, latents, hidden]."""
        bsz, n, _ = x.shape
        lat = self.latents.unsqueeze(0).expand(bsz, -1, -1)
        nl, hid, nh, dh = lat.shape[1], self.hidden, self.bheads, self.bdim
        inner = nh * dh
        for b in self.bridge:
            xm = F.layer_norm(x, (self.vw,), b.nmw, b.nmb, 1e-5)
            lq = F.layer_norm(lat, (hid,), b.nlw, b.nlb, 1e-5)
            q = F.linear(lq, b.to_q).view(bsz, nl, nh, dh).transpose(1, 2)
            k, v = F.linear(xm, b.to_kv).split(inner, dim=-1)
            k = k.view(bsz, n, nh, dh).transpose(1, 2)
            v = v.view(bsz, n, nh, dh).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(bsz, nl, inner)
            lat = F.linear(o, b.to_out) + lat
            h = F.layer_norm(lat, (hid,), b.fnw, b.fnb, 1e-5)
            lat = F.linear(F.gelu(F.linear(h, b.ff1)), b.ff2) + lat
        return F.layer_norm(lat, (hid,), self.bnorm_w, self.bnorm_b, 1e-5)

    def encode(self, pixels):
        """Images [B, 3, R, R] or videos [B, F, 3, R, R] -> prefixes [B, latents, hidden]."""
        if pixels.dim() == 4:
            return self.resample(self.vit(pixels))
        bsz, nf = pixels.shape[:2]
        x = self.vit(pixels.flatten(0, 1))
        x = x.view(bsz, nf, x.shape[1], x.shape[2]) + self.frame_pos
        return self.resample(x.flatten(1, 2))

    # ----- LLM ----------------------------------------------------------------------------------

    def _rope(self, x, cos, sin):
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    def _decoder(self, x, pos, cache, attn_mask, causal):
        """x [B, T, H] at positions pos [B, T]; appends to `cache` (one [k, v] per layer)."""
        bsz, t, hid = x.shape
        nh, hd = self.heads, self.head_dim
        cos = self.cos[pos].unsqueeze(1)
        sin = self.sin[pos].unsqueeze(1)
        for i, ly in enumerate(self.layers):
            h = F.rms_norm(x, (hid,), ly.in_w, self.eps)
            q, k, v = F.linear(h, ly.qkv_w).view(bsz, t, 3, nh, hd).permute(2, 0, 3, 1, 4)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            if cache[i] is not None:
                k = torch.cat([cache[i][0], k], dim=2)
                v = torch.cat([cache[i][1], v], dim=2)
            cache[i] = (k, v)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
            x = x + F.linear(a.transpose(1, 2).reshape(bsz, t, hid), ly.o_w)
            h = F.rms_norm(x, (hid,), ly.post_w, self.eps)
            g, u = F.linear(h, ly.gate_up_w).chunk(2, dim=-1)
            x = x + F.linear(F.silu(g) * u, ly.down_w)
            ad = ly.adapter
            if ad is not None:
                h = F.layer_norm(x, (hid,), ad.nw, ad.nb, 1e-5)
                x = F.linear(F.silu(F.linear(h, ad.dw, ad.db)), ad.uw, ad.ub) * ad.scaling + x
        return x

    def _logits(self, x):
        return F.linear(F.rms_norm(x, (self.hidden,), self.norm_w, self.eps), self.lm_head)

    def start(self, prefix, ids, atts, all_logits=False):
        """Prefill `[prefix][left pads][text]`: prefix [B, L, H] or None, ids/atts [B, T] (left
        padded, atts 0 on pads). Returns the session and the last position's logits [B, V] (every
        position's [B, L + T, V] with `all_logits`)."""
        x = F.embedding(ids, self.embed)
        mask = atts.to(torch.bool)
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)
            mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.bool), mask], dim=1)
        pos = mask.long().cumsum(-1) - 1
        pos = pos.masked_fill(~mask, 1)
        t = x.shape[1]
        if bool(mask.all()):
            attn_mask, causal = None, True
        else:
            allowed = torch.ones(t, t, dtype=torch.bool).tril() & mask[:, None, None, :]
            attn_mask = torch.zeros(allowed.shape, dtype=torch.float32)
            attn_mask = attn_mask.masked_fill(~allowed, torch.finfo(torch.float32).min)
            causal = False
        cache = [None] * len(self.layers)
        h = self._decoder(x, pos, cache, attn_mask, causal)
        session = _Obj(cache=cache, mask=mask, next_pos=mask.long().sum(-1))
        if all_logits:
            return session, self._logits(h)
        return session, self._logits(h[:, -1])

    def step(self, s, tokens):
        """Feeds one token per row (tokens [B]), returns the next logits [B, V]."""
        x = F.embedding(tokens.view(-1, 1), self.embed)
        pos = s.next_pos.view(-1, 1)
        s.mask = torch.cat([s.mask, torch.ones(s.mask.shape[0], 1, dtype=torch.bool)], dim=1)
        s.next_pos = s.next_pos + 1
        attn_mask = None if bool(s.mask.all()) else s.mask[:, None, None, :]
        h = self._decoder(x, pos, s.cache, attn_mask, False)
        return self._logits(h[:, -1])


def greedy(model, prefix, ids, atts, new_tokens, processors=None):
    """Greedy ids [B][new_tokens] (no EOS stop). `processors`: (bos, eos) for HF 4.28's
    NoRepeatNGram(2) + MinLength(2) over the ids with the BOS placeholder; None for plain argmax."""
    session, logits = model.start(prefix, ids, atts)
    out = [[] for _ in range(ids.shape[0])]
    for step in range(new_tokens):
        if processors is not None:
            bos, eos = processors
            logits = logits.clone()
            for r, row in enumerate(out):
                hist = [bos] + row
                for j in range(len(hist) - 1):
                    if hist[j] == hist[-1]:
                        logits[r, hist[j + 1]] = -math.inf
                if len(hist) < 2:
                    logits[r, eos] = -math.inf
        nxt = logits.argmax(dim=-1)
        for r, tok in enumerate(nxt.tolist()):
            out[r].append(tok)
        if step + 1 < new_tokens:
            logits = model.step(session, nxt)
    return out


# ----- the timing protocol ---------------------------------------------------------------------


def run_request(model, pixels, ids):
    """One request: vision, prefill, greedy to NEW_TOKENS; returns the ids and phase times (s)."""
    t0 = time.perf_counter()
    prefix = model.encode(pixels)
    t1 = time.perf_counter()
    atts = torch.ones_like(ids)
    session, logits = model.start(prefix, ids, atts)
    nxt = logits.argmax(dim=-1)
    t2 = time.perf_counter()
    out = [nxt]
    for _ in range(NEW_TOKENS - 1):
        nxt = model.step(session, nxt).argmax(dim=-1)
        out.append(nxt)
    t3 = time.perf_counter()
    ids_out = torch.stack(out, dim=1).tolist()
    return ids_out, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)


def bench(args):
    t_load = time.perf_counter()
    cfg = json.loads((Path(args.model) / "lynx.json").read_text())
    weights = Weights(args.model)
    model = TorchLynx(cfg, weights)
    del weights.handles, weights.where
    load_s = time.perf_counter() - t_load
    res = cfg["vision"]["image_res"]
    prompt = bench_prompt(cfg)
    px1, px8 = bench_pixels(1, res), bench_pixels(8, res)
    ids1 = torch.tensor([prompt], dtype=torch.long)
    ids8 = ids1.expand(8, -1).contiguous()
    run_request(model, px1, ids1)
    run_request(model, px8, ids8)
    r1 = [run_request(model, px1, ids1) for _ in range(args.repeats)]
    r8 = [run_request(model, px8, ids8) for _ in range(args.repeats)]

    def med(runs, phase):
        return statistics.median(t[phase] for _, t in runs)

    return {
        "model": cfg["model_name"],
        "params_m": weights.elements / 1e6,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "new_tokens": NEW_TOKENS,
        "prompt_ids": prompt,
        "import_s": IMPORT_S,
        "load_s": load_s,
        "vision_ms_per_image_b1": med(r1, 0) * 1e3,
        "vision_ms_per_image_b8": med(r8, 0) * 1e3 / 8,
        "prefill_ms_b1": med(r1, 1) * 1e3,
        "decode_ms_per_token_b1": med(r1, 2) * 1e3 / (NEW_TOKENS - 1),
        "one_request_s": med(r1, 3),
        "batch8_s": med(r8, 3),
        "rss_after_import_mib": RSS_AFTER_IMPORT_MIB,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "ids_b1": r1[-1][0][0],
        "ids_b8": r8[-1][0],
    }


# ----- --check-fixture --------------------------------------------------------------------------


def worker_command():
    """How to run `lynx-worker`: $LYNX_WORKER_BIN, a built release binary, or `cargo run`."""
    env = os.environ.get("LYNX_WORKER_BIN")
    if env:
        return [env]
    targets = [os.environ.get("CARGO_TARGET_DIR"), str(REPO / "target")]
    for t in targets:
        if t and (Path(t) / "release" / "lynx-worker").is_file():
            return [str(Path(t) / "release" / "lynx-worker")]
    return ["cargo", "run", "--release", "-q", "-p", "lynx-worker", "--"]


def rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def check_fixture(args):
    fixture = REPO / "tests" / "data" / "tiny"
    refs = json.loads((fixture / "refs" / "ref.json").read_text())
    with tempfile.TemporaryDirectory(prefix="lynx-torch-fixture-") as tmp:
        out = Path(tmp) / "converted"
        cmd = worker_command() + ["convert", "--model", str(fixture / "model"), "--out", str(out)]
        print("converting:", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        cfg = json.loads((out / "lynx.json").read_text())
        model = TorchLynx(cfg, Weights(out))
    bos, eos = cfg["tokens"]["bos"], cfg["tokens"]["eos"]
    failures = []
    cases = sorted(p.stem[len("ref_"):] for p in (fixture / "refs").glob("ref_*.safetensors"))
    for case in cases:
        ref = refs[case]
        with safe_open(str(fixture / "refs" / f"ref_{case}.safetensors"), framework="pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}
        ids, atts = t["input_ids"].long(), t["input_atts"].long()
        prefix = model.encode(t["pixel_values"].float())
        bridge = rel_diff(prefix, t["bridge_out"])
        _, logits = model.start(prefix, ids, atts, all_logits=True)
        keep = t["attention_mask"].bool()
        pre = rel_diff(logits[keep], t["prefill_logits"][keep])
        got = [[bos] + r for r in greedy(model, prefix, ids, atts, 16, (bos, eos))]
        plain = [[bos] + r for r in greedy(model, prefix, ids, atts, 16)]
        ok_g = got == ref["greedy_ids(min_len2,no_repeat2,max_new16)"]
        ok_p = plain == ref["greedy_plain_ids(max_new16)"]
        ok = ok_g and ok_p and bridge <= 1e-4 and pre <= 1e-4
        print(
            f"{case:24} greedy {'==' if ok_g else '!='} official, plain greedy "
            f"{'==' if ok_p else '!='} official, bridge rel {bridge:.1e}, prefill logits rel {pre:.1e}"
        )
        if not ok:
            failures.append(case)
    text = refs["text_only_greedy"]
    ids = torch.tensor([text["input_ids"]], dtype=torch.long)
    got = [[bos] + r for r in greedy(model, None, ids, torch.ones_like(ids), 8)]
    ok = got == text["output_ids"]
    print(f"{'text_only_greedy':24} plain greedy {'==' if ok else '!='} official")
    if not ok:
        failures.append("text_only_greedy")
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    print(f"the PyTorch port reproduces the official outputs ({len(cases) + 1} cases)")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model folder in the converted layout")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up")
    ap.add_argument("--json", action="store_true", help="run the timing protocol, print one JSON object")
    ap.add_argument("--check-fixture", action="store_true", help="validate against the official tiny fixture")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    with torch.inference_mode():
        if args.check_fixture:
            return check_fixture(args)
        if not args.model:
            ap.error("--model is required (or --check-fixture)")
        result = bench(args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            if not k.startswith("ids_"):
                print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
