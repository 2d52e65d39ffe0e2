"""Every reader against the generated hostile corpus (tests/hostile/corpus.py): each case is an InputError
(CheckpointError/ConfigError for generator files) whose message names the file and the reason, within
READ_SECONDS; the traversal cases are refused before their target is opened: every ``open`` of the process goes through an
audit hook that records it and aborts any open of the outside folder or a device the corpus points at (the
targets are also FIFOs with no writer, so an unguarded open would block and be cut by the deadline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import EngineError, InputError
from tests.hostile.corpus import TETRA_F, TETRA_V, gltf_document, png_bytes, ply_bytes
from tests.hostile.harness import (
    READ_SECONDS,
    check_message,
    corpus_listing,
    deadline,
    find_case,
    forbidden_paths,
    recording_opens,
    timed,
    touches,
)


def _views(path: Path):
    from engine.app.batch import views_target

    return views_target(path, 32)


def _reader(name: str):
    from engine.generator.inference import read_w_array
    from engine.generator.loading import load_generator
    from engine.heads.gltf import read_gltf
    from engine.heads.scans import check_input_entry, load_scan, read_image, read_obj, read_views_manifest
    from engine.io.scan_references import check_scan_references
    from engine.mesh import read_npz, read_ply

    return {
        "ply": read_ply,
        "obj": read_obj,
        "gltf": read_gltf,
        "mesh_npz": read_npz,
        "scan": load_scan,  # what the batch and `invert` use for every scan suffix
        "scan_refs": check_scan_references,  # the Blender batch's check before Blender's importers run
        "image": lambda p: read_image(p, 32),
        "latent": read_w_array,
        "views": _views,
        "manifest": read_views_manifest,
        "entry": check_input_entry,  # the batch's (and invert's) gate for an input folder entry
        "checkpoint": load_generator,
    }[name]


PAIRS = [(c.name, r) for c in corpus_listing() for r in c.readers]


@pytest.mark.parametrize("name, reader", PAIRS, ids=[f"{r}:{n}" for n, r in PAIRS])
def test_reader_refuses_hostile_input(corpus, name, reader):
    root, cases = corpus
    case = find_case(cases, name)
    forbidden = forbidden_paths(root) if case.traversal else []
    with recording_opens(forbidden) as opened, timed() as clock, deadline():
        with pytest.raises(EngineError) as info:
            _reader(reader)(case.path)
    if reader != "checkpoint":
        assert isinstance(info.value, InputError), f"{type(info.value).__name__}: {info.value}"
    check_message(case, str(info.value))
    assert clock["seconds"] < (case.seconds or READ_SECONDS), f"took {clock['seconds']:.1f} s"
    if case.traversal:
        assert touches(opened, forbidden_paths(root)) == [], "a traversal target was opened"


def test_traversal_cases_exist_for_every_reference_kind(corpus):
    root, cases = corpus
    traversal = [c.name for c in cases if c.traversal]
    for prefix in ("ply_", "obj_mtllib", "obj_mtl_texture", "gltf_traversal", "gltf_absolute", "gltf_percent",
                   "gltf_double_percent", "gltf_symlink", "gltf_image", "views/traversal", "views/link", "outside_link"):
        assert any(n.startswith(prefix) for n in traversal), prefix


def test_the_traversal_targets_are_fifos_without_a_writer(corpus):
    """What makes 'refused before any read' observable: opening the target for reading would block."""
    import os
    import stat

    root, _ = corpus
    assert stat.S_ISFIFO(os.stat(root / "outside" / "secret.fifo").st_mode)


def test_good_files_are_still_read(tmp_path):
    """The rules do not refuse ordinary scans: relative references inside the folder (also percent-encoded and
    in a subfolder), a missing texture, a data URI, a large-but-plausible image header."""
    import json

    from engine.heads.gltf import read_gltf
    from engine.heads.scans import load_scan, read_image, read_obj
    from engine.io.scan_references import check_scan_references
    from engine.mesh import read_ply

    (tmp_path / "bufs").mkdir()
    blob = TETRA_V.astype("<f4").tobytes() + TETRA_F.astype("<u4").tobytes()
    (tmp_path / "bufs" / "my mesh.bin").write_bytes(blob)
    (tmp_path / "a.gltf").write_text(json.dumps(gltf_document("bufs/my%20mesh.bin", images=[{"uri": "tex/missing.png"}])))
    mesh, _ = read_gltf(tmp_path / "a.gltf")
    assert mesh.num_faces == 4
    (tmp_path / "b.gltf").write_text(json.dumps(gltf_document()))  # data URI
    assert read_gltf(tmp_path / "b.gltf")[0].num_vertices == 4
    (tmp_path / "m.mtl").write_text("newmtl a\nmap_Kd -s 1 1 1 textures/skin.png\n")
    (tmp_path / "c.obj").write_text("mtllib m.mtl\n" + "\n".join(f"v {x} {y} {z}" for x, y, z in TETRA_V) + "\nf 1 3 2\nf 1 2 4\n")
    assert read_obj(tmp_path / "c.obj").num_faces == 2
    (tmp_path / "d.ply").write_bytes(ply_bytes(TETRA_V, TETRA_F, header_extra="comment TextureFile d.png\n"))
    assert read_ply(tmp_path / "d.ply").num_faces == 4
    assert load_scan(tmp_path / "d.ply").mesh.num_faces == 4
    assert [p.name for p in check_scan_references(tmp_path / "c.obj")] == ["m.mtl"]
    from PIL import Image

    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "p.png")
    image, mask = read_image(tmp_path / "p.png", 16)
    assert image.shape == (1, 3, 16, 16) and float(mask.min()) == 1.0


def test_limits_can_be_raised(tmp_path):
    """An image over the pixel limit is refused by default and read with higher limits (the flags' effect)."""
    from engine.heads.scans import read_image
    from engine.io.untrusted import InputLimits, limits_from_options, limits_scope

    path = tmp_path / "wide.png"
    path.write_bytes(png_bytes(3000, 40, b"\0" * (40 * (1 + 3000 * 3))))
    with limits_scope(InputLimits(max_image_pixels=100_000)):
        with pytest.raises(InputError, match=r"wide\.png: image .*(exceeds limit of 100000|over the limit of 100,000)"):
            read_image(path, 8)
    with limits_scope(InputLimits(max_image_pixels=200_000)):
        assert read_image(path, 8)[0].shape == (1, 3, 8, 8)
    assert limits_from_options(allow_large=True).max_image_pixels == 16 * InputLimits().max_image_pixels
    assert limits_from_options(max_input_mb=1.5).max_file_bytes == int(1.5 * 2**20)
    with pytest.raises(EngineError, match="--max-input-mb"):
        limits_from_options(max_input_mb=0)


def test_pillow_guard_is_set_to_our_limit_and_its_warning_is_an_error(tmp_path):
    from PIL import Image

    from engine.heads.scans import read_image
    from engine.io.untrusted import InputLimits, limits_scope

    path = tmp_path / "p.png"
    path.write_bytes(png_bytes(400, 300, b"\0" * (300 * (1 + 400 * 3))))
    with limits_scope(InputLimits(max_image_pixels=100_000)):  # 120 000 px: Pillow warns (error only at 2×)
        with pytest.raises(InputError, match="p.png"):
            read_image(path, 8)
        assert Image.MAX_IMAGE_PIXELS == 100_000


def test_json_depth_ignores_brackets_in_strings():
    from engine.io.untrusted import json_depth, parse_json

    assert json_depth(b'{"a": "[[[[[[[[", "b": [1, [2]], "c": "\\"]]]"}') == 3
    assert parse_json(b'{"a": "[[["}', "x") == {"a": "[[["}
    with pytest.raises(InputError, match="x: .*nests 101 levels"):
        parse_json(b"[" * 101 + b"]" * 101, "x")
