"""Time per training step: diffprop's Trainer against a bare PyTorch loop on the same model, batch and optimizer.

The bare loop is what one would write by hand: index a batch, draw t and eps, one MSE, backward,
AdamW step. The Trainer adds what a real run needs: EMA, gradient clipping, LR warm-up, the NaN
check, logging-ready loss reduction. Rounds alternate between the two so drift hits both alike;
the median per-step time over rounds is reported.
"""
from __future__ import annotations

import statistics
import tempfile
import time

import torch
from tqdm.auto import tqdm

from ..config import load_config
from ..process import q_sample
from ..runs import build_denoiser
from ..training import Trainer

CASES = {
    "mlp/gmm-grid": ["model.kind=mlp", "data.name=gmm-grid", "train.batch_size=256"],
    "unet-tiny/digits": ["model.kind=unet", "model.preset=tiny", "data.name=digits", "train.batch_size=128"],
}
ROUNDS, STEPS, WARMUP = 7, 20, 5


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _bare_loop(cfg, x: torch.Tensor, device):
    torch.manual_seed(cfg.seed)
    denoiser = build_denoiser(cfg, tuple(x.shape[1:])).to(device)
    net, sched = denoiser.net, denoiser.schedule
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    g = torch.Generator(device).manual_seed(0)
    B, T = cfg.train.batch_size, sched.T

    def step():
        x0 = x[torch.randint(0, len(x), (B,), generator=g, device=device)]
        t = torch.randint(1, T + 1, (B,), generator=g, device=device)
        eps = torch.randn(x0.shape, generator=g, device=device)
        loss = (net(q_sample(sched, x0, t, eps), t - 1) - eps).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _time(step, n, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n


def time_side_by_side(trainers: dict, rounds: int, steps: int) -> dict:
    """Median seconds per training step of each trainer (after one warm-up step each); every round times every
    trainer once, in turn, so that drift hits them alike."""
    for t in trainers.values():
        t.train_step()
    times = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, t in trainers.items():
            times[name].append(_time(t.train_step, steps, t.device))
    return {name: statistics.median(v) for name, v in times.items()}


def train_overhead() -> dict:
    cases = []
    bar = tqdm(total=len(CASES) * ROUNDS, desc="train-overhead rounds", unit="round")
    for name, overrides in CASES.items():
        cfg = load_config(None, overrides + [f"train.steps={10**9}"])
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, tmp, progress=False)
            bare = _bare_loop(cfg, trainer.x, trainer.device)
            ours = trainer.train_step
            _time(ours, WARMUP, trainer.device), _time(bare, WARMUP, trainer.device)
            t_ours, t_bare = [], []
            for _ in range(ROUNDS):
                t_ours.append(_time(ours, STEPS, trainer.device))
                t_bare.append(_time(bare, STEPS, trainer.device))
                bar.update()
        ms_ours, ms_bare = statistics.median(t_ours) * 1e3, statistics.median(t_bare) * 1e3
        cases.append({"case": name, "device": str(trainer.device), "batch_size": cfg.train.batch_size,
                      "trainer_ms_per_step": round(ms_ours, 3), "bare_ms_per_step": round(ms_bare, 3),
                      "ratio": round(ms_ours / ms_bare, 3),
                      "params": sum(p.numel() for p in trainer.denoiser.parameters())})
    bar.close()
    return {"target_ratio_max": 1.10, "rounds": ROUNDS, "steps_per_round": STEPS, "cases": cases}
