"""UFGAN's generator loss, term by term: how large each weighted term is and how hard it pulls
on the fused image, to choose a balanced transfer-loss (VGG style) weight.

For ``--pairs`` real pairs, ``--crops`` random patches each (the model's patch size), the
fused image F of a generator (``--checkpoint`` or a fresh paper-default UFGAN) and every L_G
term: its raw value, its weight, the weighted value, and the L2 norm of its gradient with
respect to F (what the optimiser feels through F). The last lines give the ``w_transfer_style``
(and ``w_transfer``) that would bring the style term's gradient to ``--target`` times the
content + SSIM gradient.

    python benchmarks/transfer_scale.py --data ../shared/data/tno \\
        --vgg-weights ~/.cache/torch/hub/checkpoints/vgg19-dcbdd8bf.pth
    python benchmarks/transfer_scale.py --data ../shared/data/tno --random-vgg   # dry run only

A random VGG (``--random-vgg``) checks the script runs; its numbers say nothing about real
features (Gram statistics of ImageNet filters differ by orders of magnitude).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusion_models import registry  # noqa: E402
from fusion_models.data import load_pair, open_pair_set, to_tensor255  # noqa: E402
from fusion_models.data.colour import plan_colour  # noqa: E402
from fusion_models.models.ufgan import transfer_loss  # noqa: E402
from fusion_models.models.vgg import VGG19Features, load_vgg19_features  # noqa: E402

TERMS = ("loss_adv", "loss_content", "loss_ssim", "loss_tr_content", "loss_tr_style",
         "loss_tr_tv")


def crops(data: Path, pairs: int, per_pair: int, patch: int, seed: int) -> tuple:
    """(IR, VI) batches (N, 1, patch, patch) in [-1, 1] from the first ``pairs`` pairs."""
    gen = torch.Generator().manual_seed(seed)
    ir, vi = [], []
    for pair in open_pair_set(data).pairs[:pairs]:
        a, b = (to_tensor255(x)[None] for x in load_pair(pair))
        plan = plan_colour(a, b, "keep_b_chroma")
        h, w = plan.luma_a.shape[-2:]
        for _ in range(per_pair):
            y = int(torch.randint(0, h - patch + 1, (1,), generator=gen))
            x = int(torch.randint(0, w - patch + 1, (1,), generator=gen))
            ir.append(plan.luma_a[..., y:y + patch, x:x + patch] / 127.5 - 1.0)
            vi.append(plan.luma_b[..., y:y + patch, x:x + patch] / 127.5 - 1.0)
    return torch.cat(ir), torch.cat(vi)


def weighted_terms(model, fused: torch.Tensor, ir: torch.Tensor, vi: torch.Tensor,
                   vgg: torch.nn.Module) -> dict[str, tuple[float, torch.Tensor]]:
    """term -> (weight, weighted value with a graph to ``fused``)."""
    cfg = model.config
    base = model.generator_losses(fused, ir, vi)  # config has transfer off: no VGG load
    tr = transfer_loss(vgg, fused, content_src=vi, style_src=ir, w_content=1.0, w_style=1.0,
                       w_tv=1.0)
    weights = {"loss_adv": cfg.w_adv, "loss_content": cfg.w_content, "loss_ssim": cfg.w_ssim,
               "loss_tr_content": cfg.w_transfer * cfg.w_transfer_content,
               "loss_tr_style": cfg.w_transfer * cfg.w_transfer_style,
               "loss_tr_tv": cfg.w_transfer * cfg.w_transfer_tv}
    raw = {**base, **tr}
    return {k: (weights[k], raw[k]) for k in TERMS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="an IR/VI set folder")
    parser.add_argument("--vgg-weights", default=None, help="torchvision VGG19 state dict")
    parser.add_argument("--random-vgg", action="store_true", help="dry run, no weights")
    parser.add_argument("--checkpoint", default=None, help="a UFGAN checkpoint (else fresh)")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--crops", type=int, default=2)
    parser.add_argument("--target", type=float, default=1.0,
                        help="wanted |grad style| / |grad (content + SSIM)|")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.vgg_weights or args.random_vgg):
        parser.error("give --vgg-weights PATH (or --random-vgg for a dry run)")
    torch.manual_seed(args.seed)
    if args.checkpoint:
        model, _ = registry.load_checkpoint(args.checkpoint)
    else:
        model = registry.build("ufgan", {"transfer": False})
    vgg = VGG19Features(frozen=True) if args.random_vgg else load_vgg19_features(args.vgg_weights)
    model.eval()
    ir, vi = crops(args.data, args.pairs, args.crops, model.config.patch, args.seed)
    with torch.no_grad():
        fused0 = model.generator(torch.cat([ir, vi], dim=1))
    fused = fused0.clone().requires_grad_(True)
    print(f"{'term':<16} {'weight':>10} {'raw':>11} {'weighted':>11} {'|grad_F|':>11}")
    norms = {}
    for name, (weight, value) in weighted_terms(model, fused, ir, vi, vgg).items():
        (grad,) = torch.autograd.grad(weight * value, fused, retain_graph=True)
        norms[name] = float(grad.norm())
        value = float(value.detach())
        print(f"{name:<16} {weight:>10.3g} {value:>11.4g} {weight * value:>11.4g} "
              f"{norms[name]:>11.4g}")
    pull = norms["loss_content"] + norms["loss_ssim"]
    cfg = model.config
    scale = args.target * pull / max(norms["loss_tr_style"], 1e-30)
    print(f"style / (content + SSIM) gradient ratio: {norms['loss_tr_style'] / pull:.4g}")
    print(f"balanced (ratio {args.target}): w_transfer_style = "
          f"{cfg.w_transfer_style * scale:.3g} at w_transfer = {cfg.w_transfer:g}")
    if args.random_vgg:
        print("(random VGG: a dry run; these numbers are not a measurement)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
