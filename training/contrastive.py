"""Contrastive pretraining (SimCLR) of a CNN's convolutional layers on unlabelled films.

Why: no pretrained chest or ImageNet weights can be used here (issue 18), and a CNN trained
from scratch on ~1,400 labelled films learns little beyond global brightness. Asking the
network first to recognise two augmented copies of the same film among all the others in a
batch (Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020) teaches it the films' anatomy without any label. The supervised
fit then starts from those weights.

Measured on issue 18's split (one seed, 2026-12-07; validation AUC abnormal / pneumonia vs
No Finding): from scratch 0.723 / 0.706, after 59 epochs of this pretraining 0.734 / 0.739.

It pretrains on the *training* films only, with the training augmentation, so nothing of the
validation or held-back patients is seen. The schedule is fixed by epochs (deterministic for a
seed); a time budget compresses it on a slower machine, as ``training.schedule`` does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    epochs: int = 60
    batch_size: int = 64  # films per batch: 2 x 64 views, 126 negatives each
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    projection: int = 64  # the projection head's output; the head is thrown away after
    time_budget_s: float = 30 * 60.0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class TwoViews:
    """Each film drawn twice through ``transform``: the positive pair of SimCLR."""

    def __init__(self, images: np.ndarray, transform):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.asarray(self.images[i], np.float32))
        return (torch.as_tensor(self.transform(x)).float(),
                torch.as_tensor(self.transform(x)).float())


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the 2N - 1 other views."""
    z = nn.functional.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    n = len(a)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return nn.functional.cross_entropy(sim, partner)


def pretrain(net: nn.Module, features: Callable[[nn.Module, torch.Tensor], torch.Tensor],
             width: int, images: np.ndarray, transform, cfg: PretrainConfig,
             device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Train ``net`` in place so that ``features(net, x)`` (a map [N, width, h, w]) tells
    films apart; returns what the card records (epochs run, seconds, first and last loss)."""
    from monai.utils import set_determinism
    from tqdm import tqdm

    from training.data import shuffled_loader
    from training.schedule import learning_rate, schedule_progress

    set_determinism(seed=cfg.seed)
    transform.set_random_state(seed=cfg.seed)
    head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, cfg.projection))
    net.to(device)
    head.to(device)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = shuffled_loader(TwoViews(images, transform), min(cfg.batch_size, len(images)),
                             cfg.seed, drop_last=True)
    steps, step, done, start = cfg.epochs * len(loader), 0, 0.0, time.monotonic()
    losses: list[float] = []
    bar = tqdm(total=steps, desc="contrastive pretraining", unit="step", disable=not progress)
    net.train()
    head.train()
    while done < 1.0 and steps:
        for a, b in loader:
            done = schedule_progress(step, steps, time.monotonic() - start, cfg.time_budget_s)
            if done >= 1.0:
                break
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg.lr, done)
            a, b = a.to(device), b.to(device)
            loss = nt_xent(head(features(net, a).mean((2, 3))),
                           head(features(net, b).mean((2, 3))), cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=f"{step / len(loader):.1f}")
    bar.close()
    net.eval()
    seconds = time.monotonic() - start
    log.info("contrastive pretraining: %d steps in %.0f s", step, seconds)
    tail = max(1, len(loader))
    return {
        "method": "SimCLR (NT-Xent) on the training films only, no labels; the training "
        "augmentation makes the two views; projection head discarded",
        "config": cfg.as_dict(),
        "epochs_run": round(step / max(len(loader), 1), 2),
        "time_limited": step < steps,
        "seconds": round(seconds, 1),
        "loss_first_epoch": round(float(np.mean(losses[:tail])), 4) if losses else None,
        "loss_last_epoch": round(float(np.mean(losses[-tail:])), 4) if losses else None,
        "chance_loss": round(float(np.log(2 * loader.batch_size - 1)), 4),
    }
