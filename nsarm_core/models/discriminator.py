"""A PatchGAN discriminator trained from scratch, and the hinge losses of adversarial decoder training.

Used by the CFW stage (docs/architecture.md E.11), as StableSR trains its CFW decoder adversarially.

Why from scratch: the adversarial terms of VQGAN/Real-ESRGAN need no pretrained weights; only their perceptual
(VGG/LPIPS) terms do, and those cannot be fetched offline. The network is VQGAN's ``NLayerDiscriminator``
(Esser et al. 2021, after pix2pix's PatchGAN): 4x4 convolutions, stride 2 in the first ``num_layers`` layers,
one logit per overlapping patch (a 70x70 receptive field for 3 layers). BatchNorm is replaced by spectral
normalisation (Miyato et al. 2018, as in Real-ESRGAN's U-Net discriminator): our batches are small (8 crops on
a CPU) and mix real and generated images in separate calls, where batch statistics would differ.

Losses (hinge, Lim & Ye 2017; VQGAN's ``hinge_d_loss``):
    L_D = mean(relu(1 - D(x_real))) + mean(relu(1 + D(x_fake)))
    L_G = -mean(D(x_fake))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """Image ``[B, 3, H, W]`` in [-1, 1] -> patch logits ``[B, 1, H', W']``.

    Args:
        base_channels: channels of the first layer (doubled per stride-2 layer, at most 8x).
        num_layers: stride-2 layers after the first; the receptive field grows with it (3: 70 px).
    """

    def __init__(self, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        c = base_channels
        layers: list[nn.Module] = [nn.Conv2d(3, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                spectral_norm(nn.Conv2d(c * prev, c * mult, 4, stride=stride, padding=1)),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(c * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: push real logits above +1 and generated ones below -1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: Tensor) -> Tensor:
    """Generator side of the hinge GAN: raise the discriminator's logits of generated images."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """VQGAN's balance ``||grad L_rec|| / ||grad L_G||`` at the generator's last layer (detached).

    It scales the adversarial term so that its gradient at the output layer is as large as the reconstruction
    term's, whatever the two losses' magnitudes (Esser et al. 2021, Eq. 7).
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
