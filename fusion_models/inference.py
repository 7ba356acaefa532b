"""Inference-only copies of fusion models: what ``orchestrator fuse`` runs (pure PyTorch).

:func:`prepare_for_inference` returns an eval-mode copy of a :class:`FusionModel` (its
``fuse`` contract unchanged: (B, 1, H, W) sources in [0, 1] -> (B, 1, H, W) fused in [0, 1])
with, in this order:

1. parametrizations baked in (spectral norm: the weight W / sigma computed once from the stored
   u, v, exactly what eval mode recomputes on every forward);
2. every Conv2d -> BatchNorm2d pair folded (BN replaced by ``Identity``, the conv's weight and
   bias rescaled). A pair is folded only when a traced forward on a small probe shows that the
   BN's every input is the conv's output and that nothing else reads that output (a shared
   conv, such as DDcGAN's second pass of ``dec0.conv``, stays as it is), and only when the
   model normalises with running statistics (``inference_bn_stats() == "running"``: per-image
   BN is an instance norm, nothing to fold). The folded copy is checked against the unfolded
   one on the probe; a disagreement above ``FOLD_ATOL`` keeps the BN layers (logged);
3. optionally channels_last weights (oneDNN then runs NHWC convolutions without reorders);
4. optionally bf16 autocast (``amp_dtype``: the model's own autocast regions only);
5. optionally ``torch.compile`` of the model's ``_fuse`` (one graph per input shape; on CUDA
   replayed as CUDA graphs).

:func:`cached_inference_model` keeps one prepared copy per (model, options) per process and
prepares again when the model's parameters or buffers were modified in place since.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from fusion_models.models.base import FusionModel

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
#: largest |folded - unfolded| accepted on the probe (outputs in [0, 1]; 1/255 = 3.9e-3)
FOLD_ATOL = 1e-4
#: side of the (1, 1, side, side) probe images used to trace and to check the folding
PROBE_SIDE = 64
#: bf16 autocast vs fp32 on 8-bit fused images, in grey levels: mean |diff| and its 99th
#: percentile. Measured on every registered model (random LeCun weights, BN statistics set on
#: the data, 40 x 56 pairs; tests/test_inference.py): mean 0.01-3.3 (UFGAN's U-Net the most),
#: 99th percentile <= 16. Single pixels can differ more (35 seen), and a decision-map model
#: (MFIF-GAN) can flip a pixel's source (up to the A-B difference).
BF16_MEAN_TOL, BF16_P99_TOL = 4.0, 16.0

_Conv = nn.Conv2d | nn.ConvTranspose2d
#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@dataclass(frozen=True)
class InferenceOptions:
    """How :func:`prepare_for_inference` prepares a model.

    Attributes:
        fold_bn: fold BatchNorm2d into the preceding convolution (running-statistics BN only).
        channels_last: convert 4-D weights to ``torch.channels_last``.
        compile: ``torch.compile`` the model's ``_fuse`` (first call per shape compiles; on
            CUDA also captured as a CUDA graph and replayed).
        precision: ``fp32`` or ``bf16`` (autocast inside the model's autocast regions).
    """

    fold_bn: bool = True
    channels_last: bool = True
    compile: bool = False
    precision: Precision = "fp32"


class _ReadTracer(TorchFunctionMode):
    """Records, for every tensor produced by a watched conv, which torch functions read it."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: dict[int, list[tuple[nn.Module | None, str]]] = {}
        self.keep: list[Tensor] = []  # traced tensors stay alive, so their ids stay unique
        self.inside: list[nn.Module] = []

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        """Run ``func``; when it returns tensors, note it as a reader of its traced inputs
        (``x.shape``, ``x.dim()`` ... return no tensor and do not count)."""
        out = func(*args, **(kwargs or {}))
        produced = tree_flatten(out)[0]
        if any(isinstance(t, Tensor) for t in produced):
            where = self.inside[-1] if self.inside else None
            for t in tree_flatten((args, kwargs))[0]:
                if isinstance(t, Tensor) and id(t) in self.readers:
                    self.readers[id(t)].append((where, getattr(func, "__name__", str(func))))
        return out


@contextmanager
def _traced(model: nn.Module) -> Iterator[tuple[_ReadTracer, dict, dict]]:
    """Hooks + function mode around one forward: yields the tracer, ``conv -> output ids`` and
    ``bn -> input ids`` (filled while the block runs)."""
    tracer = _ReadTracer()
    conv_out: dict[nn.Module, list[int]] = {}
    bn_in: dict[nn.Module, list[int]] = {}

    def conv_hook(mod: nn.Module, _: tuple, out: Tensor) -> None:
        conv_out.setdefault(mod, []).append(id(out))
        tracer.readers[id(out)] = []
        tracer.keep.append(out)

    def bn_pre(mod: nn.Module, inputs: tuple) -> None:
        bn_in.setdefault(mod, []).append(id(inputs[0]))
        tracer.keep.append(inputs[0])
        tracer.inside.append(mod)

    def bn_post(mod: nn.Module, _: tuple, __: Tensor) -> None:
        tracer.inside.pop()

    handles = []
    for m in model.modules():
        if isinstance(m, _Conv):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.BatchNorm2d):
            handles += [m.register_forward_pre_hook(bn_pre), m.register_forward_hook(bn_post)]
    try:
        with tracer:
            yield tracer, conv_out, bn_in
    finally:
        for h in handles:
            h.remove()


def _foldable(conv: nn.Module, bn: nn.BatchNorm2d) -> bool:
    """Layer types and shapes that fold exactly (grouped transposed convs do not)."""
    if bn.running_mean is None or bn.running_var is None:
        return False
    if isinstance(conv, nn.ConvTranspose2d):
        return conv.groups == 1 and conv.out_channels == bn.num_features
    return isinstance(conv, nn.Conv2d) and conv.out_channels == bn.num_features


def conv_bn_pairs(model: FusionModel, a: Tensor, b: Tensor
                  ) -> tuple[list[tuple[_Conv, nn.BatchNorm2d]], Tensor]:
    """The (conv, bn) pairs of ``model`` that fold exactly, found by tracing ``model.fuse(a, b)``
    ((B, 1, H, W) in [0, 1]), and that call's output.

    A pair qualifies when the BN runs as often as the conv, each of its inputs is one of the
    conv's outputs, and that output is read by nothing but the BN's ``batch_norm``.
    """
    with _traced(model) as (tracer, conv_out, bn_in), torch.no_grad():
        out = model.fuse(a, b)
    owner = {t: conv for conv, ids in conv_out.items() for t in ids}
    pairs = []
    for bn, ids in bn_in.items():
        convs = {owner.get(t) for t in ids}
        if len(convs) != 1 or None in convs:
            continue
        conv = convs.pop()
        only_bn = all(tracer.readers[t] == [(bn, "batch_norm")] for t in conv_out[conv])
        if len(conv_out[conv]) == len(ids) and only_bn and _foldable(conv, bn):
            pairs.append((conv, bn))
    return pairs, out


@torch.no_grad()
def fold_bn_into_conv(conv: _Conv, bn: nn.BatchNorm2d) -> None:
    """``bn(conv(x)) == conv'(x)`` in eval mode: rescale ``conv``'s weight and bias in place
    (a bias is added when the conv has none); computed in float64."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -mean * scale + (bn.bias.double() if bn.bias is not None else 0.0)
    w = conv.weight
    shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
    w.copy_((w.double() * scale.view(shape)).to(w.dtype))
    old = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    new = (old * scale + shift).to(w.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new, requires_grad=False)
    else:
        conv.bias.copy_(new)


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is registered as a child."""
    for parent in model.modules():
        for name, child in list(parent._modules.items()):
            if child is old:
                parent._modules[name] = new


def bake_parametrizations(model: nn.Module) -> int:
    """Replace every parametrized tensor by its current (eval-mode) value; returns how many.

    Unlike ``parametrize.remove_parametrizations`` this leaves the ``Parametrized*`` classes
    alone (a deep copy shares them with the original, which must keep its properties).
    """
    model.eval()
    baked = 0
    for m in list(model.modules()):
        if not parametrize.is_parametrized(m):
            continue
        with torch.no_grad():
            values = {name: getattr(m, name).detach().clone() for name in m.parametrizations}
        m.__class__ = m.__class__.__bases__[0]  # ParametrizedConv2d -> Conv2d
        del m._modules["parametrizations"]
        for name, value in values.items():
            m.register_parameter(name, nn.Parameter(value, requires_grad=False))
        baked += len(values)
    return baked


def _probe(device: torch.device) -> tuple[Tensor, Tensor]:
    """Two deterministic (1, 1, PROBE_SIDE, PROBE_SIDE) images in [0, 1]."""
    gen = torch.Generator().manual_seed(1234)
    a, b = torch.rand(2, 1, 1, PROBE_SIDE, PROBE_SIDE, generator=gen)
    return a.to(device), b.to(device)


def fold_batchnorms(model: FusionModel) -> tuple[int, float]:
    """Fold every qualifying Conv -> BN pair of ``model`` in place (see the module docstring).

    Returns:
        ``(number folded, largest change of the probe's fused output)``; ``(0, 0.0)`` when the
        model normalises with per-image statistics or has nothing to fold.
    """
    if model.inference_bn_stats() != "running":
        return 0, 0.0
    a, b = _probe(model.device)
    try:
        pairs, before = conv_bn_pairs(model, a, b)
    except (RuntimeError, ValueError) as exc:  # e.g. a configuration that needs larger images
        log.warning("%s: no BN folded, the %d x %d probe does not fuse (%s)", model.name,
                    PROBE_SIDE, PROBE_SIDE, exc)
        return 0, 0.0
    if not pairs:
        return 0, 0.0
    for conv, bn in pairs:
        fold_bn_into_conv(conv, bn)
        _replace(model, bn, nn.Identity())
    with torch.no_grad():
        err = (model.fuse(a, b).float() - before.float()).abs().max().item()
    return len(pairs), err


def _inference_copy(model: FusionModel) -> tuple[FusionModel, int]:
    """An eval-mode, gradient-free deep copy of ``model`` without its optimisers (not needed
    to fuse), parametrizations baked; and how many were baked."""
    optimizers, model.optimizers = model.optimizers, {}
    try:
        prepared = copy.deepcopy(model)
    finally:
        model.optimizers = optimizers
    prepared.requires_grad_(False)
    return prepared, bake_parametrizations(prepared)


def prepare_for_inference(model: FusionModel, *, fold_bn: bool = True,
                          channels_last: bool = True, compile: bool = False,
                          precision: Precision = "fp32") -> FusionModel:
    """An eval-mode, gradient-free copy of ``model`` prepared as the module docstring says.

    ``model`` is not modified. The copy's :meth:`~FusionModel.fuse` takes and returns the same
    as the original's ((B, 1, H, W) in [0, 1], on ``model.device``); outputs agree to float
    rounding in fp32 (<= ``FOLD_ATOL`` on the probe), to ``BF16_*_TOL`` grey levels in bf16.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
    prepared, baked = _inference_copy(model)
    folded = 0
    if fold_bn:
        folded, err = fold_batchnorms(prepared)
        if err > FOLD_ATOL:
            log.warning("%s: folding BN changed the output by %.3g > %.1g; BN layers kept",
                        model.name, err, FOLD_ATOL)
            (prepared, baked), folded = _inference_copy(model), 0
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    prepared.amp_dtype = torch.bfloat16 if precision == "bf16" else None
    if compile:
        prepared._fuse = _compiled(prepared._fuse, prepared.device.type == "cuda")
    log.info("%s prepared for inference: %d parametrization(s) baked, %d BN folded, "
             "channels_last=%s, %s, compile=%s", model.name, baked, folded, channels_last,
             precision, compile)
    return prepared


def _compiled(fuse: Callable[[Tensor, Tensor], Tensor], cuda_graphs: bool
              ) -> Callable[[Tensor, Tensor], Tensor]:
    """``torch.compile`` of a model's ``_fuse``: inductor with freezing (weights become
    constants: prepacked, conv + activation fused), one graph per input shape; on CUDA the
    compiled forward is also captured and replayed as a CUDA graph (``triton.cudagraphs``, what
    ``mode="reduce-overhead"`` sets), its output copied out of the graph's memory pool, which
    the next replay overwrites."""
    compiled = torch.compile(fuse, dynamic=False,
                             options={"freezing": True, "triton.cudagraphs": cuda_graphs})
    if not cuda_graphs:
        return compiled

    def replay(a: Tensor, b: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # earlier outputs are no longer read
        return compiled(a, b).clone()

    return replay


def _state_version(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def cached_inference_model(model: FusionModel, options: InferenceOptions) -> FusionModel:
    """:func:`prepare_for_inference` of ``model`` with ``options``, prepared once per process
    (again after ``model``'s weights, buffers or device changed)."""
    key = (str(model.device), _state_version(model))
    with _LOCK:
        entry = _CACHE.setdefault(model, {})
        hit = entry.get(options)
        if hit is not None and hit[0] == key:
            return hit[1]
        prepared = prepare_for_inference(
            model, fold_bn=options.fold_bn, channels_last=options.channels_last,
            compile=options.compile, precision=options.precision)
        entry[options] = (key, prepared)
        return prepared


def retain_freed_memory() -> bool:
    """Keep freed memory in this process's heap (glibc: no mmap'd chunks, no trimming).

    Every forward at 640 x 480 allocates and frees activations of 10-300 MB; glibc maps each
    of them afresh and the kernel faults and zeroes every page again (DenseFuse on 2 cores:
    ~0.6 s of system time per pair, as much as its convolutions). With this the next forward
    reuses the pages; the process keeps its peak memory. Process-wide, for CPU inference
    processes (``orchestrator fuse``); returns False where it does not apply (not glibc).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # man mallopt: M_TRIM_THRESHOLD -1 disables trimming completely
    done = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
    log.debug("glibc heap retains freed memory: %s", done)
    return done
