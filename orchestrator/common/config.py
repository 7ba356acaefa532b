"""Run specifications: one YAML per model (``search_spaces/<model>.yaml``), validated.

A spec names the model, its data, the ``fixed`` overrides of the model's Config defaults and
the training settings. Paths in ``data`` resolve relative to the YAML file; ``generated:ivif``
and ``generated:mff`` name the project's own generated sets, so the committed YAMLs run on any
machine. ``--set key=value`` overrides any entry: ``data.train=../shared/data/tno`` (paths
given on the command line are relative to the working directory),
``train.eval_every=2``, ``fixed.lr_g=2e-4`` or just ``lr_g=2e-4`` (a model parameter).
Numbers such as ``1e-4`` (which PyYAML reads as a string) are accepted as floats.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fusion_models.data.synthetic import parse_generated
from fusion_models.registry import get_model_class
from orchestrator.common.yaml_io import load_yaml

GENERATED = "generated:"
#: the one ``fixed``/``space`` key that is not a model parameter: the checkpoint the run's
#: weights start from (fine-tuning): a path, ``pretrained:NAME``, ``runs:/ID`` or ``models:/``
INIT_KEY = "init"
INIT_FORMS = ("a checkpoint file, pretrained:NAME (orchestrator import-weights), runs:/RUN_ID or "
              "models:/NAME@ALIAS; null = the model's own initialisation")


def generated_split(entry: str, split: str) -> str | None:
    """``generated:<kind>[:<split>]`` -> ``generated:<kind>:<split>``; None for a folder."""
    if not entry.startswith(GENERATED):
        return None
    kind, _ = parse_generated(entry[len(GENERATED):])
    return f"{GENERATED}{kind}:{split}"

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    """Where training and validation pairs come from.

    Attributes:
        train: set folder (two source sub-folders; relative to the YAML) or ``generated:<kind>``.
        extra_train: more training sets (the same forms) whose patches join ``train``'s, e.g.
            generated multi-focus pairs beside a small real set; never used for validation.
        val: the same for validation (full-size images); default: the ``val`` split of a
            generated training set (``generated:ivif`` -> ``generated:ivif:val``), else the
            training set itself.
        task: ivif | medical | mff | mef (colour rule, PMGI presets); default from the folders.
        val_pairs: at most this many validation pairs (sorted by name).
        colour: colour rule for the grey channels the models fuse (``auto``: from the task).
    """

    train: str = "generated:ivif"
    extra_train: list[str] = Field(default_factory=list)
    val: str | None = None
    task: Literal["ivif", "medical", "mff", "mef"] | None = None
    val_pairs: int = Field(8, gt=0)
    colour: str = "auto"


class TrainSettings(_Strict):
    """How the one training loop runs (not model hyperparameters: those live in ``fixed``).

    Attributes:
        eval_every: validate (full-size fusion + metrics) every this many epochs (and last).
        seed: seeds Python, NumPy, torch and the data order.
        device: auto | cpu | cuda.
        select_metric: validation metric choosing the best checkpoint (``val/<name>``).
        select_mode: max or min.
        val_metrics: metric names computed at each evaluation.
        max_steps_per_epoch: cap on training steps per epoch (``None``: the whole store).
        num_workers: DataLoader worker processes.
        sample_pairs: validation pairs shown in the sample grid image.
        reject_degenerate: an evaluation with any flagged validation pair (``val/degenerate``
            > 0: the fused image copies a source or is flat) never replaces an unflagged
            ``best.pt``, whatever its selection metric (a copy of the visible image scores well
            on many metrics), and an unflagged one always replaces a flagged best; best.pt is
            flagged only while every evaluation so far was.
    """

    eval_every: int = Field(1, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    select_metric: str = "val/Qabf"
    select_mode: Literal["max", "min"] = "max"
    val_metrics: list[str] = ["EN", "SD", "SF", "AG", "MI", "MSE", "PSNR", "CC", "SCD", "VIF",
                              "Qabf", "SSIM"]
    max_steps_per_epoch: int | None = Field(None, gt=0)
    num_workers: int = Field(0, ge=0)
    sample_pairs: int = Field(3, ge=0)
    reject_degenerate: bool = True


class RunSpec(_Strict):
    """One training configuration (the YAML's defaults plus ``--set`` overrides).

    Attributes:
        model: registry key.
        data: :class:`DataSpec`.
        fixed: overrides of the model's Config defaults (validated against it), and ``init``:
            the checkpoint the weights start from (see :data:`INIT_FORMS`).
        train: :class:`TrainSettings`.
        base_dir: folder the YAML's relative paths resolve against.
    """

    model: str
    data: DataSpec = DataSpec()
    fixed: dict[str, Any] = {}
    train: TrainSettings = TrainSettings()
    base_dir: str = "."

    def model_params(self) -> dict[str, Any]:
        """``fixed`` without ``init``, plus ``task`` from ``data.task`` for models whose Config
        has a task (PMGI's per-task loss presets) when ``fixed`` does not set it."""
        params = {k: v for k, v in self.fixed.items() if k != INIT_KEY}
        if self.data.task and "task" not in params \
                and "task" in get_model_class(self.model).Config.model_fields:
            params["task"] = self.data.task
        return params

    def init_ref(self) -> str | None:
        """``fixed.init``: the checkpoint the weights start from, or None."""
        return self.fixed.get(INIT_KEY) or None

    def val_entry(self) -> str:
        """The validation set: ``data.val``; else a generated training set's ``val`` split
        (other crops, never the training pairs); else the training set."""
        return self.data.val or generated_split(self.data.train, "val") or self.data.train

    def set_key(self, value: str) -> tuple[str, str]:
        """Identity of a data entry: (kind, split) of a generated set, else the resolved path
        (``generated:ivif`` and ``generated:ivif:train`` are the same set)."""
        if value.startswith(GENERATED):
            return parse_generated(value[len(GENERATED):])
        return ("folder", self.resolve_path(value))

    def in_sample_role(self, entry: str) -> str | None:
        """``data.val`` or ``data.train`` when ``entry`` is that set (validation checked
        first), else None. Raises ValueError for an unknown generated kind or split."""
        key = self.set_key(entry)
        roles = [("data.val", self.val_entry()), ("data.train", self.data.train)]
        roles += [(f"data.extra_train[{i}]", v) for i, v in enumerate(self.data.extra_train)]
        for role, value in roles:
            if self.set_key(value) == key:
                return role
        return None

    def resolve_path(self, value: str) -> str:
        """A data entry as given (``generated:...``) or resolved against ``base_dir``."""
        if value.startswith(GENERATED):
            return value
        return str((Path(self.base_dir) / value).resolve())


SMOKE_OVERRIDES = {
    "fixed.epochs": 2,
    "fixed.batch_size": 4,
    "train.max_steps_per_epoch": 6,
    "data.val_pairs": 2,
    "train.sample_pairs": 2,
}


#: Top-level YAML blocks that belong to the sweep (validated by ``orchestrator.search.space``)
#: and to ``--smoke``; a run spec ignores them.
SWEEP_KEYS = ("space", "tune", "resources", "storage", "tracking")
RUN_KEYS = ("model", "data", "fixed", "train")


def coerce_numbers(value: Any) -> Any:
    """Turn YAML strings like ``1e-4`` into floats, recursively."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: coerce_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce_numbers(v) for v in value]
    return value


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], parsed value); the value is read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {item!r}: expected KEY=VALUE (e.g. lr_g=2e-4)")
    value = load_yaml(raw, f"--set {item!r}") if raw.strip() else ""
    return key.strip().split("."), coerce_numbers(value)


def apply_override(raw: dict, path: list[str], value: Any, model_fields: set[str]) -> None:
    """Set one dotted key; a bare model parameter name goes to ``fixed``."""
    if len(path) == 1 and path[0] not in (*RUN_KEYS, *SWEEP_KEYS):
        if path[0] not in model_fields:
            raise KeyError(f"--set {path[0]}: not a top-level key or a parameter of "
                           f"{raw.get('model')}; valid parameters: {sorted(model_fields)}")
        path = ["fixed", path[0]]
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise KeyError(f"--set {'.'.join(path)}: {part} is not a mapping")
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict:
    """The YAML mapping of a spec file (numbers like ``1e-4`` as floats)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the spec: {exc}") from None
    raw = coerce_numbers(load_yaml(text, str(path)) or {})
    if not isinstance(raw, dict) or "model" not in raw:
        raise ValueError(f"{path}: expected a mapping with a 'model' key")
    unknown = sorted(set(raw) - {*RUN_KEYS, *SWEEP_KEYS, "smoke", "base_dir"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {unknown}; valid keys: "
                         f"{sorted({*RUN_KEYS, *SWEEP_KEYS, 'smoke'})}")
    return raw


def _smoke_items(raw: dict, path: Path) -> list[tuple[list[str], Any]]:
    """The generic smoke overrides, then the YAML's own ``smoke:`` block (dotted keys)."""
    block = raw.get("smoke") or {}
    if not isinstance(block, dict):
        raise ValueError(f"{path}: smoke: expected a mapping of dotted keys to values")
    merged = {**SMOKE_OVERRIDES, **block}
    return [(k.split("."), v) for k, v in merged.items()]


def load_spec_and_extras(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                         smoke: bool = False) -> tuple[RunSpec, dict[str, Any]]:
    """Read, override and validate a spec YAML; also return its sweep blocks (raw, overridden).

    Override order: the YAML, then (``smoke``) the generic smoke settings and the YAML's
    ``smoke:`` block, then ``overrides`` (``--set``).

    Raises:
        ValueError: naming the YAML file and the offending key (unknown keys list the valid
            ones; ``fixed`` keys are checked against the model's Config).
    """
    path = Path(path)
    raw = read_yaml(path)
    try:
        fields = set(get_model_class(raw["model"]).Config.model_fields) | {INIT_KEY}
        items = _smoke_items(raw, path) if smoke else []
        items += [parse_override(o) for o in overrides]
        for keys, value in items:
            if keys in _TYPED_PATH_KEYS:
                value = _cwd_paths(value)  # typed paths are relative to the CWD
            apply_override(raw, keys, value, fields)
        raw.setdefault("base_dir", str(path.resolve().parent))
        extras = {k: raw.pop(k) for k in SWEEP_KEYS if k in raw}
        raw.pop("smoke", None)
        spec = RunSpec(**raw)
        _check_fixed(spec, fields)
    except (KeyError, ValidationError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        raise ValueError(f"{path}: {message}") from None
    return spec, extras


#: ``--set`` keys holding set folders: a typed relative path means the working directory
_TYPED_PATH_KEYS = (["data", "train"], ["data", "val"], ["data", "extra_train"],
                    ["tune", "test_data"])


def _cwd_paths(value: Any) -> Any:
    """A set folder (or a list of them) typed on the command line, resolved against the
    working directory; ``generated:...`` entries and non-strings stay as they are."""
    if isinstance(value, list):
        return [_cwd_paths(v) for v in value]
    if isinstance(value, str) and not value.startswith(GENERATED):
        return str(Path(value).resolve())
    return value


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
              smoke: bool = False) -> RunSpec:
    """The run spec of a YAML (see :func:`load_spec_and_extras`); sweep blocks are ignored."""
    return load_spec_and_extras(path, overrides, smoke)[0]


def check_init(value: Any, where: str) -> None:
    """``init`` is null or a non-empty string naming a checkpoint (:data:`INIT_FORMS`)."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise KeyError(f"{where}: expected {INIT_FORMS}, got {value!r}")


def _check_fixed(spec: RunSpec, fields: set[str]) -> None:
    unknown = sorted(set(spec.fixed) - fields)
    if unknown:
        raise KeyError(f"fixed: unknown parameter(s) {unknown} for model {spec.model}; "
                       f"valid keys: {sorted(fields)}")
    check_init(spec.fixed.get(INIT_KEY), f"fixed.{INIT_KEY}")
    try:
        get_model_class(spec.model).Config(**spec.model_params())
    except ValidationError as exc:
        raise KeyError(f"fixed: invalid value(s) for {spec.model}: {exc}") from None
