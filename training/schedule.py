"""The learning-rate schedule every image trainer uses: one-cycle, compressed to a time budget."""

from __future__ import annotations

import math


def schedule_progress(step: int, steps: int, elapsed_s: float, budget_s: float) -> float:
    """Fraction of training done: by steps, or by time when the time budget binds first.

    With a budget that does not bind (CI, a quiet machine) training is deterministic; on a
    slower or shared machine the schedule is compressed so the run still finishes annealed
    within the budget (``haidang train`` promises < 15 minutes on 2 cores).
    """
    return max(step / max(steps, 1), elapsed_s / budget_s if budget_s > 0 else 0.0)


def learning_rate(peak: float, done: float, warmup: float = 0.15) -> float:
    """One-cycle shape: linear warm-up from peak/25, then cosine annealing to ~0."""
    if done < warmup:
        return peak * (0.04 + 0.96 * done / warmup)
    q = min((done - warmup) / (1 - warmup), 1.0)
    return peak * (1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * q)))
