"""The one network family the image trainers build: a MONAI ``ResNet`` (basic blocks) for
single-channel greyscale images, 2-D. The trainers differ only in size and stem: a 224-px
radiograph wants the usual stride-2 7x7 stem and max-pool, a 28-px MedMNIST image a 3x3
stem at stride 1 and no pooling, so that its few pixels are not thrown away at once."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def greyscale_resnet(layers: Sequence[int], widths: Sequence[int], classes: int, *,
                     small_images: bool = False) -> nn.Module:
    from monai.networks.nets import ResNet

    return ResNet(
        block="basic",
        layers=list(layers),
        block_inplanes=list(widths),
        spatial_dims=2,
        n_input_channels=1,
        conv1_t_size=3 if small_images else 7,
        conv1_t_stride=1 if small_images else 2,
        no_max_pool=small_images,
        num_classes=classes,
    )
