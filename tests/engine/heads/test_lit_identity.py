"""Head mode's identity on lit meshes (engine/heads/lit_identity.py): the real-head gallery, and a score that
re-identifies a real head among other real people — and does not when the "stylized" head is someone else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.app.mesh_identity import gallery_embeddings
from engine.heads.lit_identity import lit_views, load_real_gallery

pytestmark = pytest.mark.usefixtures("single_thread")
REAL_HEADS = Path(__file__).resolve().parents[2] / "data" / "real_heads"


def test_the_gallery_holds_ten_real_heads_and_never_the_test_heads():
    heads = load_real_gallery()
    assert len(heads) == 10 and len({h.name for h in heads}) == 10
    test_heads = {p.stem for p in REAL_HEADS.glob("*.obj")}
    assert test_heads and not test_heads & {h.name for h in heads}
    for head in heads:
        m = head.mesh
        assert m.vertices.dtype == np.float32 and m.faces.min() >= 0 and m.faces.max() < len(m.vertices)
        assert 2.5 < np.ptp(m.vertices[:, 1]) < 4.0  # decimetres, y up: a head and neck


def test_a_damaged_gallery_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "gallery.npz"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(InputError, match="gallery.npz"):
        load_real_gallery(bad)
    np.savez(bad, names=np.asarray(["a"]), vertices_0=np.zeros((3, 3), np.float32))
    with pytest.raises(InputError, match="gallery.npz"):
        load_real_gallery(bad)


class CountingBackend:
    """Stands in for dlib: an 'embedding' per image (its mean colour and contrast), counting its calls."""

    name = "counting"
    fingerprint = "counting:1"
    dim = 4

    def __init__(self):
        self.calls = 0

    def embed(self, images):
        self.calls += 1
        return torch.cat((images.mean(dim=(2, 3)), images.std(dim=(1, 2, 3))[:, None]), dim=1)


def test_gallery_embeddings_are_cached_and_a_damaged_entry_is_recomputed(tmp_path):
    """The cache is what spares every later head the gallery's ~17 s: a second call must not embed again, and
    a damaged entry (a per-user cache outlives runs and crashes) is embedded again and replaced, not fatal."""
    from engine.generator.camera import CameraConfig, cameras_at

    cameras = cameras_at(torch.tensor([0.0, 0.5]), torch.tensor([0.0, 0.0]), CameraConfig()).c
    backend = CountingBackend()
    first, names = gallery_embeddings(cameras, backend, tmp_path, 2)
    assert first.shape == (2, 2, 4) and len(names) == 2 and backend.calls == 1
    assert torch.equal(gallery_embeddings(cameras, backend, tmp_path, 2)[0], first) and backend.calls == 1
    (entry,) = (tmp_path / "real_face_gallery").iterdir()
    entry.write_bytes(b"not a safetensors file")
    assert torch.equal(gallery_embeddings(cameras, backend, tmp_path, 2)[0], first) and backend.calls == 2
    assert torch.equal(gallery_embeddings(cameras, backend, tmp_path, 2)[0], first) and backend.calls == 2  # replaced


def test_head_jobs_share_the_gallery_cache_across_output_folders(tmp_path, monkeypatch):
    from engine.app.pipeline import HeadJob
    from engine.styles.library import DATA_ENV

    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    a, b = HeadJob(out_dir=str(tmp_path / "a")), HeadJob(out_dir=str(tmp_path / "b"))
    assert a.shared_cache_folder == b.shared_cache_folder == tmp_path / "data" / "cache"
    assert a.cache_folder != b.cache_folder  # fits and stylizations stay with their output folder
    given = HeadJob(out_dir=str(tmp_path / "a"), cache_dir=str(tmp_path / "mine"))
    assert given.shared_cache_folder == given.cache_folder == tmp_path / "mine"


@pytest.mark.slow
def test_a_real_head_is_reidentified_among_real_people_and_someone_else_is_not(tmp_path):
    """dlib on lit meshes, from the identity views: the same head recoloured (as a stylization would) is
    recognised at rank 1 of 11; the other test head offered as the 'stylized' one is not, and scores lower."""
    pytest.importorskip("dlib")
    from engine.evaluate.face_recognition import DlibFaceBackend
    from engine.evaluate.metrics import IdentityGallery, evaluate_renders
    from engine.generator.loading import load_generator
    from engine.heads.lit_identity import identity_cameras
    from engine.pack import pack_paths
    from engine.heads.head_input import read_head_mesh
    from engine.heads.scans import ScanNormalization, normalize_scan

    G = load_generator(str(pack_paths().generator)).generator  # the run's cameras: the generator's orbit
    cameras, _names = identity_cameras(G)
    backend = DlibFaceBackend()
    source, other = (normalize_scan(read_head_mesh(REAL_HEADS / f"{n}.obj").mesh, ScanNormalization(), None, n).mesh
                     for n in ("makehuman_caucasian_female_young", "makehuman_african_male_old"))
    greenish = source.vertex_colors.astype(np.float32) * np.array([0.8, 1.0, 0.75])
    restyled = type(source)(source.vertices, source.faces, np.clip(greenish, 0, 255).astype(np.uint8))
    embeddings, names = gallery_embeddings(cameras, backend, tmp_path / "cache", 10)
    assert embeddings.shape[:2] == (10, 5) and (tmp_path / "cache" / "real_face_gallery").is_dir()
    assert torch.equal(gallery_embeddings(cameras, backend, tmp_path / "cache", 10)[0].nan_to_num(), embeddings.nan_to_num())
    gallery = IdentityGallery(before=embeddings, after=None, label="real heads")
    before = lit_views(source, cameras)[None]
    reports = {}
    for label, after_mesh in (("same", restyled), ("other", other)):
        after = lit_views(after_mesh, cameras)[None]
        reports[label] = evaluate_renders(before, after, "zombie", backend, None, gallery=gallery,
                                          identity_images=(before, after)).to_dict()
    same, wrong = reports["same"], reports["other"]
    assert same["reid_candidates"] == 11 and same["identity_views"]  # some views have a face in every head
    assert same["reid_ranks"] == [1]
    assert wrong["reid_ranks"][0] > 1
    assert same["identity_similarity_mean"] > wrong["identity_similarity_mean"] + 0.1


def test_identity_is_judged_on_the_identity_images_and_style_on_the_renders():
    """evaluate_renders(identity_images=…): the identity measures come from the given images (here: a different
    head after), while the renders (identical before and after) would have scored a perfect match."""
    from engine.evaluate.metrics import evaluate_renders

    class MeanColour:  # a stand-in identity model: the image's mean colour, enough to tell two images apart
        name, dim = "mean-colour", 3

        def embed(self, images):
            return images.mean(dim=(2, 3)) + torch.tensor([0.0, 0.0, 3.0])

    g = torch.Generator().manual_seed(0)
    renders = torch.rand(1, 2, 3, 16, 16, generator=g) * 2 - 1
    same_person = evaluate_renders(renders, renders.clone(), "zombie", MeanColour(), None).to_dict()
    red, blue = torch.zeros(1, 2, 3, 16, 16), torch.zeros(1, 2, 3, 16, 16)
    red[:, :, 0], blue[:, :, 1] = 3.0, 3.0
    judged = evaluate_renders(renders, renders.clone(), "zombie", MeanColour(), None,
                              identity_images=(red, blue)).to_dict()
    assert same_person["identity_similarity_mean"] == pytest.approx(1.0)
    assert judged["identity_similarity_mean"] == pytest.approx(0.5, abs=1e-5)  # (0,0,3)+(3,0,0) vs (0,3,3)·: 9/18
    own_views = evaluate_renders(renders, renders.clone(), "zombie", MeanColour(), None,
                                 identity_images=(red[:, :1], blue[:, :1])).to_dict()
    assert own_views["identity_views"] == [0] and own_views["identity_similarity_mean"] == pytest.approx(0.5, abs=1e-5)
    with pytest.raises(InputError, match="identity images"):
        evaluate_renders(renders, renders, "zombie", MeanColour(), None, identity_images=(red, blue[:, :1]))
