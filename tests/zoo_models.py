"""Real architecture families at tiny widths, written by hand (torchvision/timm do not install next
to the pinned CPU torch here), for the geometry conformance suite (tests/test_zoo.py) and the
benchmark (benchmarks/bench_zoo.py). ``ZOO`` maps a family name to (factory, layers to check).
Every factory takes ``width`` (channels of the first stage) and returns a seeded module in eval
mode; the layer names are the ``named_modules()`` names the suite dissects.
"""

from __future__ import annotations

import torch
from torch import nn


def _seeded(module: nn.Module) -> nn.Module:
    return module.eval()


def plain(width: int = 8) -> nn.Module:
    """AlexNet/VGG: convolutions, in-place ReLUs, max pooling, a classifier."""
    torch.manual_seed(0)
    w = width
    net = nn.Sequential()
    for name, layer in [
        ("conv1", nn.Conv2d(3, w, 5, 2, 2)),
        ("relu1", nn.ReLU(inplace=True)),
        ("pool1", nn.MaxPool2d(3, 2, 1)),
        ("conv2", nn.Conv2d(w, 2 * w, 3, padding=1)),
        ("relu2", nn.ReLU(inplace=True)),
        ("conv3", nn.Conv2d(2 * w, 2 * w, 3, padding=1)),
        ("relu3", nn.ReLU(inplace=True)),
        ("pool3", nn.MaxPool2d(2)),
        ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flat", nn.Flatten()),
        ("fc", nn.Linear(2 * w, 5)),
    ]:
        net.add_module(name, layer)
    return _seeded(net)


class Basic(nn.Module):
    """ResNet basic block: two 3x3 convolutions with BatchNorm, in-place ReLU, residual add."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1, strided 3x3, 1x1, residual add."""

    def __init__(self, cin: int, mid: int, stride: int = 1):
        super().__init__()
        cout = 4 * mid
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.down(x))


class ResNet(nn.Module):
    def __init__(self, block: str, width: int):
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
        )
        self.pool = nn.MaxPool2d(3, 2, 1)
        if block == "basic":
            self.layer1, self.layer2 = Basic(w, w), Basic(w, 2 * w, 2)
            out = 2 * w
        else:
            self.layer1, self.layer2 = Bottleneck(w, w // 2), Bottleneck(2 * w, w // 2, 2)
            out = 2 * w
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(out, 5))

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.pool(self.stem(x)))))


def resnet_basic(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return _seeded(_randomise_bn(ResNet("basic", width)))


def resnet_bottleneck(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return _seeded(_randomise_bn(ResNet("bottleneck", width)))


def _randomise_bn(net: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics (as after training)."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(self.relu(self.norm(x)))], 1)


class DenseNet(nn.Module):
    """Dense blocks (concatenation) and a transition (1x1 conv, average pooling)."""

    def __init__(self, width: int):
        super().__init__()
        w = width
        self.stem = nn.Conv2d(3, w, 3, 2, 1, bias=False)
        self.block1 = nn.Sequential(DenseLayer(w, w // 2), DenseLayer(w + w // 2, w // 2))
        self.transition = nn.Sequential(
            nn.BatchNorm2d(2 * w), nn.ReLU(), nn.Conv2d(2 * w, w, 1), nn.AvgPool2d(2)
        )
        self.block2 = nn.Sequential(DenseLayer(w, w // 2), DenseLayer(w + w // 2, w // 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, 5))

    def forward(self, x):
        return self.head(self.block2(self.transition(self.block1(self.stem(x)))))


def densenet(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return _seeded(_randomise_bn(DenseNet(width)))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, max(channels // 4, 1), 1)
        self.fc2 = nn.Conv2d(max(channels // 4, 1), channels, 1)
        nn.init.constant_(self.fc1.bias, 0.5)  # live units, as after training

    def forward(self, x):
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV3/EfficientNet block: expand, depthwise 3x3, SE, project, residual."""

    def __init__(self, channels: int, expand: int, se: bool):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.Hardswish())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.Hardswish()
        )
        self.se = SqueezeExcite(hidden) if se else nn.Identity()
        self.project = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class MobileNet(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1), nn.Hardswish())
        self.block1 = InvertedResidual(w, 2, se=False)
        self.down = nn.Sequential(nn.Conv2d(w, w, 3, 2, 1, groups=w), nn.ReLU6())
        self.block2 = InvertedResidual(w, 2, se=True)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 5))

    def forward(self, x):
        return self.head(self.block2(self.down(self.block1(self.stem(x)))))


def mobilenet(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return _seeded(MobileNet(width))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, LayerNorm over channels (channels-last), MLP, layer scale, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pw1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), 0.5))
        self.out = nn.Identity()

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pw2(self.act(self.pw1(self.norm(y)))) * self.gamma
        return self.out(x + y.permute(0, 3, 1, 2))


class ConvNeXt(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        w = width
        self.stem = nn.Conv2d(3, w, 4, 4)
        self.stage1 = ConvNeXtBlock(w)
        self.down = nn.Conv2d(w, 2 * w, 2, 2)
        self.stage2 = ConvNeXtBlock(2 * w)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, 5))

    def forward(self, x):
        return self.head(self.stage2(self.down(self.stage1(self.stem(x)))))


def convnext(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return _seeded(ConvNeXt(width))


class Decoder(nn.Module):
    """FPN/U-Net style: a stride-8 encoder, then x2 upsampling with lateral skips."""

    def __init__(self, width: int):
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(w, w, 3, 2, 1), nn.ReLU())
        self.enc3 = nn.Sequential(nn.Conv2d(w, w, 3, 2, 1), nn.ReLU())
        self.up2 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.lat2 = nn.Conv2d(w, w, 1)
        self.dec2 = nn.Conv2d(w, w, 3, padding=1)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec1 = nn.Conv2d(w, w, 3, padding=1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(self.up2(e3) + self.lat2(e2))
        return self.dec1(self.up1(d2) + e1)


def decoder(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return _seeded(Decoder(width))


def dilated(width: int = 8) -> nn.Module:
    """Dilated convolutions (DeepLab style) after a strided stem."""
    torch.manual_seed(0)
    w = width
    net = nn.Sequential()
    for name, layer in [
        ("stem", nn.Conv2d(3, w, 3, 2, 1)),
        ("relu0", nn.ReLU()),
        ("dil2", nn.Conv2d(w, w, 3, padding=2, dilation=2)),
        ("relu1", nn.ReLU()),
        ("dil4", nn.Conv2d(w, w, 3, padding=4, dilation=4)),
    ]:
        net.add_module(name, layer)
    return _seeded(net)


class ViT(nn.Module):
    """A small vision transformer: patch embedding, class token, position embedding, blocks."""

    def __init__(self, width: int, size: int = 32, patch: int = 8):
        super().__init__()
        w = 2 * width
        self.patch = nn.Conv2d(3, w, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, w) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 1 + (size // patch) ** 2, w) * 0.1)
        self.block = nn.TransformerEncoderLayer(w, 2, 2 * w, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(w)
        self.fc = nn.Linear(w, 5)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos
        return self.fc(self.norm(self.block(tokens))[:, 0])


def vit(width: int = 8, size: int = 32) -> nn.Module:
    """For inputs of ``size`` pixels (the position embedding is fixed), 8 px patches below 64."""
    torch.manual_seed(0)
    return _seeded(ViT(width, size, 8 if size < 64 else 16))


#: family -> (factory, {layer: "local" or "global"}) checked by the conformance suite.
ZOO = {
    "plain": (plain, {"conv1": "local", "pool1": "local", "conv3": "local", "pool3": "local"}),
    "resnet_basic": (
        resnet_basic,
        {
            "stem": "local",
            "pool": "local",
            "layer1": "local",
            "layer2.conv1": "local",
            "layer2": "local",
        },
    ),  # fmt: skip
    "resnet_bottleneck": (
        resnet_bottleneck,
        {"layer1.conv2": "local", "layer2": "local"},
    ),  # fmt: skip
    "densenet": (densenet, {"block1": "local", "transition": "local", "block2": "local"}),
    "mobilenet": (
        mobilenet,
        {"block1": "local", "down": "local", "block2.se": "global", "block2": "global"},
    ),  # fmt: skip
    "convnext": (convnext, {"stem": "local", "stage1": "local", "stage2": "local"}),
    "decoder": (decoder, {"enc3": "local", "dec2": "local", "dec1": "local"}),
    "dilated": (dilated, {"dil2": "local", "dil4": "local"}),
    "vit": (vit, {"patch": "local"}),
}
