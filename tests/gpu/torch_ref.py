#!/usr/bin/env python3
"""torch_ref — the moed model in PyTorch eager mode, written from docs/model.md alone.

Two jobs:
  --check DIR   the loss of the small model that `bench_gpu dump DIR` wrote (weights, expert
                biases, one batch, the C reference's loss), computed here in float64; it must
                match the C reference: this is what makes the benchmark a comparison of the
                same model. Prints check lines in check_gpu's format; exit 1 on a mismatch.
  --bench       training-step time on the GPU for the config given (the same keys and defaults
                as `bench_gpu step`): bf16 autocast for the matrix products with fp32 master
                weights (moed's bf16 mode), the router's product in fp32 (as moed), PyTorch's
                fused scaled-dot-product attention, a per-expert loop for the MoE layer (the
                usual eager formulation), torch.optim.AdamW with global-norm clipping.

usage: torch_ref.py --check DIR
       torch_ref.py --bench [--V 256 --C 2048 --L 4 --NH 16 --T 1024 --E 8 --K 2 --F 4096
                             --B 16 --reps 10]
"""
import argparse
import json
import math
import statistics
import struct
import sys
import time

import torch
import torch.nn.functional as F


class MoedModel(torch.nn.Module):
    """Parameters in moed's arena order and shapes (docs/model.md, "The model file")."""

    def __init__(self, cfg, device, dtype, bf16_weights=False):
        super().__init__()
        # bf16_weights: round the matrices to bf16 once per forward (what autocast's weight
        # cache does for leaf parameters; these are per-layer slices of batched tensors, which
        # it would otherwise convert at every use), as moed keeps a bf16 copy of its arena
        self.bf16_weights = bf16_weights
        V, C, L = cfg["vocab"], cfg["d_model"], cfg["n_layers"]
        E, Fh, T, NH = cfg["n_experts"], cfg["d_ff"], cfg["seq_len"], cfg["n_heads"]
        self.cfg = cfg

        def p(*shape):
            return torch.nn.Parameter(torch.empty(*shape, device=device, dtype=dtype))

        self.wte = p(V, C)
        self.qkv = p(L, 3 * C, C)
        self.attn_out = p(L, C, C)
        self.router = p(L, E, C)
        self.w_gate = p(L, E, Fh, C)
        self.w_up = p(L, E, Fh, C)
        self.w_down = p(L, E, C, Fh)
        self.ln1 = p(L, C)
        self.ln2 = p(L, C)
        self.lnf = p(C)
        self.register_buffer("expert_bias", torch.zeros(L, E, device=device, dtype=dtype))
        # rotary table: angles in double, cos/sin rounded to float32 (as moed)
        HD = C // NH
        i = torch.arange(HD // 2, dtype=torch.float64)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * cfg["rope_base"] ** (-2.0 * i / HD)
        self.register_buffer("cos", ang.cos().float().to(device=device, dtype=dtype))
        self.register_buffer("sin", ang.sin().float().to(device=device, dtype=dtype))

    def matrices(self):
        return [self.wte, self.qkv, self.attn_out, self.router, self.w_gate, self.w_up, self.w_down]

    def norms(self):
        return [self.ln1, self.ln2, self.lnf]

    def arena(self):
        return self.matrices() + self.norms()

    def rmsnorm(self, x, w):
        xf = x.float() if x.dtype != torch.float64 else x
        r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg["norm_eps"])
        return w * (xf * r)

    def rope(self, x, T):
        # x (B, T, NH, HD): pairs (2i, 2i+1) within each head
        B, _, NH, HD = x.shape
        x = x.reshape(B, T, NH, HD // 2, 2)
        x0, x1 = x[..., 0], x[..., 1]
        cos, sin = self.cos[:T, None, :], self.sin[:T, None, :]
        out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
        return out.reshape(B, T, NH, HD)

    def weights(self):
        names = ["wte", "qkv", "attn_out", "w_gate", "w_up", "w_down"]
        if self.bf16_weights:
            return {n: getattr(self, n).to(torch.bfloat16) for n in names}
        return {n: getattr(self, n) for n in names}

    def moe(self, u, l, B, T, W):
        cfg = self.cfg
        E, K = cfg["n_experts"], cfg["top_k"]
        N, C = u.shape
        with torch.autocast(device_type=u.device.type, enabled=False):
            logits = F.linear(u.to(self.router.dtype), self.router[l])  # the router stays fp32
        p = logits.softmax(-1)
        lse = logits.logsumexp(-1)
        score = p + self.expert_bias[l] if cfg["bias_balancing"] else p
        topk = torch.topk(score.detach(), K, dim=-1).indices  # best first
        chosen = p.gather(-1, topk)
        gates = chosen / chosen.sum(-1, keepdim=True)
        # capacity per sequence, admitted k-major: every token's first choice, then second, ...
        if cfg["dropless"]:
            kept = torch.ones(N, K, dtype=torch.bool, device=u.device)
        else:
            cf = struct.unpack("f", struct.pack("f", cfg["capacity_factor"]))[0]
            cap = min(math.ceil(cf * T * K / E), T * K)
            onehot = F.one_hot(topk.view(B, T, K), E).permute(0, 2, 1, 3).reshape(B, K * T, E)
            rank = (onehot.cumsum(1) * onehot).sum(-1) - 1  # earlier arrivals at the same expert
            kept = (rank < cap).view(B, K, T).permute(0, 2, 1).reshape(N, K)
        # the experts, one at a time over the tokens routed to them
        flat_e = topk.reshape(-1)
        flat_keep = kept.reshape(-1)
        flat_tok = torch.arange(N, device=u.device).repeat_interleave(K)
        flat_gate = gates.reshape(-1)
        out = torch.zeros(N, C, device=u.device, dtype=torch.float32 if u.dtype != torch.float64 else u.dtype)
        for e in range(E):
            sel = ((flat_e == e) & flat_keep).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            tok = flat_tok[sel]
            x = u[tok]
            h = F.silu(F.linear(x, W["w_gate"][l, e])) * F.linear(x, W["w_up"][l, e])
            y = F.linear(h, W["w_down"][l, e])
            out = out.index_add(0, tok, (y * flat_gate[sel, None]).to(out.dtype))
        # Switch load balancing per sequence (f counted before capacity) and the z-loss
        f = F.one_hot(topk.view(B, T * K), E).sum(1).to(p.dtype) / (T * K)
        P = p.view(B, T, E).mean(1)
        aux = (E * (f * P).sum(-1)).mean()
        z = lse.pow(2).mean()
        dropped = N * K - int(kept.sum())
        return out, aux, z, dropped

    def forward(self, tokens, targets):
        cfg = self.cfg
        B, T = tokens.shape
        C, NH, L = cfg["d_model"], cfg["n_heads"], cfg["n_layers"]
        HD = C // NH
        N = B * T
        W = self.weights()
        h = self.wte[tokens.reshape(-1)]  # (N, C), gathered from the fp32 table
        aux_total, z_total, dropped = 0.0, 0.0, 0
        for l in range(L):
            a = self.rmsnorm(h, self.ln1[l])
            qkv = F.linear(a, W["qkv"][l]).view(B, T, 3, NH, HD)
            q = self.rope(qkv[:, :, 0], T).transpose(1, 2)
            k = self.rope(qkv[:, :, 1], T).transpose(1, 2)
            v = qkv[:, :, 2].transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            o = o.transpose(1, 2).reshape(N, C)
            m = h + F.linear(o, W["attn_out"][l])
            u = self.rmsnorm(m, self.ln2[l])
            y, aux, z, d = self.moe(u, l, B, T, W)
            h = m + y
            aux_total, z_total, dropped = aux_total + aux, z_total + z, dropped + d
        logits = F.linear(self.rmsnorm(h, self.lnf), W["wte"])
        ce = F.cross_entropy(logits.float() if logits.dtype != torch.float64 else logits,
                             targets.reshape(-1))
        loss = ce + cfg["aux_loss_coef"] * aux_total + cfg["z_loss_coef"] * z_total
        return loss, ce, aux_total, z_total, dropped


def line(name, got, want, tol):
    d = abs(got - want)
    rel = d / abs(want) if want else d
    ok = rel <= tol
    print(f"{name:<44} {d:10.3e} {rel:10.3e} {tol:8.1e} {'OK' if ok else 'FAIL'}")
    return ok


def check(dirname):
    with open(f"{dirname}/model.json") as f:
        cfg = json.load(f)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = MoedModel(cfg, device, torch.float64)
    raw = torch.frombuffer(bytearray(open(f"{dirname}/params.bin", "rb").read()), dtype=torch.float32)
    off = 0
    with torch.no_grad():
        for t in model.arena():
            n = t.numel()
            t.copy_(raw[off : off + n].view(t.shape).to(torch.float64))
            off += n
        assert off == raw.numel(), "params.bin does not match the config"
        bias = torch.frombuffer(bytearray(open(f"{dirname}/expert_bias.bin", "rb").read()), dtype=torch.float32)
        model.expert_bias.copy_(bias.view(model.expert_bias.shape).to(torch.float64))
        B, T = cfg["batch"], cfg["seq_len"]
        def ints(name):
            data = bytearray(open(f"{dirname}/{name}", "rb").read())
            return torch.frombuffer(data, dtype=torch.int32).view(B, T).long().to(device)
        loss, ce, aux, z, dropped = model(ints("tokens.bin"), ints("targets.bin"))
    # float64 here, float32 in C: ~1e-5 relative, barring a routing decision that flips
    ok = all([line("torch_ref.check.loss", loss.item(), cfg["cpu_loss"], 1e-5),
              line("torch_ref.check.ce", ce.item(), cfg["cpu_ce"], 1e-5),
              line("torch_ref.check.aux", float(aux), cfg["cpu_aux"], 1e-5),
              line("torch_ref.check.z", float(z), cfg["cpu_z"], 1e-4),
              line("torch_ref.check.dropped", dropped, cfg["cpu_dropped"], 0)])
    return 0 if ok else 1


def bench(a):
    if not torch.cuda.is_available():
        print("torch_ref: no CUDA device", file=sys.stderr)
        return 2
    cfg = dict(vocab=a.V, d_model=a.C, n_layers=a.L, n_heads=a.NH, seq_len=a.T, n_experts=a.E,
               top_k=a.K, d_ff=a.F, capacity_factor=1.25, dropless=1, aux_loss_coef=0.01,
               z_loss_coef=0.001, bias_balancing=0, rope_base=10000.0, norm_eps=1e-5)
    dev = "cuda"
    torch.manual_seed(0)
    model = MoedModel(cfg, dev, torch.float32, bf16_weights=True)
    with torch.no_grad():
        for t in model.matrices():
            t.normal_(0, 0.02)
        model.attn_out.div_(math.sqrt(2 * a.L))
        model.w_down.div_(math.sqrt(2 * a.L))
        for t in model.norms():
            t.fill_(1)
    opt = torch.optim.AdamW([{"params": model.matrices(), "weight_decay": 0.1},
                             {"params": model.norms(), "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    tokens = torch.randint(0, a.V, (a.B, a.T), device=dev)
    targets = torch.randint(0, a.V, (a.B, a.T), device=dev)
    times = []
    for it in range(-2, a.reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss, *_ = model(tokens, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.arena(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if it >= 0:
            times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    n_params = sum(t.numel() for t in model.arena())
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}; model: V={a.V} C={a.C} "
          f"L={a.L} NH={a.NH} T={a.T} E={a.E} K={a.K} F={a.F} B={a.B}, dropless, {n_params} "
          f"parameters, bf16 autocast, fp32 master weights; peak memory "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"torch_eager_step {1e3 * s:9.2f} ms (median of {a.reps})  {a.B * a.T / s:9.0f} tok/s")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="DIR")
    ap.add_argument("--bench", action="store_true")
    for key, default in [("V", 256), ("C", 2048), ("L", 4), ("NH", 16), ("T", 1024), ("E", 8),
                         ("K", 2), ("F", 4096), ("B", 16), ("reps", 10)]:
        ap.add_argument(f"--{key}", type=int, default=default)
    a = ap.parse_args()
    if a.check:
        return check(a.check)
    if a.bench:
        return bench(a)
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
