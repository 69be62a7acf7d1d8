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


def cell_index(length, cells):
    """The cell of each of `length` positions along an axis split into `cells` cells:
    floor(i * cells / length), the rule of ADASHIFT.md (as test/fixtures/make_fixtures.py)."""
    return [i * cells // length for i in range(length)]


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
        self._cells = {}  # (H, W, device, dtype) -> index maps and pooling matrices

    def cells(self, h, w, ph, pw, like):
        """Per-shape maps for a grid that does not divide H or W, built once per shape: the
        cell row of each pixel row and cell column of each pixel column, and the averaging
        matrices mh [Ph, H], mw [Pw, W] (1/|cell row| on a cell's rows), so that the cell
        means are mh @ x @ mw^T (a cell is a block of rows times a block of columns)."""
        key = (h, w, like.device, like.dtype)
        m = self._cells.get(key)
        if m is None:
            ri = torch.tensor(cell_index(h, ph), device=like.device)
            ci = torch.tensor(cell_index(w, pw), device=like.device)
            mh = F.one_hot(ri, ph).t().to(like.dtype)
            mw = F.one_hot(ci, pw).t().to(like.dtype)
            m = (ri, ci, mh / mh.sum(1, keepdim=True), (mw / mw.sum(1, keepdim=True)).t().contiguous())
            self._cells[key] = m
        return m

    def forward(self, x):
        n, c, h, w = x.shape
        # P x P cells, P = min(grid, H) rows and min(grid, W) columns; pixel row i is in cell
        # row floor(i * Ph / H) (likewise columns), so uneven cells differ in size by one.
        ph, pw = min(self.grid, h), min(self.grid, w)
        even = h % ph == 0 and w % pw == 0
        if even:
            # the fast path: equal cells are exactly average pooling and repetition
            t = F.adaptive_avg_pool2d(x, (ph, pw))
        else:
            # adaptive_avg_pool2d's cells overlap when P does not divide H: not the same rule
            ri, ci, mh, mwt = self.cells(h, w, ph, pw, x)
            t = torch.matmul(torch.matmul(mh, x), mwt)  # [N, C, Ph, Pw]
        tokens = ph * pw
        t = t.flatten(2).transpose(1, 2)  # [N, Ph*Pw, C]
        g, d = self.heads, c // self.heads
        def split(z):
            return z.reshape(n, tokens, g, d).transpose(1, 2)
        q, k, v = split(self.q(t)), split(self.k(t)), split(self.v(t))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        o = (a @ v).transpose(1, 2).reshape(n, tokens, c)
        s = self.rect(o).transpose(1, 2).reshape(n, c, ph, pw)
        if even:
            s = s.repeat_interleave(h // ph, 2).repeat_interleave(w // pw, 3)
        else:
            s = s.index_select(2, ri).index_select(3, ci)  # each pixel's cell
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
