"""The batch on Ray (engine/app/farm.py), on a local Ray instance of this machine: the same files as a local
run, a worker killed mid-item is retried and the batch completes, a rerun redoes nothing, cancel, a worker with
other models, resources no node has, the command line's flags, and Ray as an optional import. The stub models
(test_batch.stub_models, built inside each worker by tests/engine/app/farm_stubs.py) keep it fast; one slow
test runs the real embedded pack through ``engine batch`` and ``engine batch --ray``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from engine.app.batch import collect_inputs, run_batch
from engine.app.farm import FarmConfig, run_farm_batch
from engine.errors import ConfigError
from engine.stylize.cancel import CancelToken
from tests.engine.app.farm_stubs import StubRecipe, calls
from tests.engine.app.test_batch import copy_folder, quiet, scan_folder, stub_models  # noqa: F401 - scan_folder: fixture

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[3]
DATE = "1700000000"  # SOURCE_DATE_EPOCH: the provenance date of both runs, so whole files can be compared


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance sized for this machine (2 CPUs, a small object store, no dashboard), shut down after."""
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


def farm(**overrides) -> FarmConfig:
    return FarmConfig(**{"max_retries": 2, "poll_seconds": 0.1, **overrides})


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith("report.")}


def without_seconds(sidecar: bytes) -> dict:
    """A sidecar without its timings (``seconds``, ``inversion_seconds``): all else must match."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "seconds" not in k}
        return [strip(v) for v in value] if isinstance(value, list) else value

    return strip(json.loads(sidecar))


def test_farm_writes_what_a_local_run_writes(ray_cluster, scan_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", DATE)
    inputs = collect_inputs(scan_folder)
    local = run_batch(inputs, tmp_path / "local", stub_models(), consent=True, on_event=quiet)
    events = []
    farmed = run_farm_batch(inputs, tmp_path / "farm", stub_models(), StubRecipe(str(tmp_path)), consent=True, farm=farm(),
                            on_event=lambda event, **f: events.append((event, f)))
    assert farmed.counts() == local.counts() == {"done": 5, "skipped": 0, "failed": 2, "cancelled": 0}
    ours, theirs = outputs(tmp_path / "farm"), outputs(tmp_path / "local")
    assert sorted(ours) == sorted(theirs) == sorted([f"head{i}.glb" for i in range(5)] + [f"head{i}.json" for i in range(5)])
    for name in ours:
        if name.endswith(".glb"):
            assert ours[name] == theirs[name], name  # byte-identical heads, provenance included
        else:
            assert without_seconds(ours[name]) == without_seconds(theirs[name]), name
    rows = lambda report: [{k: v for k, v in r.items() if k != "seconds"} for r in report.to_dict()["items"]]
    assert rows(farmed) == rows(local)  # the same report, in input order, with the same errors
    assert json.loads((tmp_path / "farm" / "report.json").read_text())["counts"] == farmed.counts()
    assert {name for name, _ in calls(tmp_path)} == {f"head{i}{('.ply', '.obj')[i % 2]}" for i in range(5)} | {"broken.ply"}
    assert events[-1][0] == "done" and [f["step"] for e, f in events if e == "progress"] == list(range(1, 8))


def test_a_killed_worker_is_retried_and_a_rerun_redoes_nothing(ray_cluster, scan_folder, tmp_path):
    """head2's worker process is SIGKILLed in the middle of the item (after its inversion): Ray reruns it in a
    new worker and the batch completes; nothing half-made is left. A rerun then does no finished item again."""
    inputs = collect_inputs(copy_folder(scan_folder, tmp_path / "in"))
    out = tmp_path / "out"
    recipe = StubRecipe(str(tmp_path), kill_at="head2.ply", delay=0.2)
    report = run_farm_batch(inputs, out, stub_models(), recipe, consent=True, farm=farm(max_retries=2), on_event=quiet)
    assert (tmp_path / "killed-head2.ply").exists(), "the worker was never killed"
    assert report.counts() == {"done": 5, "skipped": 0, "failed": 2, "cancelled": 0}, report.to_dict()
    attempts = [pid for name, pid in calls(tmp_path) if name == "head2.ply"]
    assert len(attempts) == 2 and attempts[1] != int((tmp_path / "killed-head2.ply").read_text())  # a new process
    assert sorted(p.name for p in out.glob("*.glb")) == [f"head{i}.glb" for i in range(5)]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("head*")}
    before = len(calls(tmp_path))
    from engine.io.atomic import atomic_path

    atomic_path(out / "report.json").__enter__().write_bytes(b"half")  # a driver killed mid-write leaves this

    again = run_farm_batch(inputs, out, stub_models(), recipe, consent=True, farm=farm(), on_event=quiet)
    assert again.counts() == {"done": 0, "skipped": 5, "failed": 2, "cancelled": 0}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the rerun cleared it
    assert [name for name, _ in calls(tmp_path)[before:]] == ["broken.ply"]  # only the failure is tried again
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("head*")}


def test_a_worker_that_dies_without_retries_left_is_a_failed_row(ray_cluster, scan_folder, tmp_path):
    inputs = [scan_folder / "head0.ply", scan_folder / "head1.obj"]
    recipe = StubRecipe(str(tmp_path), kill_at="head1.obj")
    report = run_farm_batch(inputs, tmp_path / "out", stub_models(), recipe, consent=True, farm=farm(max_retries=0), on_event=quiet)
    rows = {Path(i.input).name: i for i in report.items}
    assert rows["head0.ply"].status == "done"
    assert rows["head1.obj"].status == "failed" and "worker running this item died 1 time" in rows["head1.obj"].error
    assert not (tmp_path / "out" / "head1.glb").exists() and not (tmp_path / "out" / "head1.json").exists()


@pytest.mark.slow  # ~30 s on a busy 2-core machine (items that last 1.5 s each, so that one is still running)
def test_cancel_drops_the_items_not_finished_and_a_rerun_completes(ray_cluster, scan_folder, tmp_path):
    inputs = collect_inputs(scan_folder)
    out = tmp_path / "out"
    cancel = CancelToken(tmp_path / "stop")

    def on_event(event, **fields):
        if event == "item" and fields.get("status") == "done":
            (tmp_path / "stop").touch()

    recipe = StubRecipe(str(tmp_path), delay=1.5)
    report = run_farm_batch(inputs, out, stub_models(), recipe, consent=True, farm=farm(), cancel=cancel, on_event=on_event)
    counts = report.counts()
    assert report.cancelled and 1 <= counts["done"] <= 2 and counts["cancelled"] >= 3, counts
    assert len(report.items) == len(inputs) and not (tmp_path / "stop").exists()  # the cancel file is consumed
    assert len(list(out.glob("*.glb"))) == counts["done"] == len(list(out.glob("head*.json")))
    done = run_farm_batch(inputs, out, stub_models(), StubRecipe(str(tmp_path)), consent=True, farm=farm(), on_event=quiet)
    assert done.counts()["done"] + done.counts()["skipped"] == 5 and done.counts()["skipped"] == counts["done"]


def test_a_worker_whose_models_differ_from_the_drivers_makes_nothing(ray_cluster, scan_folder, tmp_path):
    recipe = StubRecipe(str(tmp_path), tag="another pack")
    report = run_farm_batch([scan_folder / "head0.ply"], tmp_path / "out", stub_models(), recipe, consent=True, farm=farm(),
                            on_event=quiet)
    (item,) = report.items
    assert item.status == "failed" and "other heads than the driver's" in item.error
    assert not list((tmp_path / "out").glob("head*"))


def test_an_item_without_consent_is_never_sent_to_a_worker(ray_cluster, scan_folder, tmp_path):
    from engine.app.consent import ConsentRecords

    register = ConsentRecords({"head0.ply": "C-17"}, "consent.csv", "ab" * 32)
    inputs = [scan_folder / "head0.ply", scan_folder / "head1.obj"]
    report = run_farm_batch(inputs, tmp_path / "out", stub_models(), StubRecipe(str(tmp_path)), consent=True, farm=farm(),
                            on_event=quiet, consent_records=register)
    rows = {Path(i.input).name: i for i in report.items}
    assert rows["head0.ply"].status == "done" and rows["head1.obj"].status == "failed"
    assert "no consent record for head1.obj" in rows["head1.obj"].error
    assert [name for name, _ in calls(tmp_path)] == ["head0.ply"]  # head1 never reached a worker
    sidecar = json.loads((tmp_path / "out" / "head0.json").read_text())
    assert sidecar["provenance"]["consent_record"] == {"id": "C-17", "source": register.source}
    assert (tmp_path / "out" / "report.html").is_file()


@pytest.mark.skipif(not (ROOT / "engine" / "pack" / "embedded-v1" / "manifest.json").is_file(), reason="embedded pack not built")
def test_a_worker_uses_the_drivers_stylized_generator_and_never_stylizes(ray_cluster, tmp_path, monkeypatch):
    """The real recipe: the checkpoint comes out of the object store onto the worker's disk (checked against its
    SHA-256) and the models are built on it; stylizing in a worker would be an error here."""
    from engine.app import pipeline
    from engine.app.batch import BatchSettings
    from engine.app.farm import EngineWorkerModels, SharedCheckpoint, share_checkpoint
    from engine.errors import CheckpointError

    def no_stylizing(*args, **kwargs):
        raise AssertionError("a farm worker stylized the generator")

    monkeypatch.setattr(pipeline, "stylized_generator", no_stylizing)
    checkpoint = ROOT / "engine" / "pack" / "embedded-v1" / "generator" / "generator.safetensors"  # stands in for a stylized one
    shared = share_checkpoint(ray_cluster, checkpoint)
    settings = BatchSettings(style_preset="zombie", device="cpu", cache_dir=str(tmp_path / "cache"), framing="heuristic")
    models = EngineWorkerModels(settings, shared)()
    assert Path(models.stylized_generator).read_bytes() == checkpoint.read_bytes()
    assert Path(models.stylized_generator).with_suffix(".json").read_bytes() == checkpoint.with_suffix(".json").read_bytes()
    assert models.model_sha256["stylized_generator"] == shared.sha256
    with pytest.raises(CheckpointError, match="arrived corrupt"):
        SharedCheckpoint("0" * 64, checkpoint.name, shared.files).materialize()


@pytest.mark.skipif(not (ROOT / "engine" / "pack" / "embedded-v1" / "manifest.json").is_file(), reason="embedded pack not built")
def test_mesh_mode_workers_build_the_drivers_models(tmp_path):
    """Mesh mode shares no stylized generator (each scan is its own field): a worker's recipe builds the mesh-mode
    models itself, on the task's device, and they have the driver's fingerprint (else every item would fail)."""
    from engine.app.batch import BatchSettings, batch_fingerprint
    from engine.app.batch_mesh import load_mesh_mode_models
    from engine.app.farm import EngineWorkerModels

    settings = BatchSettings(style_preset="zombie", mode="mesh", field_steps=8, device="auto", cache_dir=str(tmp_path))
    driver = load_mesh_mode_models(settings, None, quiet)
    worker = EngineWorkerModels(settings, None, FarmConfig().worker_device(settings.device))()
    assert batch_fingerprint(worker) == batch_fingerprint(driver) and worker.stylized_generator is None


def test_resources_no_node_has_are_refused_at_once(ray_cluster, scan_folder, tmp_path):
    for too_much, named in (({"gpus_per_item": 1.0}, "1 GPU"), ({"cpus_per_item": 3.0}, "3 CPU")):
        with pytest.raises(ConfigError, match=f"no node of the Ray cluster has .*{named}.*nodes: 2 CPU/0 GPU"):
            run_farm_batch([scan_folder / "head0.ply"], tmp_path / "out", stub_models(), StubRecipe(str(tmp_path)),
                           consent=True, farm=farm(**too_much), on_event=quiet)
    assert calls(tmp_path) == []


def test_the_driver_writes_the_sidecar_last(tmp_path, monkeypatch):
    """The sidecar marks an item finished, so the driver writes it after the item's other files (a driver killed
    between the two leaves an item the next run redoes, never a sidecar without its glb)."""
    from engine.app import farm as farm_module

    written = []
    monkeypatch.setattr(farm_module, "write_bytes", lambda path, data: written.append(Path(path).name))
    farm_module._write_item_files(tmp_path, "a", {"a.json": b"{}", "a.glb": b"glTF", "a.lod1.png": b"png"})
    assert written[-1] == "a.json" and sorted(written) == ["a.glb", "a.json", "a.lod1.png"]
    with pytest.raises(RuntimeError, match="no sidecar"):
        farm_module._write_item_files(tmp_path, "b", {"b.glb": b"glTF"})


def test_task_options_declare_the_resources_and_retry_only_dead_workers():
    config = FarmConfig(cpus_per_item=2, gpus_per_item=0.5, max_retries=4).validate()
    assert config.task_options() == {"num_cpus": 2, "num_gpus": 0.5, "max_retries": 4, "retry_exceptions": False}
    assert config.worker_threads() == 2 and config.worker_device("auto") == "cuda"
    assert FarmConfig().worker_device("auto") == "cpu" and FarmConfig().worker_device("cuda") == "cuda"
    for bad in ({"cpus_per_item": 0}, {"gpus_per_item": -1}, {"gpus_per_item": 1.5}, {"max_retries": -1},
                {"address": "head:6379", "local_cpus": 2}):
        with pytest.raises(ConfigError):
            FarmConfig(**bad).validate()


def _parse(*argv: str) -> argparse.Namespace:
    from engine.app.commands.batch import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--out", "o", *argv])


def test_command_line_flags():
    from engine.app.commands.batch import farm_config_from_args

    assert farm_config_from_args(_parse()) is None
    assert farm_config_from_args(_parse("--ray")) == FarmConfig()
    assert farm_config_from_args(_parse("--ray", "--ray-gpus-per-item", "1")) == FarmConfig(gpus_per_item=1.0)
    config = farm_config_from_args(_parse("--ray", "10.0.0.5:6379", "--ray-cpus-per-item", "4", "--ray-max-retries", "1"))
    assert config == FarmConfig(address="10.0.0.5:6379", cpus_per_item=4.0, max_retries=1) and not config.local
    local = farm_config_from_args(_parse("--ray", "--ray-num-cpus", "2", "--ray-object-store-mb", "200"))
    assert local.local and local.local_cpus == 2 and local.object_store_mb == 200
    with pytest.raises(ConfigError, match="--ray-gpus-per-item: only with --ray"):
        farm_config_from_args(_parse("--ray-gpus-per-item", "1"))


def test_ray_is_optional_and_its_absence_is_a_clear_error(tmp_path, scan_folder):
    """``engine batch`` without --ray never imports Ray; with --ray and no Ray installed it says how to get it,
    before any model is loaded."""
    code = ("import sys, argparse; import engine.app.cli, engine.app.commands.batch as b, engine.app.farm\n"
            "b.farm_config_from_args(argparse.Namespace(ray=None, ray_cpus_per_item=None, ray_gpus_per_item=None,"
            " ray_max_retries=None, ray_num_cpus=None, ray_object_store_mb=None))\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    blocker = tmp_path / "no_ray" / "ray"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named ray (blocked by the test)')\n")
    env["PYTHONPATH"] = f"{blocker.parent}{os.pathsep}{ROOT}"
    proc = subprocess.run([sys.executable, "-m", "engine", "batch", "--in", str(scan_folder), "--out", str(tmp_path / "o"),
                           "--ray", "--i-have-consent"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: --ray needs the Ray package") and "requirements.txt" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_local_session_is_sized_keeps_the_cancel_handler_and_shuts_down():
    """``--ray`` without an address: a private local instance with the given CPUs and object store, shut down at
    the end; ``ray.init`` would make SIGTERM kill the driver, so the batch's own handler (cancel) is put back."""
    code = ("import signal, json\n"
            "from engine.app.farm import FarmConfig, farm_session\n"
            "def mine(signum, frame): pass\n"
            "signal.signal(signal.SIGTERM, mine)\n"
            "with farm_session(FarmConfig(local_cpus=1, object_store_mb=100)) as ray:\n"
            "    resources = ray.cluster_resources()\n"
            "    kept = signal.getsignal(signal.SIGTERM) is mine\n"
            "print(json.dumps({'cpu': resources.get('CPU'), 'store': resources.get('object_store_memory'), 'kept': kept,"
            " 'after': ray.is_initialized()}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"cpu": 1.0, "store": 100 * 2**20, "kept": True, "after": False}


_DRIVER = """
import json, sys
from engine.app.batch import collect_inputs
from engine.app.farm import FarmConfig, farm_session, run_farm_batch
from tests.engine.app.farm_stubs import StubRecipe
from tests.engine.app.test_batch import stub_models

address, scans, out, log = sys.argv[1:5]
farm = FarmConfig(address=address)
with farm_session(farm) as ray:
    nodes = [n["Resources"].get("CPU") for n in ray.nodes() if n["Alive"]]
    report = run_farm_batch(collect_inputs(scans), out, stub_models(), StubRecipe(log), consent=True, farm=farm,
                            on_event=lambda *a, **k: None)
print(json.dumps({"counts": report.counts(), "nodes": nodes, "connected_after": ray.is_initialized()}))
"""


@pytest.mark.slow
def test_a_cluster_started_with_ray_start_takes_the_batch_by_address(scan_folder, tmp_path):
    """The multi-node recipe on one machine: ``ray start --head`` (its workers import the engine through
    PYTHONPATH, as the README says for every node), then the batch connects with ``--ray HOST:PORT``, runs there,
    and leaves the cluster running (it is not the batch's to stop). Without the token mode on the driver the
    connection is refused, and the error says what to set."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Ray 2.60's `ray start` turns token authentication on: the driver needs RAY_AUTH_MODE=token (and the token,
    # here the same ~/.ray/auth_token), as the README says for every node and the driver
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    ray_cli = Path(sys.executable).with_name("ray")
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths live under it (Unix limit 107 bytes)
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--object-store-memory=100000000", "--include-dashboard=false", "--node-ip-address=127.0.0.1",
                             f"--temp-dir={temp}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(0.5)
        time.sleep(2)  # the head's services after its GCS port
        no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        refused = subprocess.run([sys.executable, "-c", _DRIVER, f"127.0.0.1:{port}", str(scan_folder), str(tmp_path / "x"),
                                  str(tmp_path)], capture_output=True, text=True, cwd=ROOT, env=no_token, timeout=300)
        assert refused.returncode != 0 and "RAY_AUTH_MODE=token" in refused.stderr
        proc = subprocess.run([sys.executable, "-c", _DRIVER, f"127.0.0.1:{port}", str(scan_folder), str(tmp_path / "out"),
                               str(tmp_path)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        assert seen == {"counts": {"done": 5, "skipped": 0, "failed": 2, "cancelled": 0}, "nodes": [2.0],
                        "connected_after": False}
        assert head.poll() is None  # the batch disconnected; the cluster is still up
        assert len(list((tmp_path / "out").glob("head*.glb"))) == 5
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp, ignore_errors=True)


PACK = ROOT / "engine" / "pack" / "embedded-v1"


@pytest.mark.slow
@pytest.mark.skipif(not (PACK / "manifest.json").is_file(), reason="embedded pack not built (engine/pack/embedded-v1/manifest.json absent)")
def test_cli_farm_on_the_pack_writes_the_local_runs_bytes(tmp_path):
    """The real models: ``engine batch`` and ``engine batch --ray`` (a local Ray instance, two workers) write
    byte-identical glb heads (game-ready: texture, LODs) for the same settings; the farm reuses the stylized
    generator the local run built and its workers never stylize."""
    from engine.world import ScanExport, export_scan, sample_identities

    folder = tmp_path / "in"
    ids = sample_identities(2, torch.Generator().manual_seed(21))
    for i in range(2):
        export_scan(ids[i : i + 1], folder / f"s{i}", ScanExport(resolution=40, formats=(".ply",)))
    common = ["--in", str(folder), "--style", "zombie", "--steps", "2", "--inversion-steps", "2", "--mesh-resolution", "48",
              "--texture-size", "512", "--framing", "heuristic", "--device", "cpu", "--i-have-consent",
              "--cache", str(tmp_path / "cache")]
    env = {**os.environ, "SOURCE_DATE_EPOCH": DATE, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def batch(out: str, *extra: str) -> list[dict]:
        proc = subprocess.run([sys.executable, "-m", "engine", "batch", "--out", str(tmp_path / out), *common, *extra],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

    batch("local")
    events = batch("farm", "--ray", "--ray-num-cpus", "2", "--ray-object-store-mb", "200")
    assert any(e.get("stage") == "stylize" and e.get("status") == "reused" for e in events)  # built once, by the local run
    assert events[-1]["event"] == "done" and events[-1]["done"] == 2
    for name in ("s0", "s1"):
        ours, theirs = tmp_path / "farm" / f"{name}.glb", tmp_path / "local" / f"{name}.glb"
        assert ours.read_bytes() == theirs.read_bytes(), name
        assert without_seconds((tmp_path / "farm" / f"{name}.json").read_bytes()) == \
            without_seconds((tmp_path / "local" / f"{name}.json").read_bytes())
    again = batch("farm", "--ray", "--ray-num-cpus", "2", "--ray-object-store-mb", "200")
    assert again[-1]["skipped"] == 2 and again[-1]["done"] == 0
