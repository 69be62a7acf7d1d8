"""PyTorch peer for `adashift bench act`: the same activation, built from stock ops, timed the
same way (median forward and backward of `repeats` runs after `warmup`). Prints one JSON line.

AdaShift-B and AdaShift-MA here are plain PyTorch modules as in the reference implementation
(global/region average pooling, LayerNorm, attention, sigmoid gate), so autograd stores what
it stores; that is the comparison a user would otherwise get.
"""
import json
import math
import sys
import time

from peer_lifetime import die_with_parent

die_with_parent()  # before the slow torch import

import torch
import torch.nn as nn
import torch.nn.functional as F


class AdaShiftB(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c, eps=1e-6)
        nn.init.constant_(self.norm.weight, 0.01)

    def forward(self, x):
        s = self.norm(x.mean((2, 3)))
        return x * torch.sigmoid(x + s[:, :, None, None])


class AdaShiftMA(nn.Module):
    def __init__(self, c, grid=7, head_dim=64):
        super().__init__()
        self.grid = grid
        self.heads = max(c // head_dim, 1)
        self.q = nn.LayerNorm(c, eps=1e-6)
        self.k = nn.LayerNorm(c, eps=1e-6)
        self.v = nn.LayerNorm(c, eps=1e-6)
        self.rect = nn.LayerNorm(c, eps=1e-6)
        nn.init.constant_(self.rect.weight, 0.01)

    def forward(self, x):
        n, c, h, w = x.shape
        p = self.grid
        t = F.adaptive_avg_pool2d(x, p).flatten(2).transpose(1, 2)  # [N, P*P, C] (H % P == 0 here)
        g, d = self.heads, c // self.heads
        def split(z):
            return z.reshape(n, p * p, g, d).transpose(1, 2)
        q, k, v = split(self.q(t)), split(self.k(t)), split(self.v(t))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        o = (a @ v).transpose(1, 2).reshape(n, p * p, c)
        s = self.rect(o).transpose(1, 2).reshape(n, c, p, p)
        s = s.repeat_interleave(h // p, 2).repeat_interleave(w // p, 3)
        return x * torch.sigmoid(x + s)


def make(act, c):
    if act == "relu":
        return nn.ReLU()
    if act == "gelu":
        return nn.GELU()
    if act == "silu":
        return nn.SiLU()
    if act == "adashift-b":
        return AdaShiftB(c)
    if act == "adashift-ma":
        return AdaShiftMA(c)
    raise ValueError(act)


def main():
    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    dev = torch.device(cfg["device"])
    shape = cfg["shape"]
    m = make(cfg["act"], shape[1]).to(dev)
    x = torch.randn(shape, device=dev, requires_grad=True)
    dy = torch.randn(shape, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    fwd, bwd = [], []
    for i in range(cfg["warmup"] + cfg["repeats"]):
        x.grad = None
        sync()
        t0 = time.perf_counter()
        y = m(x)
        sync()
        t1 = time.perf_counter()
        y.backward(dy)
        sync()
        t2 = time.perf_counter()
        if i >= cfg["warmup"]:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    med = lambda v: sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1:len(v) // 2 + 1]) / 2
    print(json.dumps({"torch": torch.__version__, "forwardMs": med(fwd) * 1e3, "backwardMs": med(bwd) * 1e3}))


if __name__ == "__main__":
    main()
