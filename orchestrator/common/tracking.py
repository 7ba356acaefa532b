"""MLflow as the record: experiment/run naming, batched metric logging, images, checkpoints.

Embedded default: ``sqlite:///mlflow.db`` in the working directory with artifacts under
``./mlartifacts`` (created by the driver before anything else writes, so parallel processes
never race on the schema migrations). ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` point at a
server instead. Experiments are named ``fusion/<model>``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
DEFAULT_UI = "http://127.0.0.1:5000"
#: The experiment tag MLflow 3's UI reads as the experiment's kind (``mlflow.experimentKind``
#: in mlflow/server/js/build/static/js/main.*.js; its experiment-kind selector writes it):
#: ``custom_model_development`` opens on the runs table, ``genai_development`` on traces.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
#: MLflow 3.17's UI takes the kind from this URL query instead (else from the browser's last
#: GenAI/Model training choice, GenAI at first): every link the orchestrator prints has it.
UI_WORKFLOW = "workflowType=machine_learning"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """CLI value, else ``MLFLOW_TRACKING_URI``, else the sqlite file in the working directory.

    A relative sqlite path (``sqlite:///runs/mlflow.db``) is made absolute here, so Ray
    workers, whose working directory is their trial folder, open the same file.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith(("/", ":memory:")):
        uri = f"{prefix}{Path(uri[len(prefix):]).resolve()}"
    return uri


#: sqlite stores this process has seen created or migrated (see :func:`_ready_sqlite`).
_READY: set[str] = set()


def _ready_sqlite(uri: str) -> None:
    """Create or migrate a sqlite store once per process, under an exclusive lock on
    ``<db>.lock``: processes opening a new store at once (two sweeps) otherwise race on the
    schema migrations ("table ... already exists", "duplicate column") and can leave
    ``_alembic_tmp_*`` tables behind that break the next MLflow upgrade."""
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:///:memory:") \
            or uri in _READY:
        return
    import fcntl

    from mlflow.tracking import MlflowClient

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _READY.add(uri)


def mlflow_client(uri: str):
    """An MlflowClient on ``uri`` for tracking and the model registry alike (a sqlite store
    created or migrated first, one process at a time)."""
    from mlflow.tracking import MlflowClient

    _ready_sqlite(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str, uri: str) -> str:
    """The experiment's id, creating it (artifacts under ./mlartifacts for sqlite stores);
    a new or untagged experiment is tagged a model-training one (:data:`EXPERIMENT_KIND`)."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if EXPERIMENT_KIND_TAG not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        location = Path(DEFAULT_ARTIFACTS).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception as exc:  # another process (a second sweep) created it first
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def ui_base(uri: str) -> str:
    """Where the MLflow UI of this store is: the tracking server itself, else where
    ``orchestrator ui`` serves by default."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else DEFAULT_UI


def runs_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The UI's runs table of an experiment (or one run's page, which lists its child runs)
    in the model-training view."""
    page = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
    return f"{page}/{run_id}?{UI_WORKFLOW}" if run_id else f"{page}?{UI_WORKFLOW}"


def flatten(prefix: str, value: Any, out: dict[str, str] | None = None) -> dict[str, str]:
    """Nested dicts -> {"a.b": "value"} strings (MLflow params)."""
    out = {} if out is None else out
    if isinstance(value, Mapping):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(value)[:6000]
    return out


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file (:func:`fusion_models.data.store_files.digest_file`)."""
    from fusion_models.data.store_files import digest_file

    return digest_file(path)


class MlflowRun:
    """One MLflow run fed by the training loop's reporter callback.

    ``client``/``experiment_id``: a long-lived writer (the sweep's recorder) passes its own, so
    a new run costs no client set-up or experiment lookup.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, params: Mapping[str, str],
                 tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
                 client: Any = None, experiment_id: str | None = None) -> None:
        from mlflow.entities import Param, RunTag

        self.client = client or mlflow_client(uri)
        exp_id = experiment_id or ensure_experiment(experiment, uri)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        self.artifact_uri = run.info.artifact_uri
        self._best_epoch: int | None = None
        self.opened_tags = all_tags
        self.opened_params = dict(params)
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100],
                                  tags=[RunTag("source", "orchestrator")] if i == 0 else [])

    @classmethod
    def reattach(cls, uri: str, run_id: str, client: Any = None) -> MlflowRun:
        """Continue an existing run (a resumed trial): marked RUNNING again, nothing re-logged."""
        obj = cls.__new__(cls)
        obj.client = client or mlflow_client(uri)
        obj.run_id = run_id
        run = obj.client.get_run(run_id)
        obj.artifact_uri = run.info.artifact_uri
        obj.opened_tags = dict(run.data.tags)
        obj.opened_params = dict(run.data.params)
        epoch = run.data.tags.get("best_epoch")
        obj._best_epoch = int(epoch) if epoch else None
        obj.client.update_run(run_id, status="RUNNING")
        return obj

    def best_epoch(self) -> int | None:
        """The epoch of the best.pt this run holds (its ``best_epoch`` tag when opened)."""
        return self._best_epoch

    def __call__(self, metrics: dict[str, float], info: dict) -> None:
        """The training loop's ``report``: one batched call per epoch (+ the sample grid).
        ``info["timestamp_ms"]``, when given, stamps the metrics (a re-sent epoch then writes
        the very same rows, which MLflow keeps once)."""
        from mlflow.entities import Metric

        now = int(info.get("timestamp_ms") or time.time() * 1000)
        epoch = int(info.get("epoch", metrics.get("epoch", 0)))
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        for step, terms in info.get("step_terms") or []:
            batch += [Metric(f"step/{k}", float(v), now, step) for k, v in terms.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])
        if info.get("samples") is not None:
            self.client.log_image(self.run_id, info["samples"], key="samples", step=epoch)

    def log_checkpoint(self, path: str | Path, artifact_path: str = "checkpoints") -> str:
        """Upload a checkpoint; tag its sha256; return the digest."""
        digest = sha256_file(path)
        self.client.log_artifact(self.run_id, str(path), artifact_path)
        self.client.set_tag(self.run_id, f"{Path(path).stem}_sha256", digest)
        return digest

    def log_best(self, path: str | Path, epoch: int | None, flagged: bool) -> str:
        """Upload ``best.pt`` with its digest, epoch and flag as tags (one batch); the digest."""
        from mlflow.entities import RunTag

        digest = sha256_file(path)
        self.client.log_artifact(self.run_id, str(path), "checkpoints")
        tags = {"best_sha256": digest, "best_flagged": str(bool(flagged)).lower()}
        if epoch is not None:
            tags["best_epoch"] = str(epoch)
            self._best_epoch = int(epoch)
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return digest

    def log_epoch(self, metrics: dict[str, float], info: dict,
                  best: tuple[str | Path, int | None, bool] | None = None) -> None:
        """One epoch's records: metrics, step terms, samples and (``best``: path, epoch,
        flagged) a changed best.pt. Written before it returns (see :meth:`flush`)."""
        self(metrics, info)
        if best is not None:
            self.log_best(*best)

    def flush(self) -> None:
        """Nothing is pending: every call writes before it returns."""

    def finish(self, status: str = "FINISHED", note: str = "") -> None:
        if note:
            self.client.set_tag(self.run_id, "status_note", note[:5000])
        self.client.set_terminated(self.run_id, status=status)


def child_runs(uri: str, parent_run_id: str, extra_filter: str = "", client: Any = None,
               experiment_id: str | None = None) -> list:
    """The child runs of a parent run (newest first)."""
    client = client or mlflow_client(uri)
    exp_id = experiment_id or client.get_run(parent_run_id).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    if extra_filter:
        query += f" and {extra_filter}"
    return client.search_runs([exp_id], filter_string=query, max_results=5000)


def find_child_run(uri: str, parent_run_id: str, trial_id: str, client: Any = None,
                   experiment_id: str | None = None) -> str | None:
    """The run id of the child run tagged with this Tune trial id, if there is one."""
    runs = child_runs(uri, parent_run_id, f"tags.trial_id = '{trial_id}'", client,
                      experiment_id)
    return runs[0].info.run_id if runs else None


def open_child(uri: str, experiment: str, parent_run_id: str, trial_id: str, run_name: str,
               params: Mapping[str, str], tags: Mapping[str, str], client: Any = None,
               experiment_id: str | None = None) -> MlflowRun:
    """A trial's child run: the existing one tagged with ``trial_id`` (a resumed trial,
    perhaps on another node: its ``node_id`` tag is updated and the old one kept as
    ``resumed_from_node``; an opening retried after MLflow failed half-way: the params it
    lacks are logged), else a new one with ``params`` and ``tags``."""
    from mlflow.entities import Param, RunTag

    client = client or mlflow_client(uri)
    exp_id = experiment_id or ensure_experiment(experiment, uri)
    existing = find_child_run(uri, parent_run_id, trial_id, client, exp_id)
    if existing is None:
        return MlflowRun(uri, experiment, run_name, params, {"trial_id": trial_id, **tags},
                         parent_run_id=parent_run_id, client=client, experiment_id=exp_id)
    run = MlflowRun.reattach(uri, existing, client)
    missing = [Param(k, v) for k, v in params.items() if k not in run.opened_params]
    for i in range(0, len(missing), 100):  # an opening cut short after create_run
        client.log_batch(existing, params=missing[i : i + 100])
    previous = run.opened_tags.get("node_id", "")
    client.log_batch(existing, tags=[RunTag("node_id", tags.get("node_id", "")),
                                     RunTag("resumed_from_node", previous)])
    return run


@dataclass(frozen=True)
class SweepRun:
    """A sweep's parent run as ``orchestrator ui`` lists it."""

    name: str
    experiment: str
    experiment_id: str
    run_id: str
    report: bool  # an ``orchestrator report`` page is logged on it


def sweep_runs(uri: str, limit: int = 20) -> list[SweepRun]:
    """The newest sweeps' parent runs in the ``fusion/*`` experiments ([] for a store that does
    not exist yet); experiments made before :data:`EXPERIMENT_KIND` existed are tagged."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    client = mlflow_client(uri)
    exps = {e.experiment_id: e for e in
            client.search_experiments(filter_string="name LIKE 'fusion/%'")}
    for exp in exps.values():
        if EXPERIMENT_KIND_TAG not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if not exps:
        return []
    runs = client.search_runs(list(exps), "tags.kind = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=limit)
    return [SweepRun(r.data.tags.get("sweep_name", r.info.run_name),
                     exps[r.info.experiment_id].name, r.info.experiment_id, r.info.run_id,
                     r.data.tags.get("report") == "report/index.html") for r in runs]
