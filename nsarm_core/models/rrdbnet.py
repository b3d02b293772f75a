"""RRDBNet: the generator of ESRGAN / Real-ESRGAN, used here as a peer model (``realesrgan-x4plus``).

Papers: ESRGAN (Wang et al., ECCVW 2018, arXiv 1809.00219) Sec. 3.1 / Fig. 4 (Residual-in-Residual Dense Block,
residual scaling 0.2) and Real-ESRGAN (Wang et al., ICCVW 2021, arXiv 2107.10833) Sec. 3.3 (the same generator,
x4 by two nearest-neighbour x2 upsamplings). NSARM (arXiv 2510.00820) compares against Real-ESRGAN in Table 1 and
Fig. 4; this module lets ``nsarm`` run that comparison offline. It is written from the papers; the module names
(``conv_first``, ``body.N.rdbK.convJ``, ``conv_body``, ``conv_up1``, ...) follow the public RealESRGAN_x4plus
checkpoint's key names, so a state dict from any RRDBNet x4 release maps one to one.

Data flow (x4):
    x -> conv_first -> feat; body = RRDB x num_block -> conv_body; feat = feat + body
    -> nearest x2 -> conv_up1 -> lrelu -> nearest x2 -> conv_up2 -> lrelu -> conv_hr -> lrelu -> conv_last

Shape legend: B batch; C = num_feat (64); G = num_grow_ch (32); H, W LR size; the output is [B, 3, 4H, 4W].
The network is fully convolutional (no fixed window); values are in [0, 1] but not clamped by the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsarm_core.errors import ConfigError

__all__ = ["RRDBNetConfig", "PRESETS", "ResidualDenseBlock", "RRDB", "RRDBNet", "X4PLUS_NUM_PARAMS"]

X4PLUS_NUM_PARAMS = 16_697_987
"""Parameters of RealESRGAN_x4plus (23 blocks, 64 features, 32 growth channels); checked by the tests."""

# ESRGAN Sec. 3.1: every dense block's output and every RRDB's output is scaled by 0.2 before the residual add,
# which keeps the very deep (23 x 3 x 5 = 345 conv) trunk stable; the checkpoint was trained with it.
_RESIDUAL_SCALE = 0.2
_LRELU_SLOPE = 0.2


@dataclass(frozen=True)
class RRDBNetConfig:
    """Sizes of an RRDBNet.

    Attributes:
        num_in_ch: input channels (3, RGB).
        num_out_ch: output channels (3, RGB).
        num_feat: trunk width C.
        num_block: RRDB blocks in the trunk.
        num_grow_ch: growth channels G of each dense block.
        scale: upscaling factor; only 4 (two nearest x2 steps, Real-ESRGAN's x4plus) is implemented.
    """

    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32
    scale: int = 4

    def __post_init__(self) -> None:
        if self.scale != 4:
            raise ConfigError(
                f"RRDBNetConfig.scale must be 4 (two nearest x2 upsamplings, Real-ESRGAN x4plus), got {self.scale}"
            )
        for name in ("num_in_ch", "num_out_ch", "num_feat", "num_block", "num_grow_ch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"RRDBNetConfig.{name} must be a positive integer, got {value!r}")


PRESETS: dict[str, RRDBNetConfig] = {
    # RealESRGAN_x4plus: 16,697,987 parameters.
    "x4plus": RRDBNetConfig(),
    # For tests: the same graph with 1 block and 8/4 channels (a few thousand parameters).
    "tiny": RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4),
}


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the concatenation of the input and all earlier outputs (ESRGAN Fig. 4).

    ``[B, C, H, W] -> [B, C, H, W]``: ``x + 0.2 * conv5(cat(x, x1, x2, x3, x4))``.
    """

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        c, g = num_feat, num_grow_ch
        self.conv1 = _conv(c, g)
        self.conv2 = _conv(c + g, g)
        self.conv3 = _conv(c + 2 * g, g)
        self.conv4 = _conv(c + 3 * g, g)
        self.conv5 = _conv(c + 4 * g, c)

    def forward(self, x: Tensor) -> Tensor:
        x1 = F.leaky_relu(self.conv1(x), _LRELU_SLOPE)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), _LRELU_SLOPE)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), _LRELU_SLOPE)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), _LRELU_SLOPE)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))  # no activation: a residual branch
        return x5 * _RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual in Residual Dense Block: three dense blocks and a scaled outer residual."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * _RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """The x4 RRDBNet generator: ``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, 4H, 4W]`` (not clamped).

    Args:
        config: sizes (``PRESETS["x4plus"]`` for Real-ESRGAN x4plus).
    """

    def __init__(self, config: RRDBNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or PRESETS["x4plus"]
        self.conv_first = _conv(cfg.num_in_ch, cfg.num_feat)
        self.body = nn.Sequential(*(RRDB(cfg.num_feat, cfg.num_grow_ch) for _ in range(cfg.num_block)))
        self.conv_body = _conv(cfg.num_feat, cfg.num_feat)
        self.conv_up1 = _conv(cfg.num_feat, cfg.num_feat)
        self.conv_up2 = _conv(cfg.num_feat, cfg.num_feat)
        self.conv_hr = _conv(cfg.num_feat, cfg.num_feat)
        self.conv_last = _conv(cfg.num_feat, cfg.num_out_ch)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv_first(x)  # [B, C, H, W]
        feat = feat + self.conv_body(self.body(feat))
        # Real-ESRGAN Sec. 3.3: nearest-neighbour x2 followed by a conv, twice (no sub-pixel shuffle).
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), _LRELU_SLOPE)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), _LRELU_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), _LRELU_SLOPE))  # [B, 3, 4H, 4W]

    def num_parameters(self) -> int:
        """Total number of parameters (weights and biases)."""
        return sum(p.numel() for p in self.parameters())
