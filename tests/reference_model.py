#!/usr/bin/env python3
"""An independent implementation of the moed model, written from docs/model.md alone.

Reads a moed .safetensors file (parsed here with the standard library: 8-byte header length,
JSON header, raw little-endian data), cuts a text file into the windows `moectl eval` uses
(T+1 bytes, stride T, spread evenly when --max-windows is given) and prints the mean
cross-entropy in nats per byte as JSON. NumPy in float64; moed computes in float32, so the two
agree to about 1e-5 relative, barring a routing decision that flips between the precisions.

With --teacher, the distillation loss instead (docs/model.md, "Distillation"): MODEL the
student and TEACHER the teacher on the first T+1 bytes of DATA (T the student's seq_len),
printing ce, kl and (1 - alpha) ce + alpha T^2 kl.

usage: reference_model.py MODEL DATA [--max-windows N]
       reference_model.py MODEL DATA --teacher TEACHER --alpha A --temperature T
"""
import json
import struct
import sys

import numpy as np


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n :]
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", name
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype="<f4").reshape(info["shape"]).astype(np.float64)
    return tensors, meta


def rmsnorm(x, w, eps):
    return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def rope(x, T, NH, HD, base):
    # pairs (2i, 2i+1) within each head; angle t * base^(-2i/HD)
    x = x.reshape(T, NH, HD // 2, 2)
    i = np.arange(HD // 2)
    ang = np.arange(T)[:, None] * base ** (-2.0 * i / HD)[None, :]
    cos = np.cos(ang).astype(np.float32).astype(np.float64)[:, None, :]
    sin = np.sin(ang).astype(np.float32).astype(np.float64)[:, None, :]
    x0, x1 = x[..., 0], x[..., 1]
    out = np.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
    return out.reshape(T, NH * HD)


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def moe(u, tensors, l, cfg):
    T = u.shape[0]
    E, K = cfg["n_experts"], cfg["top_k"]
    router = tensors[f"blocks.{l}.moe.router.weight"]
    bias = tensors[f"blocks.{l}.moe.expert_bias"]
    if not cfg["bias_balancing"]:
        bias = np.zeros_like(bias)
    p = softmax(u @ router.T)
    score = p + bias
    # top-k, best first, ties to the lower expert index: a stable sort of -score
    topk = np.argsort(-score, axis=-1, kind="stable")[:, :K]
    chosen = np.take_along_axis(p, topk, axis=-1)
    gates = chosen / chosen.sum(axis=-1, keepdims=True)
    # capacity per sequence, admitted k-major: every token's first choice, then second, ...
    if cfg["dropless"]:
        cap = T * K
    else:
        # in double, from the factor as the model holds it (a float32): docs/model.md
        cap = min(int(np.ceil(float(np.float32(cfg["capacity_factor"])) * T * K / E)), T * K)
    used = np.zeros(E, dtype=int)
    kept = np.zeros((T, K), dtype=bool)
    for k in range(K):
        for t in range(T):
            e = topk[t, k]
            if used[e] < cap:
                used[e] += 1
                kept[t, k] = True
    wg = tensors[f"blocks.{l}.moe.experts.gate.weight"]
    wu = tensors[f"blocks.{l}.moe.experts.up.weight"]
    wd = tensors[f"blocks.{l}.moe.experts.down.weight"]
    out = np.zeros_like(u)
    for k in range(K):
        for e in range(E):
            rows = np.nonzero((topk[:, k] == e) & kept[:, k])[0]
            if len(rows) == 0:
                continue
            x = u[rows]
            g = x @ wg[e].T
            h = (g / (1 + np.exp(-g))) * (x @ wu[e].T)
            out[rows] += gates[rows, k][:, None] * (h @ wd[e].T)
    return out


def window_logits(tokens, tensors, cfg):
    T = len(tokens)
    C, NH = cfg["d_model"], cfg["n_heads"]
    HD = C // NH
    eps = np.float32(cfg["norm_eps"])
    wte = tensors["tok_embedding.weight"]
    h = wte[tokens]
    mask = np.tril(np.ones((T, T), dtype=bool))
    for l in range(cfg["n_layers"]):
        a = rmsnorm(h, tensors[f"blocks.{l}.attn_norm.weight"], eps)
        qkv = a @ tensors[f"blocks.{l}.attn.qkv.weight"].T
        q, k, v = qkv[:, :C], qkv[:, C : 2 * C], qkv[:, 2 * C :]
        q = rope(q, T, NH, HD, cfg["rope_base"])
        k = rope(k, T, NH, HD, cfg["rope_base"])
        o = np.zeros((T, C))
        for hd in range(NH):
            s = slice(hd * HD, (hd + 1) * HD)
            S = q[:, s] @ k[:, s].T / np.sqrt(HD)
            S = np.where(mask, S, -np.inf)
            o[:, s] = softmax(S) @ v[:, s]
        m = h + o @ tensors[f"blocks.{l}.attn.out.weight"].T
        u = rmsnorm(m, tensors[f"blocks.{l}.ffn_norm.weight"], eps)
        h = m + moe(u, tensors, l, cfg)
    return rmsnorm(h, tensors["final_norm.weight"], eps) @ wte.T


def log_softmax(z):
    zmax = z.max(axis=-1, keepdims=True)
    return z - (zmax + np.log(np.exp(z - zmax).sum(axis=-1, keepdims=True)))


def window_loss(tokens, targets, tensors, cfg):
    z = window_logits(tokens, tensors, cfg)
    return float(-np.sum(log_softmax(z)[np.arange(len(tokens)), targets]))


def distill_losses(student, teacher, data, alpha, tau):
    """docs/model.md, "Distillation": ce and kl (means over the first window's T tokens) and
    (1 - alpha) ce + alpha tau^2 kl, the router terms left out."""
    s_tensors, s_meta = load_safetensors(student)
    t_tensors, t_meta = load_safetensors(teacher)
    s_cfg, t_cfg = json.loads(s_meta["moed.model_config"]), json.loads(t_meta["moed.model_config"])
    T = s_cfg["seq_len"]
    with open(data, "rb") as f:
        win = np.frombuffer(f.read(T + 1), dtype=np.uint8).astype(np.int64)
    z = window_logits(win[:-1], s_tensors, s_cfg)
    zt = window_logits(win[:-1], t_tensors, t_cfg)
    ce = float(-np.mean(log_softmax(z)[np.arange(T), win[1:]]))
    log_p, log_q = log_softmax(z / tau), log_softmax(zt / tau)
    kl = float(np.mean(np.sum(np.exp(log_q) * (log_q - log_p), axis=-1)))
    return {"ce": ce, "kl": kl, "loss": (1 - alpha) * ce + alpha * tau * tau * kl}


def main(argv):
    model, data = argv[1], argv[2]
    if "--teacher" in argv:  # the distillation loss of the first T + 1 bytes of data
        opt = lambda name: argv[argv.index(name) + 1]
        r = distill_losses(model, opt("--teacher"), data, float(opt("--alpha")),
                           float(opt("--temperature")))
        print(json.dumps(r))
        return
    max_windows = int(argv[argv.index("--max-windows") + 1]) if "--max-windows" in argv else 0
    tensors, meta = load_safetensors(model)
    cfg = json.loads(meta["moed.model_config"])
    T = cfg["seq_len"]
    with open(data, "rb") as f:
        stream = np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64)
    total = (len(stream) - 1) // T if len(stream) >= T + 1 else 0
    want = min(max_windows, total) if max_windows else total
    loss = 0.0
    for j in range(want):
        w = int(j * total / want)  # the windows spread evenly, as moectl eval picks them
        win = stream[w * T : w * T + T + 1]
        loss += window_loss(win[:-1], win[1:], tensors, cfg)
    print(json.dumps({"windows": want, "loss": loss / (want * T)}))


if __name__ == "__main__":
    main(sys.argv)
