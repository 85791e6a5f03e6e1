"""Contrastive pretraining (training.contrastive): the loss, and that it learns on real films.

The learning test pretrains a narrow network on 64 real NIH films at 64 px for a few epochs:
its loss must fall well below where it starts, near chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from training.contrastive import PretrainConfig, nt_xent, pretrain  # noqa: E402
from training.cxr_triage import (  # noqa: E402
    SPEC,
    TriageConfig,
    build_member,
    feature_map,
    fit,
    load_labelled_folder,
    train_transforms,
)

NIH = Path(__file__).resolve().parents[2] / "datasets" / "nih-cxr"
SIZE = 64


def test_nt_xent_is_low_for_matching_pairs_and_chance_for_random_ones():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 8, generator=g)
    matched = nt_xent(a, a + 0.01 * torch.randn(16, 8, generator=g), temperature=0.1)
    unrelated = nt_xent(a, torch.randn(16, 8, generator=g), temperature=1.0)
    assert matched.item() < 0.1
    assert abs(unrelated.item() - np.log(31)) < 0.5


@pytest.fixture(scope="module")
def films():
    spec = {**SPEC, "size": [SIZE, SIZE]}
    return load_labelled_folder(NIH, spec, limit=64), spec


def test_pretraining_learns_on_real_films(films):
    """The loss falls from chance, on fresh random views each epoch, and the weights move."""
    data, spec = films
    torch.manual_seed(0)
    net = build_member(TriageConfig(widths=[8, 16, 32, 64]))
    start = net.conv1.weight.detach().clone()
    report = pretrain(net, feature_map, 64, data.images, train_transforms(spec),
                      PretrainConfig(epochs=8, batch_size=32, lr=3e-3), torch.device("cpu"),
                      progress=False)
    assert report["epochs_run"] == 8 and not report["time_limited"]
    assert report["loss_first_epoch"] > report["chance_loss"] - 0.3  # starts near chance
    assert report["loss_last_epoch"] < report["loss_first_epoch"] - 0.3
    assert (net.conv1.weight.detach() - start).norm() > 0.01
    assert not net.training  # handed back ready for the supervised fit's own modes


def test_fit_starts_every_member_from_the_pretraining(films):
    data, spec = films
    cfg = TriageConfig(epochs=1, seeds=[0, 1], widths=[8, 16, 32, 64], batch_size=32,
                       pretrain_epochs=2, pixel_branch=False)
    result = fit(data, cfg, progress=False, spec=spec)
    assert result.extra["pretraining"]["epochs_run"] == 2
    scratch = fit(data, TriageConfig(**{**cfg.as_dict(), "pretrain_epochs": 0}),
                  progress=False, spec=spec)
    assert "pretraining" not in scratch.extra
    # one epoch of fine-tuning moves the first layer only a little from where it started:
    # both members stay closer to each other than two members trained from scratch
    def first_layer(r, k):
        return r.model.members[k].conv1.weight.detach()

    pretrained_gap = (first_layer(result, 0) - first_layer(result, 1)).norm()
    scratch_gap = (first_layer(scratch, 0) - first_layer(scratch, 1)).norm()
    assert pretrained_gap < 0.5 * scratch_gap
