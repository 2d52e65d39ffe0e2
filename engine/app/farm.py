"""The batch on a Ray cluster (``engine batch --ray [ADDRESS]``): one Ray task per item, same outputs as a local run.

Why Ray: a studio converts thousands of scans on a render farm. Ray already schedules tasks on declared
resources, restarts work whose worker process died and runs the same on a laptop, a set of machines
(``ray start``) and Kubernetes (KubeRay); this module only maps the batch onto it — it is not a scheduler.

How the work is split:

* **The driver** (the ``engine batch`` process) loads the models and builds the stylized generator *once*,
  exactly as a local batch does (:func:`engine.app.batch.load_engine_models`, cached), and puts the
  checkpoint's files into Ray's object store. It decides what is already done (the local batch's resume
  rule: a ``done`` sidecar with the same settings fingerprint and source SHA-256, and its glb), submits one
  task per remaining item, and **writes every output itself**: the item's glb, then its sidecar last, both
  atomically (:mod:`engine.io.atomic`), then ``report.json``/``report.csv``. So a killed driver, worker or
  node never leaves a half-finished item that a rerun would take for done, and the output folder need not be
  shared with the workers.
* **A worker** builds the batch's models once per worker process (:class:`EngineWorkerModels`: the driver's
  settings and the driver's stylized generator, fetched from the object store — a worker never stylizes),
  checks that its models' fingerprint is the driver's (a node with another engine version, pack or model
  files would make different heads), and runs the local batch's own per-item step
  (:func:`engine.app.batch._process`) into a private temporary folder; the files come back as bytes.
  Same code, same settings, same bytes: a farm run writes the same glb as a local run (with the same
  ``SOURCE_DATE_EPOCH``, see :func:`engine.heads.provenance.provenance_date`, even the date matches).
* **Resources.** Each task declares ``num_cpus``/``num_gpus`` (:class:`FarmConfig`); Ray runs as many at once
  as the cluster's nodes hold. A task with GPUs runs the models on CUDA, one without on the CPU (unless
  ``--device`` says otherwise); torch in the task uses as many threads as it has CPUs.
* **A dead worker is retried** by Ray (``max_retries``: process crash, OOM kill, lost node); an exception
  inside an item (a corrupt scan) is a ``failed`` row, never retried, as in a local run.
* **Cancel** (cancel file, Ctrl-C): queued items are dropped and running ones interrupted; nothing of them
  is written, and the next run does them.

Ray is an optional dependency: nothing imports it until a farm is asked for (:func:`require_ray`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import CheckpointError, ConfigError, EngineError
from ..heads.provenance import sha256_file
from ..io.atomic import write_bytes
from ..io.events import emit, log
from ..stylize.cancel import CancelToken
from .batch import (BatchModels, BatchReport, BatchSettings, ConsentRequired, EventSink, ItemResult, StylizationCancelled,
                    _finished, _process, _purge, _recorded_consent, batch_fingerprint, item_kind, output_stems,
                    prepare_out_dir, source_hash)
from .batch_report import write_batch_report_html
from .consent import ConsentRecords, still_covers

RAY_INSTALL_HINT = "pip install -r requirements.txt (it pins ray), or pip install 'ray==2.60.0'"
# What the driver forwards to its workers' environment: the reproducible-builds date (byte-identical outputs).
FORWARDED_ENV = ("SOURCE_DATE_EPOCH",)


def require_ray():
    """The ``ray`` module, or a :class:`ConfigError` that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--ray needs the Ray package, which is not installed here ({exc}): {RAY_INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class FarmConfig:
    """Where and how a batch runs on Ray.

    ``address``: None (or "local") starts a private local Ray instance for this batch (shut down at the end);
    anything else is passed to ``ray.init(address=...)`` — ``auto`` (the cluster ``ray start`` made on this
    machine), ``HOST:6379`` (a head node) or ``ray://HOST:10001`` (Ray Client). ``local_cpus`` and
    ``object_store_mb`` size a local instance only. ``cpus_per_item``/``gpus_per_item`` are each task's
    declared resources; ``max_retries``: how many times Ray reruns an item whose worker process died.
    """

    address: str | None = None
    cpus_per_item: float = 1.0
    gpus_per_item: float = 0.0
    max_retries: int = 3
    local_cpus: int | None = None
    object_store_mb: int | None = None
    poll_seconds: float = 0.5  # how often the driver looks at the cancel token while items run

    @property
    def local(self) -> bool:
        return self.address in (None, "", "local")

    def validate(self) -> "FarmConfig":
        if not (self.cpus_per_item > 0 and math.isfinite(self.cpus_per_item)):
            raise ConfigError(f"--ray-cpus-per-item must be > 0, got {self.cpus_per_item}")
        if not (self.gpus_per_item >= 0 and math.isfinite(self.gpus_per_item)):
            raise ConfigError(f"--ray-gpus-per-item must be ≥ 0, got {self.gpus_per_item}")
        if self.gpus_per_item > 1 and self.gpus_per_item != int(self.gpus_per_item):
            raise ConfigError(f"--ray-gpus-per-item above 1 must be whole GPUs, got {self.gpus_per_item}")
        if self.max_retries < 0:
            raise ConfigError(f"--ray-max-retries must be ≥ 0, got {self.max_retries}")
        if self.local_cpus is not None and self.local_cpus < 1:
            raise ConfigError(f"--ray-num-cpus must be ≥ 1, got {self.local_cpus}")
        if self.object_store_mb is not None and self.object_store_mb < 80:
            raise ConfigError(f"--ray-object-store-mb must be ≥ 80 (Ray's minimum is 75 MiB), got {self.object_store_mb}")
        if not self.local and (self.local_cpus is not None or self.object_store_mb is not None):
            raise ConfigError("--ray-num-cpus and --ray-object-store-mb size a local Ray instance; a cluster at "
                              f"{self.address!r} has its own (set them on `ray start`)")
        return self

    def task_options(self) -> dict[str, Any]:
        """The options of each item's Ray task: its resources, and retries for a dead worker only."""
        return {"num_cpus": self.cpus_per_item, "num_gpus": self.gpus_per_item, "max_retries": self.max_retries,
                "retry_exceptions": False}

    def worker_threads(self) -> int:
        return max(1, int(self.cpus_per_item))

    def worker_device(self, device: str) -> str:
        """The torch device of a task: what ``--device`` says, else CUDA when the task holds a GPU, else the CPU
        (a CPU task must not take a GPU that Ray gave another task)."""
        if device != "auto":
            return device
        return "cuda" if self.gpus_per_item > 0 else "cpu"


@contextlib.contextmanager
def farm_session(farm: FarmConfig) -> Iterator[Any]:
    """Connect to the farm's Ray cluster (or start a local instance) and yield the ``ray`` module.

    A Ray connection this process already has (a notebook, a test's cluster) is used as it is and left open.
    A local instance started here is shut down on exit; a cluster's connection is closed. ``ray.init`` makes
    SIGTERM exit the driver at once; the handler that was there before (the batch's cancel token: stop, keep
    what is finished) is put back."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
    if farm.local:
        options.update(address="local", num_cpus=farm.local_cpus)
        if farm.object_store_mb is not None:
            options["object_store_memory"] = farm.object_store_mb * 2**20
    else:
        options = {"address": farm.address, "log_to_driver": False, "logging_level": "WARNING"}
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(**options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        hint = "" if farm.local else (
            "; if the cluster uses token authentication (Ray 2.60's `ray start` does), set RAY_AUTH_MODE=token here "
            "too, with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN")
        raise ConfigError(f"cannot start or reach the Ray cluster ({'local' if farm.local else farm.address}): {exc}{hint}") from None
    if sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)
    try:
        yield ray
    finally:
        ray.shutdown()


def check_cluster_fits(ray, farm: FarmConfig) -> None:
    """Refuse at once when no node can ever run one item: Ray would keep such a task pending forever."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    have = [(n.get("Resources", {}).get("CPU", 0.0), n.get("Resources", {}).get("GPU", 0.0)) for n in nodes]
    if any(cpu >= farm.cpus_per_item and gpu >= farm.gpus_per_item for cpu, gpu in have):
        return
    listed = ", ".join(f"{cpu:g} CPU/{gpu:g} GPU" for cpu, gpu in have) or "no live node"
    raise ConfigError(
        f"no node of the Ray cluster has {farm.cpus_per_item:g} CPU and {farm.gpus_per_item:g} GPU for one item "
        f"(nodes: {listed}); lower --ray-cpus-per-item / --ray-gpus-per-item, or add such a node (an autoscaling "
        "cluster needs one such worker running)")


# --------------------------------------------------------------------------------------------------
# What a worker runs
# --------------------------------------------------------------------------------------------------
def _quiet(*_args, **_kwargs) -> None:
    """A worker's model loading reports nothing: its stdout is not the driver's event stream."""


@dataclass(frozen=True)
class SharedCheckpoint:
    """A checkpoint the driver made, shipped to the workers through Ray's object store.

    ``files``: one ObjectRef of ``{file name: bytes}`` (the ``.safetensors`` and its ``.json``); held in a
    tuple so that Ray passes the reference instead of resolving it for every task."""

    sha256: str  # of ``name``
    name: str
    files: tuple[Any, ...]

    def materialize(self) -> Path:
        """The checkpoint on this node's disk (fetched once per node and checked against its SHA-256)."""
        folder = Path(tempfile.gettempdir()) / "head-stylizer-farm" / self.sha256
        target = folder / self.name
        if target.is_file() and sha256_file(target) == self.sha256:
            return target
        import ray

        files = ray.get(self.files[0])
        # atomic writes (two workers of one node may write the same file), the checked file last: once it is
        # there with its SHA-256, so is the rest
        for name in sorted(files, key=lambda n: n == self.name):
            write_bytes(folder / name, files[name])
        if sha256_file(target) != self.sha256:
            raise CheckpointError(f"{target}: the stylized generator shipped by the driver arrived corrupt")
        return target


def share_checkpoint(ray, path: str | Path) -> SharedCheckpoint:
    """Put a safetensors checkpoint (and its ``.json`` beside it) into the object store, once."""
    path = Path(path)
    files = {p.name: p.read_bytes() for p in (path, path.with_suffix(".json")) if p.is_file()}
    return SharedCheckpoint(sha256_file(path), path.name, (ray.put(files),))


@dataclass(frozen=True)
class EngineWorkerModels:
    """How a worker builds the batch's real models: the driver's settings, on the task's device, with the
    driver's stylized generator (generator mode) instead of stylizing again. Hashable: a worker process builds
    them once and keeps them for its next items (:func:`_worker_models`)."""

    settings: BatchSettings
    stylized: SharedCheckpoint | None = None
    device: str = "cpu"

    def __call__(self) -> BatchModels:
        settings = dataclasses.replace(self.settings, device=self.device)
        if settings.mode == "mesh":  # each scan is its own stylized field: nothing shared but the settings
            from .batch_mesh import load_mesh_mode_models

            return load_mesh_mode_models(settings, None, _quiet)
        from .batch import load_engine_models

        if self.stylized is None:
            raise ConfigError("a generator-mode farm worker needs the driver's stylized generator")
        return load_engine_models(settings, None, _quiet, stylized_path=self.stylized.materialize())


def engine_worker_models(ray, settings: BatchSettings, models: BatchModels, farm: FarmConfig) -> EngineWorkerModels:
    """The workers' recipe for the driver's ``models`` (generator mode: shares its stylized generator)."""
    stylized = None
    if settings.mode != "mesh":
        if not models.stylized_generator:
            raise ConfigError("the driver's models do not say which stylized generator they use")
        stylized = share_checkpoint(ray, models.stylized_generator)
    return EngineWorkerModels(settings, stylized, farm.worker_device(settings.device))


_WORKER_MODELS: dict[Any, BatchModels] = {}  # per worker process: recipe → models, built at its first item


def _worker_models(recipe: Callable[[], BatchModels]) -> BatchModels:
    if recipe not in _WORKER_MODELS:
        _WORKER_MODELS.clear()  # a worker process serves one batch at a time: free the previous one's models
        _WORKER_MODELS[recipe] = recipe()
    return _WORKER_MODELS[recipe]


def farm_item(recipe: Callable[[], BatchModels], fingerprint: str, consent: bool, path: str, kind: str, stem: str,
              source_sha: str, consent_record: dict[str, Any] | None, threads: int) -> tuple[ItemResult, dict[str, bytes]]:
    """One item in a Ray worker: (its result, the files it made by name). Runs the local batch's own step."""
    import torch

    torch.set_num_threads(threads)
    models = _worker_models(recipe)
    own = batch_fingerprint(models)
    if own != fingerprint:
        return ItemResult(path, status="failed", error=(
            f"this Ray worker's models make other heads than the driver's (fingerprint {own}, driver {fingerprint}): "
            "every node needs the same engine version, model pack and model files")), {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="head-stylizer-item-") as tmp:
        try:
            item = _process(Path(path), kind, stem, Path(tmp), models, consent, fingerprint, source_sha, consent_record)
        except StylizationCancelled as exc:
            return ItemResult(path, seconds=time.perf_counter() - start, status="cancelled", error=str(exc)), {}
        except (EngineError, OSError, ValueError, RuntimeError) as exc:  # as run_batch: a bad file is a failed row
            message = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
            return ItemResult(path, seconds=time.perf_counter() - start, status="failed", error=message), {}
        files = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    return item, files


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------
def _write_item_files(out_dir: Path, stem: str, files: dict[str, bytes]) -> None:
    """The item's files, atomically, its sidecar (``<stem>.json``) last: its presence marks the item finished."""
    sidecar = f"{stem}.json"
    if sidecar not in files:
        raise RuntimeError(f"the worker returned no sidecar for {stem} (files: {sorted(files)})")
    for name in sorted(files, key=lambda n: n == sidecar):
        write_bytes(out_dir / name, files[name])


def _task_failure(ray, exc: BaseException, farm: FarmConfig) -> tuple[str, str]:
    """(status, error) of an item whose task raised instead of returning."""
    if isinstance(exc, ray.exceptions.TaskCancelledError):
        return "cancelled", "cancelled"
    if isinstance(exc, ray.exceptions.WorkerCrashedError):
        return "failed", (f"the Ray worker running this item died {farm.max_retries + 1} time(s) (retries: "
                          f"{farm.max_retries}); see the worker logs in the Ray session folder")
    cause = getattr(exc, "cause", None)
    if isinstance(cause, EngineError):
        return "failed", str(cause)
    if cause is not None:
        return "failed", f"{type(cause).__name__}: {cause}"
    return "failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def run_farm_batch(
    inputs: list[Path],
    out_dir: str | Path,
    models: BatchModels,
    worker_models: Callable[[], BatchModels],
    consent: bool,
    farm: FarmConfig,
    cancel: CancelToken | None = None,
    on_event: EventSink = emit,
    consent_records: ConsentRecords | None = None,
    purge_intermediates: bool = False,
) -> BatchReport:
    """:func:`engine.app.batch.run_batch` with the items as Ray tasks (see the module docstring).

    ``models``: the driver's (for the fingerprint and the report); ``worker_models``: a picklable, hashable
    recipe each worker calls once to build the same models (:class:`EngineWorkerModels` for the real ones).
    ``consent_records``, ``purge_intermediates``: as :func:`engine.app.batch.run_batch` (checked and done by the
    driver: an item without consent is never sent to a worker). Needs a Ray connection (:func:`farm_session`)."""
    if not consent:
        raise ConsentRequired(
            "a batch needs the subjects' consent: confirm it with --i-have-consent "
            "(Blender: tick 'I have the subjects' consent'); the confirmation is recorded in every output"
        )
    ray = require_ray()
    if not ray.is_initialized():
        raise ConfigError("run_farm_batch needs a Ray connection (engine.app.farm.farm_session)")
    farm.validate()
    check_cluster_fits(ray, farm)
    out_dir = prepare_out_dir(out_dir)
    consent_records = consent_records or ConsentRecords()
    fingerprint = batch_fingerprint(models)
    report = BatchReport(out_dir, [], consent, fingerprint)
    stems = output_stems(inputs)
    total = len(inputs)
    slots: list[ItemResult | None] = [None] * total
    finished = 0

    def record(index: int, item: ItemResult) -> None:
        nonlocal finished
        if purge_intermediates and item.status in ("done", "skipped"):
            _purge(inputs[index], out_dir / f"{stems[index]}.json", on_event)
        slots[index] = item
        finished += 1
        report.items = [s for s in slots if s is not None]  # input order, as a local run lists them
        report.write()
        on_event("item", index=index, total=total, input=str(inputs[index]), status=item.status, output=item.output,
                 identity_similarity=item.identity_similarity, seconds=round(item.seconds, 3), error=item.error)
        on_event("progress", stage="batch", step=finished, total=total, fraction=finished / max(total, 1))

    resources = f"{farm.cpus_per_item:g} CPU + {farm.gpus_per_item:g} GPU per item"
    on_event("stage", stage="batch", message=f"{total} inputs on Ray ({resources})", total=total)
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    options = farm.task_options() | ({"runtime_env": {"env_vars": env}} if env else {})
    task = ray.remote(farm_item).options(**options)
    pending: dict[Any, int] = {}

    def collect(timeout: float) -> None:
        """Write the items whose tasks have finished (waiting up to ``timeout`` seconds for one)."""
        if not pending:
            return
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout, fetch_local=False)
        for ref in ready:
            index = pending.pop(ref)
            try:
                item, files = ray.get(ref)
                if item.status == "done":
                    _write_item_files(out_dir, stems[index], files)
            except ray.exceptions.RayError as exc:
                status, error = _task_failure(ray, exc, farm)
                item = ItemResult(str(inputs[index]), status=status, error=error)
            except OSError as exc:  # the driver could not write the outputs
                item = ItemResult(str(inputs[index]), status="failed", error=f"{type(exc).__name__}: {exc}")
            if item.status == "failed":
                log(f"batch: {inputs[index].name}: {item.error}")
            if item.status == "cancelled":
                report.cancelled = True
            record(index, item)

    for index, (path, stem) in enumerate(zip(inputs, stems)):
        if cancel is not None and cancel.cancelled:
            break
        start = time.perf_counter()
        try:
            kind = item_kind(path)
            source_sha = source_hash(path)
            consent_record = consent_records.record_for(path)  # no record: a failed row, never sent to a worker
            if _finished(out_dir / f"{stem}.json", out_dir / f"{stem}.glb", fingerprint, source_sha) and \
                    still_covers(_recorded_consent(out_dir / f"{stem}.json"), consent_record):
                old = json.loads((out_dir / f"{stem}.json").read_text(encoding="utf-8"))
                record(index, ItemResult(str(path), f"{stem}.glb", old.get("identity_similarity"), 0.0, "skipped"))
                continue
        except (EngineError, OSError, ValueError, RuntimeError) as exc:  # as run_batch: one bad file never stops it
            message = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
            log(f"batch: {path.name}: {message}")
            record(index, ItemResult(str(path), seconds=time.perf_counter() - start, status="failed", error=message))
            continue
        ref = task.remote(worker_models, fingerprint, consent, str(path), kind, stem, source_sha, consent_record,
                          farm.worker_threads())
        pending[ref] = index
        on_event("item", index=index, total=total, input=str(path), status="started")
        # Write what has finished while the driver still hashes sources: a long batch's results must not pile up
        # in the object store until every item is submitted.
        collect(0.0)

    while pending and not (cancel is not None and cancel.cancelled):
        collect(farm.poll_seconds)

    if cancel is not None and cancel.cancelled:
        report.cancelled = True
        for ref in pending:
            ray.cancel(ref)  # queued: dropped; running: interrupted (nothing of it was written)
        for index in range(total):
            if slots[index] is None:
                slots[index] = ItemResult(str(inputs[index]), status="cancelled")
        report.items = list(slots)
        cancel.acknowledge()
    report.write()
    write_batch_report_html(report)
    counts = report.counts()
    on_event("done" if not report.cancelled else "cancelled", result=str(out_dir / "report.json"), **counts)
    return report


def run_farm_command(inputs: list[Path], out_dir: str | Path, settings: BatchSettings, farm: FarmConfig,
                     cancel: CancelToken, on_event: EventSink = emit, consent_records: ConsentRecords | None = None,
                     purge_intermediates: bool = False) -> int:
    """``engine batch --ray``: connect (or start a local instance), load the models and build the stylized
    generator once in the driver, share it, and farm the items out. The caller has checked consent.

    On a cluster the workers' current folder is not the driver's: inputs travel as absolute paths (which every
    node must see, a shared mount)."""
    if not farm.local:
        inputs = [p.absolute() for p in inputs]
    with farm_session(farm) as ray:
        from .batch_loading import load_batch_models

        models = load_batch_models(settings, cancel, on_event)
        if models is None:
            return 0
        worker_models = engine_worker_models(ray, settings, models, farm)
        run_farm_batch(inputs, out_dir, models, worker_models, consent=True, farm=farm, cancel=cancel, on_event=on_event,
                       consent_records=consent_records, purge_intermediates=purge_intermediates)
    return 0
