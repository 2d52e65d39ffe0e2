"""bench/compare_official.py without the official code: checkout checks, stage accounting, the summary."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "compare_official", Path(__file__).resolve().parents[2] / "bench" / "compare_official.py"
)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench
_SPEC.loader.exec_module(bench)

OFFICIAL_TRAIN = "class Coach():\n    def score_distillation(self): ...\n    def prepare_4x4_grid(self): ...\n"


def _checkout(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def checkouts(tmp_path):
    official = _checkout(tmp_path / "official", {name: "" for name in bench.OFFICIAL_FILES} | {"train_LD.py": OFFICIAL_TRAIN})
    panohead = _checkout(tmp_path / "panohead", {name: "" for name in bench.PANOHEAD_FILES})
    return official, panohead


def test_the_two_checkouts_pass(checkouts):
    bench.check_checkouts(*checkouts)


def test_panohead_given_as_the_official_checkout_names_the_missing_step(tmp_path, checkouts):
    # PanoHead has training/, torch_utils/ and dnnlib/ but no stylization step.
    panohead_like = _checkout(tmp_path / "ph", {"training/triplane.py": "", "training/networks_stylegan2.py": "",
                                                "torch_utils/misc.py": "", "dnnlib/util.py": ""})  # fmt: skip
    with pytest.raises(bench.BenchError, match=rf"--official {panohead_like}: train_LD.py is missing"):
        bench.check_checkouts(panohead_like, checkouts[1])


def test_an_official_checkout_without_its_submodule_says_so(checkouts):
    official, panohead = checkouts
    (official / "depth_anything_v2/depth_anything_v2/dpt.py").unlink()
    with pytest.raises(bench.BenchError, match=r"dpt.py is missing \(the Depth-Anything-V2 submodule \(clone with --recursive"):
        bench.check_checkouts(official, panohead)


def test_a_train_ld_that_is_not_the_official_one_is_refused(checkouts):
    official, panohead = checkouts
    (official / "train_LD.py").write_text("print('hello')\n")
    with pytest.raises(bench.BenchError, match=r"train_LD.py lacks \['class Coach', 'def score_distillation'"):
        bench.check_checkouts(official, panohead)


def test_panohead_without_legacy_names_the_file_and_the_path(checkouts):
    official, panohead = checkouts
    (panohead / "legacy.py").unlink()
    with pytest.raises(bench.BenchError, match=rf"--panohead {panohead}: legacy.py is missing"):
        bench.check_checkouts(official, panohead)


def test_the_command_line_reports_a_bad_path_in_one_line_with_status_2(tmp_path, checkouts, capsys):
    status = bench.main(["--official", str(tmp_path / "nowhere"), "--panohead", str(checkouts[1])])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err == f"compare_official: --official {tmp_path / 'nowhere'}: not a folder"


def test_stage_clock_counts_nested_stages_exclusively_and_the_rest_as_other(monkeypatch):
    ticks = iter([0.0, 1.0, 3.0, 4.0, 6.0, 7.0, 10.0])
    clock = bench.StageClock(type("D", (), {"type": "cpu"})())
    monkeypatch.setattr(clock, "_now", lambda: next(ticks))
    clock.boundary()  # t = 0
    clock.enter("generator forward")  # t = 1
    clock.enter("backward")  # t = 3: generator 1..3 = 2 s
    clock.exit()  # t = 4: backward 1 s
    clock.exit()  # t = 6: generator 4..6 = 2 more s
    with clock.stage("optimizer"):  # 7..10 = 3 s
        pass
    # the optimizer's exit used t = 10; the boundary reads the clock once more
    ticks = iter([12.0])
    monkeypatch.setattr(clock, "_now", lambda: next(ticks))
    clock.boundary()
    (row,) = clock.iterations()
    assert row["seconds"] == 12.0
    stages = row["stages"]
    assert stages["generator forward"] == 4.0 and stages["backward"] == 1.0 and stages["optimizer"] == 3.0
    assert stages["other"] == pytest.approx(12.0 - 8.0)


def test_summary_takes_min_and_median_over_runs_and_the_ratio_of_each():
    def run(side, seconds):
        rows = [{"seconds": s, "stages": {k: s / len(bench.STAGES) for k in bench.STAGES}} for s in seconds]
        return {"side": side, "measured": rows, "memory_peak_bytes": 1, "memory_at_start_bytes": 1, "memory_kind": "x"}

    summary = bench.summarise([run("ours", [2.0, 4.0]), run("official", [9.0]), run("ours", [3.0]), run("official", [12.0, 6.0])])
    assert summary["ours"]["median"] == 3.0 and summary["ours"]["min"] == 2.0 and summary["ours"]["iterations"] == 3
    assert summary["official"]["median"] == 9.0 and summary["official"]["min"] == 6.0
    assert summary["ratio_median"] == 3.0 and summary["ratio_min"] == 3.0
