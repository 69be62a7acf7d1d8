"""PyTorch peer for `adashift bench step`: the same ResNets and training step, driven one step at
a time by the Node side so that its steps alternate with ours (machine noise hits both alike).

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout. On start the
script prints {"ok": true, "torch": version, "cuda": bool}. Commands:
  {"cmd": "setup", "model", "smallInput", "act", "batch", "input": [C, H, W], "classes",
   "device": "cpu" | "cuda" | "cuda:N" (cudnn.benchmark on), "threads", "optimizer", "seed"}
      "optimizer": {"kind": "sgd", "lr", "momentum", "weightDecay"} or {"kind": "adamw", "lr",
      "betas", "eps", "weightDecay"} (a "lamb" is refused: torch has no LAMB)
      builds the model, optimizer, a random batch and labels; replies {"ok", "params"}
  {"cmd": "step", "n"}   runs n timed training steps; replies {"ok", "times": [s, ...],
                         "peakBytes": CUDA max_memory_allocated over the steps (null on CPU)}
  {"cmd": "threads", "n"} torch.set_num_threads(n)
  {"cmd": "free"}         drops the model
  {"cmd": "quit"}
Errors reply {"ok": false, "error": "..."} and the peer keeps serving.

A training step is what `adashift train` does: forward, cross-entropy (+ the number correct),
backward, the optimizer's update (weight decay on all but BN/bias parameters), zero_grad(set_to_none),
and reading the loss and the count back. The models are built as lib/nn/resnet.ts builds them
(no torchvision needed): CIFAR ResNet-20..110 and torchvision-layout ResNet-18..101 (v1.5
bottleneck, optional small-input stem), with the activation in the stem and every block.

AdaShift-B and AdaShift-MA are plain PyTorch modules from stock ops, as in bench/torch_act.py
(region means, LayerNorm, attention, sigmoid gate), so autograd stores what it stores: the
comparison a user would otherwise get. AdaShift-MA uses our region partition (cell of row h =
floor(h * P / H), P = min(grid, H) per axis): average pooling when the grid divides the size,
otherwise index_add_ sums; the shift goes back to pixels by repeat_interleave / index_select.
"""
import json
import os
import math
import sys
import time

from peer_lifetime import die_with_parent

die_with_parent()  # before the slow torch import

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-6


class AdaShiftB(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c, eps=LN_EPS)
        nn.init.constant_(self.norm.weight, 0.01)

    def forward(self, x):
        s = self.norm(x.mean((2, 3)))
        return x * torch.sigmoid(x + s[:, :, None, None])


class AdaShiftMA(nn.Module):
    def __init__(self, c, grid=7, head_dim=64, rect="norm"):
        super().__init__()
        self.grid = grid
        self.heads = max(c // head_dim, 1)
        self.q = nn.LayerNorm(c, eps=LN_EPS)
        self.k = nn.LayerNorm(c, eps=LN_EPS)
        self.v = nn.LayerNorm(c, eps=LN_EPS)
        if rect == "norm":
            self.rect = nn.LayerNorm(c, eps=LN_EPS)
            nn.init.constant_(self.rect.weight, 0.01)
        else:
            self.rect = nn.Sequential(nn.Linear(c, c, bias=False), nn.LayerNorm(c, eps=LN_EPS))
        self._index = {}

    def cells(self, h, w, device):
        key = (h, w, device)
        if key not in self._index:
            ph, pw = min(self.grid, h), min(self.grid, w)
            ri = torch.tensor([i * ph // h for i in range(h)], device=device)
            ci = torch.tensor([i * pw // w for i in range(w)], device=device)
            count = torch.bincount(ri, minlength=ph)[:, None] * torch.bincount(ci, minlength=pw)[None, :]
            self._index[key] = (ph, pw, ri, ci, count.float())
        return self._index[key]

    def forward(self, x):
        n, c, h, w = x.shape
        ph, pw, ri, ci, count = self.cells(h, w, x.device)
        even = h % ph == 0 and w % pw == 0
        if even:
            grid = F.avg_pool2d(x, (h // ph, w // pw))
        else:
            rows = x.new_zeros(n, c, ph, w).index_add_(2, ri, x)
            grid = x.new_zeros(n, c, ph, pw).index_add_(3, ci, rows) / count
        t = grid.flatten(2).transpose(1, 2)  # [N, T, C]
        g, d, p = self.heads, c // self.heads, ph * pw

        def split(z):
            return z.reshape(n, p, g, d).transpose(1, 2)

        q, k, v = split(self.q(t)), split(self.k(t)), split(self.v(t))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        o = (a @ v).transpose(1, 2).reshape(n, p, c)
        s = self.rect(o).transpose(1, 2).reshape(n, c, ph, pw)
        if even:
            s = s.repeat_interleave(h // ph, 2).repeat_interleave(w // pw, 3)
        else:
            s = s.index_select(2, ri).index_select(3, ci)
        return x * torch.sigmoid(x + s)


def make_act(kind, c, rect):
    if kind == "relu":
        return nn.ReLU(inplace=False)
    if kind == "gelu":
        return nn.GELU()
    if kind == "silu":
        return nn.SiLU()
    if kind == "adashift-b":
        return AdaShiftB(c)
    if kind == "adashift-ma":
        return AdaShiftMA(c, rect=rect)
    raise ValueError("unknown activation %r" % kind)


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


def projection(i, o, stride):
    return nn.Sequential(nn.Conv2d(i, o, 1, stride=stride, bias=False), bn(o))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, i, planes, stride, act):
        super().__init__()
        self.conv1 = nn.Conv2d(i, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = bn(planes)
        self.act1 = make_act(act, planes, "linear")
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = bn(planes)
        self.act2 = make_act(act, planes, "linear")
        self.downsample = projection(i, planes, stride) if stride != 1 or i != planes else None

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x)))
        o = self.bn2(self.conv2(h))
        return self.act2(o + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, i, planes, stride, act):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(i, planes, 1, bias=False)
        self.bn1 = bn(planes)
        self.act1 = make_act(act, planes, "norm")
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = bn(planes)
        self.act2 = make_act(act, planes, "norm")
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = bn(out)
        self.act3 = make_act(act, out, "norm")
        self.downsample = projection(i, out, stride) if stride != 1 or i != out else None

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x)))
        h = self.act2(self.bn2(self.conv2(h)))
        o = self.bn3(self.conv3(h))
        return self.act3(o + (self.downsample(x) if self.downsample is not None else x))


CIFAR_DEPTH = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
TV_LAYOUT = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


class ResNet(nn.Module):
    def __init__(self, name, act, in_channels, num_classes, small_input):
        super().__init__()
        if name in CIFAR_DEPTH:
            widths, counts, block = [16, 32, 64], [CIFAR_DEPTH[name]] * 3, BasicBlock
            self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
            self.maxpool = False
        elif name in TV_LAYOUT:
            block, counts = TV_LAYOUT[name]
            widths = [64, 128, 256, 512]
            if small_input:
                self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
            else:
                self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = not small_input
        else:
            raise ValueError("unknown model %r" % name)
        self.bn1 = bn(widths[0])
        self.act1 = make_act(act, widths[0], "linear" if block is BasicBlock else "norm")
        i = widths[0]
        stages = []
        for s, (w, n) in enumerate(zip(widths, counts)):
            blocks = []
            for j in range(n):
                blocks.append(block(i, w, 2 if j == 0 and s > 0 else 1, act))
                i = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(i, num_classes)

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x)))
        if self.maxpool:
            h = F.max_pool2d(h, 3, 2, 1)
        h = self.stages(h)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class Peer:
    def __init__(self):
        self.case = None

    def setup(self, cfg):
        self.case = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        torch.set_num_threads(cfg["threads"])
        torch.manual_seed(cfg.get("seed", 0))
        dev = torch.device(cfg["device"])
        if dev.type == "cuda":
            # what a training script on a fixed input size does; autotuning happens in warm-up
            torch.backends.cudnn.benchmark = True
            # convolutions in TF32 exactly when ours are (cuDNN's default is on); matrix products
            # in float32 on both sides
            torch.backends.cudnn.allow_tf32 = bool(cfg.get("allowTF32", False))
            torch.backends.cuda.matmul.allow_tf32 = False
        model = ResNet(cfg["model"], cfg["act"], cfg["input"][0], cfg["classes"], cfg["smallInput"]).to(dev).train()
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith("bias") else decay).append(p)
        o = cfg["optimizer"]
        groups = [{"params": decay, "weight_decay": o["weightDecay"]}, {"params": no_decay, "weight_decay": 0.0}]
        if o["kind"] == "sgd":
            opt = torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"])
        elif o["kind"] == "adamw":
            opt = torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"])
        else:
            raise ValueError("PyTorch %s has no %s optimizer (timm's LAMB is not part of torch)" % (torch.__version__, o["kind"].upper()))
        x = torch.randn([cfg["batch"]] + list(cfg["input"]), device=dev)
        y = torch.randint(0, cfg["classes"], (cfg["batch"],), device=dev)
        self.case = (dev, model, opt, x, y)
        return {"ok": True, "params": sum(p.numel() for p in model.parameters())}

    def step(self, n):
        if self.case is None:
            raise RuntimeError("step before setup")
        dev, model, opt, x, y = self.case
        cuda = dev.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        times, peak = [], None
        for _ in range(n):
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            sync()
            t0 = time.perf_counter()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            correct = (logits.argmax(1) == y).sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()
            correct.item()
            sync()
            times.append(time.perf_counter() - t0)
            if cuda:
                peak = max(peak or 0, torch.cuda.max_memory_allocated(dev))
        # Untimed: OpenMP's worker threads keep spinning for a while after the last parallel
        # region; let them go to sleep before the other side's step starts on the same cores.
        time.sleep(SETTLE_SECONDS)
        return {"ok": True, "times": times, "peakBytes": peak}


SETTLE_SECONDS = float(os.environ.get("ADASHIFT_TORCH_SETTLE_MS", "30")) / 1000.0


def main():
    peer = Peer()
    print(json.dumps({"ok": True, "torch": torch.__version__, "cuda": torch.cuda.is_available()}), flush=True)
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        req = {}
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "setup":
                resp = peer.setup(req)
            elif cmd == "step":
                resp = peer.step(int(req.get("n", 1)))
            elif cmd == "threads":
                torch.set_num_threads(int(req["n"]))
                resp = {"ok": True}
            elif cmd == "free":
                peer.case = None
                resp = {"ok": True}
            elif cmd == "quit":
                resp = {"ok": True}
            else:
                raise ValueError("unknown command %r" % cmd)
        except Exception as e:  # reply and keep serving
            resp = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
        print(json.dumps(resp), flush=True)
        if req.get("cmd") == "quit":
            break


if __name__ == "__main__":
    main()
