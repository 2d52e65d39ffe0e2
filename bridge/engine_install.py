"""Install Engine: a managed Python environment for the engine, made from inside Blender (no terminal).

The engine needs torch and diffusers, which Blender's Python does not have. *Install Engine* creates a virtual
environment inside the extension's user folder (``bpy.utils.extension_path_user``, so Blender's own Python
and other add-ons are never touched) from Blender's own interpreter and installs the extension's pinned
``requirements.txt`` into it with pip:

* **online**: from PyPI (or the package index the preferences name), with the PyTorch index of the chosen
  torch variant as an extra index — CPU and CUDA builds of ``torch==2.13.0`` live there; Apple (macOS arm64)
  wheels come from PyPI itself;
* **offline**: ``--no-index --find-links FOLDER`` from a folder of wheels (a studio's mirror, or a machine
  without internet).

This module is plain Python (no bpy): it builds the commands, runs them in a background thread with a
progress estimate parsed from pip's output, can be cancelled, writes a log, and checks the result (torch
version, device, GPU name and memory). The Blender operators (``operators/engine_setup.py``) only drive it.
A marker file names a folder as ours, so *Remove* never deletes anything else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MARKER = "head_stylizer_env.json"
LOG_NAME = "install.log"
PYPI = "https://pypi.org/simple"
# Extra index per torch variant (None: PyPI's own wheels). The CUDA build follows the torch release's default.
TORCH_INDEXES = {
    "cpu": "https://download.pytorch.org/whl/cpu",
    "cuda": "https://download.pytorch.org/whl/cu128",
    "apple": None,
}
# What the engine imports at start-up; the check proves they load in the new environment.
CHECK_CODE = """
import json, importlib.util
import torch
info = {"torch": torch.__version__, "cuda": bool(torch.cuda.is_available()),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
if info["cuda"]:
    p = torch.cuda.get_device_properties(0)
    info.update(device="cuda", gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1))
else:
    info.update(device="mps" if info["mps"] else "cpu")
info["missing"] = [m for m in ("diffusers", "transformers", "safetensors", "mcubes", "xatlas") if importlib.util.find_spec(m) is None]
print(json.dumps(info))
"""


class InstallError(RuntimeError):
    """An install step failed; the message says which and why (the log has pip's full output)."""


@dataclass(frozen=True)
class InstallOptions:
    env_dir: str  # the environment folder (created)
    base_python: str  # the interpreter the environment is made from (Blender's)
    requirements: str  # the extension's pinned requirements.txt
    torch_variant: str = "cpu"  # cpu | cuda | apple
    index_url: str = ""  # "" = PyPI
    wheel_dir: str = ""  # "" = online; else offline from this folder of wheels
    repair: bool = False  # recreate the environment from scratch

    def validate(self) -> "InstallOptions":
        if self.torch_variant not in TORCH_INDEXES:
            raise InstallError(f"torch variant must be one of {sorted(TORCH_INDEXES)}, got {self.torch_variant!r}")
        if not Path(self.requirements).is_file():
            raise InstallError(f"{self.requirements}: the extension's requirements.txt is missing")
        if self.wheel_dir and not Path(self.wheel_dir).is_dir():
            raise InstallError(f"{self.wheel_dir}: the wheel folder does not exist")
        env = Path(self.env_dir)
        if env.exists() and any(env.iterdir()) and not (env / MARKER).is_file():
            raise InstallError(f"{env} is not empty and was not made by Install Engine; choose another folder")
        return self


def environment_python(env_dir: str | os.PathLike) -> Path:
    env = Path(env_dir)
    return env / "Scripts" / "python.exe" if os.name == "nt" else env / "bin" / "python"


def is_installed(env_dir: str | os.PathLike) -> bool:
    """The folder holds a finished install (marker written after the check passed)."""
    try:
        return json.loads((Path(env_dir) / MARKER).read_text()).get("status") == "ready" \
            and environment_python(env_dir).is_file()
    except (OSError, ValueError):
        return False


def read_marker(env_dir: str | os.PathLike) -> dict[str, Any]:
    try:
        return json.loads((Path(env_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def pip_index_arguments(options: InstallOptions) -> list[str]:
    if options.wheel_dir:
        return ["--no-index", "--find-links", str(Path(options.wheel_dir).resolve())]
    args = ["--index-url", options.index_url or PYPI]
    extra = TORCH_INDEXES[options.torch_variant]
    if extra:
        args += ["--extra-index-url", extra]
    return args


def install_commands(options: InstallOptions) -> list[tuple[str, list[str]]]:
    """(stage, argv) in order: make the environment, install the requirements."""
    python = str(environment_python(options.env_dir))
    venv = [options.base_python, "-m", "venv"] + (["--clear"] if options.repair else []) + [options.env_dir]
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
           *pip_index_arguments(options), "-r", str(Path(options.requirements).resolve())]
    return [("environment", venv), ("packages", pip)]


def requirement_names(requirements: str | os.PathLike) -> list[str]:
    names = []
    for line in Path(requirements).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[<>=!~\[; ]", line, 1)[0].lower().replace("_", "-"))
    return names


def check_environment(python: str | os.PathLike, timeout: float = 120.0) -> dict[str, Any]:
    """torch version, device, GPU name and memory of an engine interpreter (raises InstallError if it fails)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    try:
        done = subprocess.run([str(python), "-c", CHECK_CODE], capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{python}: cannot run ({exc})") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["import failed"])[-1]
        raise InstallError(f"{python}: {last}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    if info.get("missing"):
        raise InstallError(f"{python}: missing packages {info['missing']}")
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for the panel: 'torch 2.13.0, CUDA: NVIDIA … (24.0 GB)' / 'torch 2.13.0+cpu, CPU'."""
    if info.get("device") == "cuda":
        return f"torch {info['torch']}, CUDA: {info.get('gpu')} ({info.get('gpu_memory_gb')} GB)"
    return f"torch {info['torch']}, {'Apple GPU (MPS)' if info.get('device') == 'mps' else 'CPU'}"


def remove_environment(env_dir: str | os.PathLike) -> None:
    """Delete a managed environment; refuses a folder without our marker (never someone else's files)."""
    env = Path(env_dir)
    if not env.exists():
        return
    if not (env / MARKER).is_file():
        raise InstallError(f"{env} was not made by Install Engine; not removing it")
    shutil.rmtree(env)


@dataclass
class InstallState:
    """What the panel shows while an install runs (read from the UI thread)."""

    stage: str = "waiting"
    fraction: float = 0.0
    message: str = ""
    done: bool = False
    ok: bool = False
    cancelled: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class EngineInstall:
    """Runs the install commands in a background thread; ``state`` is polled by a modal operator's timer."""

    def __init__(self, options: InstallOptions):
        self.options = options.validate()
        self.state = InstallState()
        self.log_path = Path(options.env_dir).parent / LOG_NAME
        self._process: subprocess.Popen | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._packages = requirement_names(options.requirements)

    # -- control ---------------------------------------------------------------------------------------
    def start(self) -> "EngineInstall":
        self._thread = threading.Thread(target=self._run, name="head-stylizer-install", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()

    def wait(self, timeout: float | None = None) -> InstallState:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    # -- work ------------------------------------------------------------------------------------------
    def _update(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.state, key, value)

    def _run(self) -> None:
        env = Path(self.options.env_dir)
        try:
            env.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(f"\n=== install {time.strftime('%Y-%m-%d %H:%M:%S')} {json.dumps(asdict(self.options))}\n")
                for stage, argv in install_commands(self.options):
                    self._step(stage, argv, log)
                    if stage == "environment":  # ours from now on (a failed install can be repaired or removed)
                        (env / MARKER).write_text(json.dumps({"status": "installing", "options": asdict(self.options)}))
            self._update(stage="check", fraction=0.95, message="checking torch in the new environment")
            info = check_environment(environment_python(env))
            (env / MARKER).write_text(json.dumps({"status": "ready", "options": asdict(self.options), "check": info,
                                                  "installed": time.strftime("%Y-%m-%d %H:%M:%S")}))
            self._update(stage="ready", fraction=1.0, message=describe(info), info=info, ok=True)
        except InstallError as exc:
            self._update(message=str(exc), cancelled=self._cancel.is_set())
        except OSError as exc:
            self._update(message=f"{env}: {exc}")
        finally:
            self._update(done=True)

    def _step(self, stage: str, argv: list[str], log) -> None:
        if self._cancel.is_set():
            raise InstallError("install cancelled")
        base = {"environment": 0.0, "packages": 0.05}[stage]
        self._update(stage=stage, fraction=base, message="creating the environment" if stage == "environment"
                     else f"installing {len(self._packages)} pinned packages")
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
        env["PYTHONUNBUFFERED"] = "1"
        with self._lock:
            if self._cancel.is_set():
                raise InstallError("install cancelled")
            self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                             stdin=subprocess.DEVNULL)
        collected: set[str] = set()
        last = ""
        assert self._process.stdout is not None
        for line in self._process.stdout:
            log.write(line)
            line = line.strip()
            if line:
                last = line
            if stage == "packages":
                self._track_pip(line, collected)
        code = self._process.wait()
        log.flush()
        if self._cancel.is_set():
            raise InstallError("install cancelled")
        if code != 0:
            raise InstallError(f"{stage} step failed (exit {code}): {last} — see {self.log_path}")

    def _track_pip(self, line: str, collected: set[str]) -> None:
        """Progress from pip's lines: 'Collecting X' / 'Processing X.whl' per package (to 60 %), then
        'Installing collected packages' (80 %) and 'Successfully installed' (93 %)."""
        total = max(1, len(self._packages))
        match = re.match(r"(?:Collecting|Processing|Requirement already satisfied:)\s+([A-Za-z0-9_.\-]+)", line)
        if match:
            name = re.split(r"[<>=!~\[;\s]|-\d", Path(match.group(1)).name, 1)[0].lower().replace("_", "-")
            collected.add(name)
            known = len(collected & set(self._packages))
            self._update(fraction=0.05 + 0.55 * min(1.0, known / total), message=f"collecting {name}")
        elif line.startswith("Installing collected packages"):
            self._update(fraction=0.8, message="installing collected packages (torch takes a while)")
        elif line.startswith("Successfully installed"):
            self._update(fraction=0.93, message="packages installed")


# The install in progress or last finished in this Blender session (the panel and operators share it).
current_install: EngineInstall | None = None


def running_install() -> EngineInstall | None:
    """The install still in progress, or None."""
    return current_install if current_install is not None and not current_install.state.done else None
