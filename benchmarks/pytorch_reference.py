"""nanoGPT's CPU recipe for tiny-shakespeare, in PyTorch, as the reference.

A restatement of nanoGPT's model.py (bias=False, its default in train.py)
and train.py's loop for the published CPU command
(--device=cpu --compile=False --eval_iters=20 --block_size=64 --batch_size=12
 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
 --dropout=0.0, on config/train_shakespeare_char.py: lr 1e-3, min_lr 1e-4,
 warmup 100, beta2 0.99, weight decay 0.1, grad clip 1.0).

It reports nanoGPT's own estimate (eval_iters random batches) and the exact
validation loss over non-overlapping 65-character blocks of the split, as
tfchat computes it, plus tokens/s of the training steps alone.

Needs PyTorch (not a tfchat dependency): pip install torch --index-url
https://download.pytorch.org/whl/cpu
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                      "data", "tinyshakespeare", "input.txt")


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.n_head = n_head

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class LayerNorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1, self.ln_2 = LayerNorm(n_embd), LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab, block_size, n_layer, n_head, n_embd):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList([Block(n_embd, n_head) for _ in range(n_layer)])
        self.ln_f = LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                torch.nn.init.normal_(m.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx, targets):
        t = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=["small", "large"], default="small")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--eval-iters", type=int, default=20,
                   help="batches in nanoGPT's loss estimate; 0 skips evaluation (speed only)")
    p.add_argument("--corpus", default=CORPUS)
    args = p.parse_args()
    shape = dict(small=(64, 12, 4, 4, 128), large=(256, 64, 6, 6, 384))[args.shape]
    block_size, batch_size, n_layer, n_head, n_embd = shape
    torch.manual_seed(args.seed)

    text = open(args.corpus, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.int64)
    n = int(0.9 * len(ids))
    train_ids, val_ids = torch.from_numpy(ids[:n]), torch.from_numpy(ids[n:])

    def get_batch(data):
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([data[i:i + block_size] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix])
        return x, y

    model = GPT(len(chars), block_size, n_layer, n_head, n_embd)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.99),
    )
    warmup, lr, min_lr, decay_iters = 100, 1e-3, 1e-4, args.max_iters

    def get_lr(it):
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay_iters:
            return min_lr
        ratio = (it - warmup) / (decay_iters - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    @torch.no_grad()
    def estimate(data):
        model.eval()
        losses = [model(*get_batch(data)).item() for _ in range(args.eval_iters)]
        model.train()
        return float(np.mean(losses))

    @torch.no_grad()
    def exact(data):
        model.eval()
        blocks = data[: len(data) // (block_size + 1) * (block_size + 1)].view(-1, block_size + 1)
        total = count = 0.0
        for chunk in blocks.split(256):
            loss = model(chunk[:, :-1], chunk[:, 1:])
            total += loss.item() * chunk[:, 1:].numel()
            count += chunk[:, 1:].numel()
        model.train()
        return total / count

    train_seconds = []
    for it in range(args.max_iters):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        start = time.perf_counter()
        loss = model(*get_batch(train_ids))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        train_seconds.append(time.perf_counter() - start)
    # The median step after the first tenth (or after the first step).
    steady = train_seconds[max(len(train_seconds) // 10, 1):] or train_seconds
    tokens_per_s = block_size * batch_size / float(np.median(steady))
    result = {
        "shape": args.shape, "seed": args.seed, "steps": args.max_iters,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "tokens_per_s": round(tokens_per_s), "ms_per_step": round(1e3 * block_size * batch_size / tokens_per_s, 1),
    }
    if args.eval_iters:
        result.update(val_loss_estimate=round(estimate(val_ids), 4),
                      val_loss_exact=round(exact(val_ids), 4))
        if args.shape == "small":  # a pass over the 1M training characters
            result["train_loss_exact"] = round(exact(train_ids), 4)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
