"""Metric conventions (presets) and the metric specification record.

Every choice on which the field's evaluators disagree (see ../shared/docs/metrics.md §3 and §5)
is a named field of :class:`Convention`; the presets ``cdd`` (default), ``vifb``, ``tang`` and
``mpy`` set them all. Metric functions share one signature::

    fn(fused, a, b, convention) -> Tensor[B]

with ``fused``, ``a`` and ``b`` batched float tensors of shape (B, 1, H, W) holding grey values
in 0..255 (never rescaled to 0..1), on any device. Colour handling (grey conversion, VIFB's
per-channel averaging) happens one level up, in :func:`fusion_models.metrics.compute_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Literal

from torch import Tensor

MiBase = Literal["e", "2"]
SsimVariant = Literal["cdd", "wang", "mpy", "tang_mean", "vifb"]
MsSsimVariant = Literal["wang", "mpy", "mef"]
PsnrPeak = Literal["max_f", "255"]
MseScale = Literal["255", "unit", "vifb_sqrt_sse"]
AgNorm = Literal["hw", "h1w1"]
SfNorm = Literal["diff", "hw"]
FmiFeature = Literal["none", "dct", "wavelet", "edge", "gradient"]
ColourRule = Literal["gray_cv2", "gray_matlab", "gray_pil", "vifb_per_channel"]


@dataclass(frozen=True)
class Convention:
    """One evaluator's full set of choices.

    Attributes:
        name: preset name this convention came from (``custom`` after overrides).
        mi_base: logarithm of MI: ``e`` (nats, CDD/VIFB) or ``2`` (bits, TANG/MPY).
        mi_tang_saturate: TANG's joint histogram indexes with saturating ``uint8 + 1``, merging
            levels 254 and 255 in the joint (not the marginal) histogram.
        en_eps: constant added inside the log of EN (MPY: 1e-7; everyone else 0).
        ssim_variant: ``cdd`` (7x7 box, sample cov., data_range 2, sum), ``wang`` (Gaussian
            11/1.5, population, L=255, mean of the two), ``mpy`` (Gaussian 11/1.5 valid, L=1,
            sum), ``tang_mean`` (MATLAB ssim: replicate pad, full map, L=1, mean of the two),
            ``vifb`` (Gaussian 11/1.5 valid, L=255, sum).
        ms_ssim_variant: ``wang`` (5 scales, L=255, sum), ``mpy`` (same with L=1), ``mef``
            (TANG's analysis_ms_ssim, i.e. MEF-MS-SSIM, one value).
        psnr_peak: ``max_f`` (CDD: peak is the fused image's maximum) or ``255``.
        mse_scale: ``255`` (MSE on 0..255), ``unit`` (MSE on 0..1, TANG/MPY),
            ``vifb_sqrt_sse`` (VIFB's bug: sqrt(SSE)/(H*W)). PSNR = 10 log10(peak^2 / MSE).
        ag_norm: AG divides by ``hw`` (CDD) or ``h1w1`` = (H-1)(W-1) (VIFB/TANG/MPY).
        sf_norm: SF means over the ``diff`` counts (CDD) or both sums over ``hw`` (VIFB).
        nabf_wmin: Nabf weight of weak edges (TANG/Kumar 0.001; MPY 0).
        fmi_feature: the feature the plain name ``FMI`` refers to (TANG's FMI_pixel = edge).
        fmi_window: FMI sliding window size w.
        colour: how colour inputs reach the grey metrics (see compute_metrics).
    """

    name: str = "cdd"
    mi_base: MiBase = "e"
    mi_tang_saturate: bool = False
    en_eps: float = 0.0
    ssim_variant: SsimVariant = "cdd"
    ms_ssim_variant: MsSsimVariant = "wang"
    psnr_peak: PsnrPeak = "max_f"
    mse_scale: MseScale = "255"
    ag_norm: AgNorm = "hw"
    sf_norm: SfNorm = "diff"
    nabf_wmin: float = 0.001
    fmi_feature: FmiFeature = "none"
    fmi_window: int = 3
    colour: ColourRule = "gray_cv2"

    def with_options(self, **options: object) -> Convention:
        """Return a copy with some options changed; unknown names raise ``KeyError``."""
        valid = {f.name for f in fields(self)} - {"name"}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise KeyError(f"unknown metric option(s) {unknown}; valid: {sorted(valid)}")
        return replace(self, name="custom", **options)

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


PRESETS: dict[str, Convention] = {
    "cdd": Convention(),
    "vifb": Convention(
        name="vifb", ssim_variant="vifb", psnr_peak="255", mse_scale="vifb_sqrt_sse",
        ag_norm="h1w1", sf_norm="hw", colour="vifb_per_channel",
    ),
    "tang": Convention(
        name="tang", mi_base="2", mi_tang_saturate=True, ssim_variant="tang_mean",
        ms_ssim_variant="mef", psnr_peak="255", mse_scale="unit", ag_norm="h1w1",
        fmi_feature="edge", colour="gray_matlab",
    ),
    "mpy": Convention(
        name="mpy", mi_base="2", en_eps=1e-7, ssim_variant="mpy", ms_ssim_variant="mpy",
        psnr_peak="255", mse_scale="unit", ag_norm="h1w1", nabf_wmin=0.0, colour="gray_pil",
    ),
}


def get_convention(convention: str | Convention) -> Convention:
    """Resolve a preset name (``cdd``, ``vifb``, ``tang``, ``mpy``) or pass a Convention through."""
    if isinstance(convention, Convention):
        return convention
    try:
        return PRESETS[convention]
    except KeyError:
        raise KeyError(
            f"unknown metric convention {convention!r}; valid: {sorted(PRESETS)}"
        ) from None


MetricFn = Callable[[Tensor, Tensor, Tensor, Convention], Tensor]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    Attributes:
        name: the name used in tables and JSON (as in metrics.md: EN, SD, ..., FMI_dct).
        fn: ``fn(fused, a, b, convention) -> Tensor[B]`` on (B, 1, H, W) 0..255 floats.
        higher_is_better: direction.
        description: one line for ``--help`` and reports.
        colour_layout: under the ``vifb_per_channel`` rule, ``channels`` averages over R, G, B
            (VIFB's wrapper) and ``tiled`` lays the channels side by side as one H x 3W image
            (VIFB's Spatial_frequency).
    """

    name: str
    fn: MetricFn
    higher_is_better: bool
    description: str
    colour_layout: Literal["channels", "tiled"] = "channels"
