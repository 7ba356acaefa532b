"""VGG19 ``features`` defined in-project, and a loader for torchvision-format ImageNet weights.

Used by UFGAN's transfer ("style") loss (../shared/docs/models.md §1.4): the layer order is
torchvision's ``vgg19().features`` (16 3x3 convs, each followed by a ReLU, five 2x2 max-pools), so
a torchvision state dict (``features.0.weight`` ... ``features.34.bias``; ``classifier.*`` is
ignored) loads directly, without importing torchvision. Feature indices therefore mean the same
as in torchvision: 0 = conv1_1, 5 = conv2_1, 10 = conv3_1, 19 = conv4_1, 25 = conv4_4,
28 = conv5_1. The ReLUs are not in-place, so the activations taken at a conv index are the
pre-ReLU conv outputs (as UFGAN and the d2l.ai chapter it follows take them).

Inputs are grey (B, 1, H, W) in [-1, 1]; :meth:`VGG19Features.preprocess` maps them to [0, 1],
repeats them to 3 channels and applies the ImageNet mean/std normalisation the weights were
trained with. UFGAN fed [-1, 1] grey images without the normalisation (§1.4); that is a
deliberate deviation, asked for by the issue.

Nothing is downloaded: :func:`load_vgg19_features` reads a local file and raises one
FileNotFoundError naming every place it looked when the weights are absent. For tests, build the
same network with random weights and a width divisor (``VGG19Features(width_divisor=16)``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# torchvision's configuration "E" (VGG19): channel counts, "M" = 2x2 max-pool.
VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)
STYLE_LAYERS: tuple[int, ...] = (0, 5, 10, 19, 28)  # conv1_1 .. conv5_1, pre-ReLU
CONTENT_LAYERS: tuple[int, ...] = (25,)  # conv4_4, pre-ReLU
TORCHVISION_FILE = "vgg19-dcbdd8bf.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """torchvision's VGG19 ``features`` stack (37 modules) returning chosen activations.

    Args:
        width_divisor: divide every channel count by this (1 = the real VGG19; e.g. 16 gives a
            tiny random network with the same layer indices, for tests).
        frozen: no gradients to the weights and eval mode (gradients still reach the input).
    """

    def __init__(self, width_divisor: int = 1, frozen: bool = True) -> None:
        super().__init__()
        if width_divisor < 1:
            raise ValueError(f"width_divisor must be >= 1, got {width_divisor}")
        layers: list[nn.Module] = []
        cin = 3
        for item in VGG19_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                cout = max(1, int(item) // width_divisor)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=False)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def preprocess(self, x: Tensor) -> Tensor:
        """Grey (B, 1, H, W) in [-1, 1] -> (B, 3, H, W) ImageNet-normalised."""
        x = ((x + 1.0) / 2.0).expand(-1, 3, -1, -1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: Tensor, layers: Sequence[int]) -> dict[int, Tensor]:
        """Activations at ``layers`` (indices into ``features``) for grey x in [-1, 1].

        Args:
            x: (B, 1, H, W) in [-1, 1], H and W >= 2^(number of pools before the deepest layer).
            layers: indices; a conv index gives that conv's pre-ReLU output.

        Returns:
            ``{index: (B, C_index, H / 2^k, W / 2^k)}``; the stack stops at the deepest index.
        """
        wanted = set(layers)
        if not wanted or max(wanted) >= len(self.features) or min(wanted) < 0:
            raise ValueError(f"layers must be indices in [0, {len(self.features)}): {layers}")
        out: dict[int, Tensor] = {}
        x = self.preprocess(x)
        for i, module in enumerate(self.features):
            x = module(x)
            if i in wanted:
                out[i] = x
                if len(out) == len(wanted):
                    break
        return out


def _candidates(path: str | None) -> tuple[list[Path], list[str]]:
    """(existing weight files in preference order, every location tried as text)."""
    if path is not None:
        p = Path(path).expanduser()
        return ([p] if p.is_file() else []), [str(p)]
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(hub.glob("vgg19-*.pth"), key=lambda f: (f.name != TORCHVISION_FILE, f.name))
    return [f for f in found if f.is_file()], [str(hub / "vgg19-*.pth")]


def load_vgg19_features(path: str | None = None) -> VGG19Features:
    """Frozen, eval-mode VGG19 features with torchvision-format ImageNet weights from disk.

    Args:
        path: a torchvision VGG19 state dict (``vgg19-dcbdd8bf.pth``: ``features.*`` and
            ``classifier.*`` keys; the classifier is ignored). None: the torch hub cache,
            ``$TORCH_HOME/hub/checkpoints/vgg19-*.pth`` (``torch.hub.get_dir()``; TORCH_HOME
            defaults to ``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``), where
            ``torchvision.models.vgg19(weights="IMAGENET1K_V1")`` stores it.

    Raises:
        FileNotFoundError: no weight file; the message names every location tried.
        ValueError: the file is not a torchvision VGG19 state dict.
    """
    found, tried = _candidates(path)
    if not found:
        raise FileNotFoundError(
            "VGG19 ImageNet weights (torchvision format) not found; tried: "
            + ", ".join(tried)
            + f". Get torchvision's {TORCHVISION_FILE} (on a machine with internet access: "
            "python -c \"import torchvision; torchvision.models.vgg19(weights='IMAGENET1K_V1')\" "
            "puts it in the torch hub cache, or download "
            f"https://download.pytorch.org/models/{TORCHVISION_FILE}) and put it in the torch hub "
            "cache's checkpoints/ folder or pass its path (UFGAN: vgg_weights); nothing is "
            "downloaded automatically. UFGAN can also train without this loss (transfer: false)."
        )
    file = found[0]
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{file}: expected a state dict, got {type(state).__name__}")
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    net = VGG19Features(frozen=False)
    try:
        net.features.load_state_dict(feats)
    except RuntimeError as exc:
        raise ValueError(f"{file}: not a torchvision VGG19 state dict: {exc}") from None
    logger.info("loaded VGG19 ImageNet features from %s", file)
    return net.requires_grad_(False).eval()
