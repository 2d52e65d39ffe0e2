"""Every command that takes files against the hostile corpus, in process through ``engine.app.cli.main``:
``invert`` (scans, portraits, views folders, folder entries), ``head --latent`` (latents), ``head --mesh``
(every scan and mesh file ``invert`` gets), ``generate --checkpoint`` (checkpoints, configs, pickles) and
``stylize --config`` each exit with status 2 and one ``error:`` line naming the file and the reason, within
READ_SECONDS, and leave nothing in ``--out``; ``batch`` goes on past every hostile item, lists each as a failed
row with its reason and still makes the good heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.app.cli import main
from tests.hostile.corpus import TETRA_F, TETRA_V, png_bytes
from tests.hostile.harness import (
    READ_SECONDS,
    check_message,
    corpus_listing,
    deadline,
    find_case,
    forbidden_paths,
    recording_opens,
    timed,
)

COMMAND_CASES = [c.name for c in corpus_listing() if c.command]
MESH_SUFFIXES = (".ply", ".obj", ".glb", ".gltf", ".npz")


def is_mesh_file(case) -> bool:
    """A scan or mesh file ``invert`` is given: ``head --mesh`` must refuse it the same way."""
    return case.command == "invert" and bool({"scan", "entry"} & set(case.readers)) and case.path.suffix.lower() in MESH_SUFFIXES


MESH_CASES = [c.name for c in corpus_listing() if is_mesh_file(c)]


@pytest.fixture(scope="module", autouse=True)
def warm_imports():
    """Import what the commands import, so the time bound measures the refusal and not the first import."""
    import engine.app.batch  # noqa: F401
    import engine.app.commands.batch  # noqa: F401
    import engine.app.commands.generate  # noqa: F401
    import engine.app.commands.head  # noqa: F401
    import engine.app.commands.invert  # noqa: F401
    import engine.app.commands.stylize  # noqa: F401
    import engine.generator.checkpoint  # noqa: F401
    import engine.generator.loading  # noqa: F401
    import engine.heads.invert  # noqa: F401


def argv_for(case, out: Path) -> list[str]:
    if case.command == "invert":
        return ["invert", str(case.path), "--out", str(out / "latent.npz"), "--device", "cpu"]
    if case.command == "head":
        return ["head", "--out", str(out), "--style-preset", "zombie", "--latent", str(case.path), "--device", "cpu"]
    if case.command == "stylize":
        return ["stylize", "--config", str(case.path), "--out", str(out)]
    assert case.command == "generate"
    return ["generate", "--checkpoint", str(case.path), "--out", str(out), "--device", "cpu"]


def mesh_argv(case, out: Path) -> list[str]:
    return ["head", "--out", str(out), "--style-preset", "zombie", "--mesh", str(case.path), "--device", "cpu"]


@pytest.mark.parametrize("name", COMMAND_CASES, ids=[f"{find_case(list(corpus_listing()), n).command}:{n}" for n in COMMAND_CASES])
def test_command_exits_2_naming_the_file(corpus, name, tmp_path, capsys):
    root, cases = corpus
    case = find_case(cases, name)
    check_refused(case, argv_for(case, tmp_path / "out"), tmp_path / "out", forbidden_paths(root) if case.traversal else [], capsys)


@pytest.mark.parametrize("name", MESH_CASES, ids=[f"head-mesh:{n}" for n in MESH_CASES])
def test_head_mesh_exits_2_naming_the_file(corpus, name, tmp_path, capsys):
    root, cases = corpus
    case = find_case(cases, name)
    check_refused(case, mesh_argv(case, tmp_path / "out"), tmp_path / "out", forbidden_paths(root) if case.traversal else [], capsys)


def test_head_mesh_covers_every_mesh_file_of_the_corpus():
    names = set(MESH_CASES)
    assert {"ply_truncated.ply", "obj_mtl_texture_traversal.obj", "gltf_node_bomb.gltf", "glb_truncated.glb",
            "npz_bomb.npz", "npz_wrong_magic.npz", "fifo.ply", "outside_link.ply"} <= names
    assert not any(n.endswith((".png", ".jpg")) or n.startswith(("latent_", "views/")) for n in names)


def check_refused(case, argv: list[str], out: Path, forbidden: list[Path], capsys) -> None:
    with recording_opens(forbidden), timed() as clock, deadline():
        rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    check_message(case, lines[-1])
    assert clock["seconds"] < (case.seconds or READ_SECONDS), f"took {clock['seconds']:.1f} s"
    assert not out.exists() or not any(out.rglob("*")), f"left output behind: {sorted(out.rglob('*'))}"


def _reading_models():
    """Batch models whose inversion really reads each input with the engine's readers (the step a hostile
    file must fail in), and whose 'stylization' returns a fixed small head."""
    from engine.app.batch import BatchModels, Inverted, views_target
    from engine.generator.inference import read_w_array
    from engine.heads.scans import load_scan, read_image
    from engine.mesh import Mesh

    def invert(path: Path, kind: str) -> Inverted:
        if kind == "scan":
            load_scan(path)
        elif kind == "image":
            read_image(path, 32)
        elif kind == "latent":
            read_w_array(path)
        else:
            views_target(path, 32)
        return Inverted(torch.zeros(1, 1, 1), None, {"kind": kind})

    return BatchModels(
        invert=invert,
        build_head=lambda ws, *cameras: Mesh(TETRA_V.copy(), TETRA_F.copy()),  # (one or two arguments)
        similarity=None,
        model_sha256={"generator": "0" * 64},
        prompt="a zombie head",
        method="ld",
        settings={"hostile": True},
    )


def test_batch_goes_on_past_every_hostile_item(corpus, tmp_path, monkeypatch, capsys):
    import engine.app.batch as batch_module  # load_batch_models looks the loader up here

    root, cases = corpus
    monkeypatch.setattr(batch_module, "load_engine_models", lambda settings, cancel=None, on_event=None: _reading_models())
    out = tmp_path / "out"
    with recording_opens(forbidden_paths(root)), deadline(240):
        rc = main(["batch", "--in", str(root / "in"), "--views", str(root / "views"), "--out", str(out), "--i-have-consent"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    rows = {r["input"]: r for r in report["items"]}
    hostile = [c for c in cases if c.batch]
    assert set(rows) == {str(c.path) for c in hostile} | {str(root / "in" / "good.ply"), str(root / "in" / "good.obj")}
    for good in ("good.ply", "good.obj"):
        row = rows[str(root / "in" / good)]
        assert row["status"] == "done" and (out / row["output"]).is_file(), row
    problems = []
    for case in hostile:
        row = rows[str(case.path)]
        try:
            assert row["status"] == "failed", row
            check_message(case, row["error"])
            assert row["seconds"] < READ_SECONDS, row
        except AssertionError as exc:
            problems.append(f"{case.name}: {exc}")
    assert problems == []
    assert report["counts"] == {"done": 2, "skipped": 0, "failed": len(hostile), "cancelled": 0}
    made = sorted(p.name for p in out.iterdir() if p.is_file())
    assert made == ["good_obj.glb", "good_obj.json", "good_ply.glb", "good_ply.json", "report.csv", "report.html", "report.json"], made
    csv_text = (out / "report.csv").read_text()
    assert all(str(c.path) in csv_text for c in hostile)


def test_limit_flags_reach_the_readers(corpus, tmp_path, capsys):
    """--max-input-mb lowers the file limit (a good scan is refused); --allow-large-inputs raises the pixel
    limit (a 105-megapixel PNG then gets past the size check and fails only as the truncated file it is)."""
    root, cases = corpus
    rc = main(["invert", str(root / "in" / "good.ply"), "--out", str(tmp_path / "a.npz"), "--max-input-mb", "0.0001"])
    assert rc == 2 and "good.ply: input is 269 bytes, over the 0.0 MB input limit" in capsys.readouterr().err
    png = tmp_path / "big.png"
    png.write_bytes(png_bytes(10_500, 10_000))  # 105 Mpx declared, a few bytes of pixels
    rc = main(["invert", str(png), "--out", str(tmp_path / "b.npz")])
    assert rc == 2 and "too large to decode" in capsys.readouterr().err
    rc = main(["invert", str(png), "--out", str(tmp_path / "b.npz"), "--allow-large-inputs"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a readable image" in err and "too large" not in err, err
    assert not (tmp_path / "a.npz").exists() and not (tmp_path / "b.npz").exists()
