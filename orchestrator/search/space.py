"""Sweep specifications: the ``space``, ``tune``, ``resources``, ``storage`` and ``tracking``
blocks of a ``search_spaces/<model>.yaml``, validated against the model's Config, and the
define-by-run Optuna search space built from them.

A space entry samples one model parameter::

    space:
      lr_g: {type: loguniform, low: 1e-5, high: 1e-3}
      generator: {type: choice, values: [unet, fusionmodel, dense]}
      base_width: {type: int, low: 16, high: 64, log: true, when: {generator: unet}}

``when`` makes an entry conditional on earlier choice entries (define-by-run: Optuna only
samples it when the condition holds). Pure data + Optuna; no Ray import at module load.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    model_validator,
)

from fusion_models.registry import get_model_class
from orchestrator.common import (
    INIT_FORMS,
    INIT_KEY,
    RunSpec,
    check_init,
    generated_split,
    load_spec_and_extras,
    read_yaml,
)

log = logging.getLogger(__name__)

#: ``--smoke`` for a sweep: two trials, one epoch each (plus the run's smoke overrides).
SMOKE_SWEEP = {"num_samples": 2, "epochs": 1}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpaceEntry(_Strict):
    """One sampled parameter: loguniform/uniform (float low..high), int (low..high, ``log``,
    ``step``) or choice (``values``); ``when``: {earlier choice key: value or [values]}."""

    type: Literal["loguniform", "uniform", "int", "choice"]
    low: FiniteFloat | None = None  # NaN and +-inf refused: no sampler can draw from them
    high: FiniteFloat | None = None
    values: list[Any] | None = None
    log: bool = False
    step: int | None = Field(None, gt=0)
    when: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> SpaceEntry:
        if self.type == "choice":
            if not self.values:
                raise ValueError("choice needs a non-empty 'values' list")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs numbers low < high (got {self.low}, {self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("int needs whole-number low/high")
        return self

    def probes(self) -> list[Any]:
        """Values that must each be valid for the model's Config (the range ends, the choices)."""
        if self.type == "choice":
            return list(self.values or [])
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def suggest(self, trial: Any, name: str) -> Any:
        """Sample with an ``optuna.Trial``."""
        if self.type == "choice":
            return trial.suggest_categorical(name, self.values)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log,
                                     step=self.step or 1)
        return trial.suggest_float(name, self.low, self.high, log=self.type == "loguniform")

    def distribution(self) -> Any:
        """The ``optuna.distributions`` object :meth:`suggest` samples from."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "choice":
            return CategoricalDistribution(self.values)
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=self.step or 1)
        return FloatDistribution(self.low, self.high, log=self.type == "loguniform")

    def coerce(self, value: Any) -> Any:
        """A value read back from a CSV cell (a string) as the type this entry samples;
        None for an empty cell (a conditional entry the trial did not sample)."""
        if value is None or (isinstance(value, str) and value == "") or \
                (isinstance(value, float) and math.isnan(value)):
            return None
        if self.type == "choice":
            by_text = {str(v): v for v in self.values or []}
            if value in (self.values or []):
                return value
            if str(value) in by_text:
                return by_text[str(value)]
            raise ValueError(f"{value!r} is not one of the choices {self.values}")
        return int(float(value)) if self.type == "int" else float(value)

    def active(self, sampled: dict[str, Any]) -> bool:
        """Whether ``when`` holds for the values sampled so far."""
        for key, want in (self.when or {}).items():
            allowed = want if isinstance(want, list) else [want]
            if key not in sampled or sampled[key] not in allowed:
                return False
        return True


class SchedulerSpec(_Strict):
    """Early stopping on the reported ``epoch``: ``asha`` or ``none``."""

    kind: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class TuneSpec(_Strict):
    """What the sweep optimises and how many trials it runs.

    ``metric``/``mode``: one name (``val/Qabf``) or a list (multi-objective: Optuna keeps the
    Pareto front; ASHA and "best" use the first). ``final_eval_top_k``: best trials measured on
    ``test_data`` after the sweep; empty: the ``test`` split of a generated training set
    (photos no training or validation pair used), else the validation set, and then the
    numbers are labelled validation, never test (see :func:`evaluation_sets`). A test set may
    not be the training or validation set. ``references``: checkpoints measured beside the
    trials on the same sets by the final evaluation and the report, e.g. the authors'
    released model ``pretrained:pmgi/ir_vi`` (``orchestrator import-weights``).
    ``degenerate_penalty``: an evaluation with flagged validation pairs (``val/degenerate`` >
    0) reports each objective to Tune worsened by this much (minus for ``max``, plus for
    ``min``), so the searcher, ASHA and the ranking never prefer a copy of a source; MLflow
    keeps the measured values. 0 turns it off. ``time_budget_s``: wall-clock budget of the
    whole search; when it is spent Tune stops the running trials (their best.pt so far
    counts) and starts no new one, so a sweep fits a stated time.
    """

    metric: str | list[str] = "val/Qabf"
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = "max"
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    seed: int = 0
    scheduler: SchedulerSpec = SchedulerSpec()
    final_eval_top_k: int = Field(0, ge=0)
    test_data: list[str] = []
    references: list[str] = []
    max_failures: int = Field(0, ge=0)
    degenerate_penalty: float = Field(1000.0, ge=0)
    time_budget_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> TuneSpec:
        if isinstance(self.metric, list) != isinstance(self.mode, list):
            raise ValueError("metric and mode must both be single values or both lists")
        if isinstance(self.metric, list) and len(self.metric) != len(self.mode):
            raise ValueError(f"{len(self.metric)} metrics but {len(self.mode)} modes")
        return self

    @property
    def metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> list[str]:
        return self.mode if isinstance(self.mode, list) else [self.mode]


class ResourceSpec(_Strict):
    """Per trial: ``workers`` Ray Train workers (0: the loop runs in the Tune trial itself),
    each with ``cpu_per_worker``/``gpu_per_worker``; the trial's own process gets
    ``driver_cpu`` when workers > 0 (fractional so it never starves the workers), plus one
    unit of ``driver_resource`` when set: a custom resource only the head node offers, which
    keeps trial drivers off the GPU workers (``cluster/gpu.yaml``: ``driver``)."""

    workers: int = Field(0, ge=0)
    cpu_per_worker: float = Field(1.0, gt=0)
    gpu_per_worker: float = Field(0.0, ge=0)
    driver_cpu: float = Field(0.1, gt=0)
    driver_resource: str | None = None

    def per_trial(self) -> dict[str, float]:
        """Total {"CPU", "GPU"} one trial occupies."""
        if self.workers == 0:
            return {"CPU": self.cpu_per_worker, "GPU": self.gpu_per_worker}
        return {"CPU": self.driver_cpu + self.workers * self.cpu_per_worker,
                "GPU": self.workers * self.gpu_per_worker}


class SweepSpec(_Strict):
    """A whole sweep: the run spec every trial starts from, plus the sweep blocks."""

    run: RunSpec
    space: dict[str, SpaceEntry] = {}
    tune: TuneSpec = TuneSpec()
    resources: ResourceSpec = ResourceSpec()
    storage: str = "ray_results"
    tracking: str | None = None
    source: str = ""

    @property
    def epochs(self) -> int:
        return get_model_class(self.run.model).Config(**self.run.model_params()).epochs


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
               smoke: bool = False, num_samples: int | None = None) -> SweepSpec:
    """Read and validate a sweep YAML (+ ``--set`` overrides, ``--smoke``, ``--num-samples``).

    Raises:
        ValueError: naming the YAML file and the offending key (unknown space keys list the
            model's valid parameters).
    """
    smoke_set = [f"fixed.epochs={SMOKE_SWEEP['epochs']}"] if smoke else []
    run, extras = load_spec_and_extras(path, [*smoke_set, *overrides], smoke)
    try:
        extras = {k: v for k, v in extras.items() if v is not None}
        spec = SweepSpec(run=run, source=str(path), **extras)
    except ValidationError as exc:
        raise ValueError(f"{path}: {exc}") from None
    yaml_fixed = set((read_yaml(path).get("fixed") or {}))
    for key in [k for k in spec.space if k in spec.run.fixed and k not in yaml_fixed]:
        log.info("%s: %s fixed from the command line / smoke settings, not searched", path, key)
        del spec.space[key]
    if smoke:
        spec.tune.num_samples = SMOKE_SWEEP["num_samples"]
    if num_samples is not None:
        spec.tune.num_samples = num_samples
    try:
        check_space(spec)
    except KeyError as exc:
        raise ValueError(f"{path}: {exc.args[0]}") from None
    return spec


def check_space(spec: SweepSpec) -> None:
    """Every space key is a model parameter (or ``init``, a choice) not also in ``fixed``;
    every ``when`` names an
    earlier choice entry and one of its values; every range end / choice is a valid value."""
    config_cls = get_model_class(spec.run.model).Config
    fields = sorted(config_cls.model_fields)
    fixed = spec.run.model_params()
    seen: dict[str, SpaceEntry] = {}
    for key, entry in spec.space.items():
        where = f"space.{key}"
        if key == INIT_KEY:  # warm start vs cold start, searched like any choice
            if entry.type != "choice" or key in spec.run.fixed:
                raise KeyError(f"{where}: a choice of checkpoints ({INIT_FORMS}), not also "
                               "in fixed")
            for value in entry.values or []:
                check_init(value, where)
            seen[key] = entry
            continue
        if key not in fields:
            raise KeyError(f"{where}: not a parameter of {spec.run.model}; valid keys: {fields}")
        if key in spec.run.fixed:
            raise KeyError(f"{where}: also set in the YAML's fixed block; a parameter is "
                           "fixed or searched")
        for cond, want in (entry.when or {}).items():
            parent = seen.get(cond)
            if parent is None or parent.type != "choice":
                raise KeyError(f"{where}.when: {cond!r} must be an earlier choice entry")
            for v in want if isinstance(want, list) else [want]:
                if v not in (parent.values or []):
                    raise KeyError(f"{where}.when: {v!r} is not one of {cond}'s values "
                                   f"{parent.values}")
        for value in entry.probes():
            try:
                config_cls(**{**fixed, key: value})
            except ValidationError as exc:
                err = exc.errors()[0]
                raise KeyError(f"{where}: value {value!r} is invalid for {spec.run.model}: "
                               f"{err['msg']}") from None
        seen[key] = entry
    _check_test_disjoint(spec)
    for metric in spec.tune.metrics:
        if not metric.startswith(("val/", "train/")):
            raise KeyError(f"tune.metric: {metric!r}: expected val/<metric> or train/<term>")


def _check_test_disjoint(spec: SweepSpec) -> None:
    for entry in spec.tune.test_data:
        try:
            role = spec.run.in_sample_role(entry)
        except ValueError as exc:
            raise KeyError(f"tune.test_data: {exc}") from None
        if role:
            raise KeyError(f"tune.test_data: {entry!r} is also {role}; test pairs must be "
                           "disjoint from the training and validation pairs (leave test_data "
                           "empty to measure on the validation set, labelled validation)")


def evaluation_sets(spec: SweepSpec) -> tuple[str, list[str]]:
    """Where the sweep's final evaluation and report measure: ``("test", entries)`` for
    ``tune.test_data``, or the ``test`` split of a generated training set; otherwise
    ``("validation", [the validation set])``: in-sample for checkpoint selection, so never
    called test."""
    run = spec.run
    if spec.tune.test_data:
        return "test", list(spec.tune.test_data)
    test = generated_split(run.data.train, "test")
    return ("test", [test]) if test else ("validation", [run.val_entry()])


class SpaceSampler:
    """The define-by-run function for OptunaSearch: samples the active entries in order.
    A class (not a closure) so Tune can pickle the searcher into its experiment state."""

    def __init__(self, space: dict[str, SpaceEntry]) -> None:
        self.space = dict(space)

    def __call__(self, trial: Any) -> None:
        sampled: dict[str, Any] = {}
        for key, entry in self.space.items():
            if entry.active(sampled):
                sampled[key] = entry.suggest(trial, key)


def penalise_degenerate(metrics: dict[str, float], tune: TuneSpec) -> dict[str, float]:
    """``metrics`` with each objective worsened by ``tune.degenerate_penalty`` when the
    evaluation flagged any validation pair (``val/degenerate`` > 0); unchanged otherwise."""
    if not tune.degenerate_penalty or not metrics.get("val/degenerate", 0.0) > 0:
        return metrics
    out = dict(metrics)
    for name, mode in zip(tune.metrics, tune.modes, strict=True):
        if name in out:
            sign = -1.0 if mode == "max" else 1.0
            out[name] = float(out[name]) + sign * tune.degenerate_penalty
    return out


def objective_values(metrics: dict[str, float], tune: TuneSpec) -> list[float]:
    """The objective values of one report; raises on NaN/missing (Optuna would leak it)."""
    out = []
    for name in tune.metrics:
        value = metrics.get(name)
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"objective {name} is {value!r}: the trial cannot be ranked")
        out.append(float(value))
    return out
