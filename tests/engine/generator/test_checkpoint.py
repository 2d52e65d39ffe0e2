"""Checkpoints: our safetensors+JSON format, and the restricted reader for NVIDIA/PanoHead network pickles.

The PanoHead-style pickles are built here from small torch modules, with stand-in modules registered under the
names the official file references (``torch_utils.persistence``, ``dnnlib.util``, PanoHead's ray sampler), so
``pickle`` writes exactly the same global references and the same persistence metadata layout.
"""

from __future__ import annotations

import builtins
import copy
import io
import json
import math
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import CheckpointError
from engine.generator.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from engine.generator.config import get_preset
from engine.generator.safe_pickle import (
    AttrDict,
    PersistentStub,
    load_network_pickle,
    load_panohead_pkl,
    panohead_config_from_init_kwargs,
    read_pickled_network,
)
from engine.io.checkpoint import checkpoint_files, load_manifest, load_state_into, manifest_mismatches, state_shapes

MANIFEST = Path(__file__).resolve().parents[2] / "data" / "panohead_G_ema_manifest.json"


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, so that NaN payloads and -0.0 count in equality."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _assert_bit_exact(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert torch.equal(_bits(got), _bits(want)), name


# =================================================================================================
# Our format
# =================================================================================================


def _mixed_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, 3.4e38])
    return {
        "w32": torch.randn(3, 4, generator=gen),
        "special32": special,
        "w16": torch.randn(5, generator=gen).half(),
        "special16": special.half(),
        "wbf16": torch.randn(2, 3, generator=gen).bfloat16(),
        "steps": torch.tensor([1, -2, 2**62], dtype=torch.int64),
        "scalar": torch.tensor(0.125),
        "empty": torch.zeros(0, 7),
    }


def test_round_trip_is_bit_exact(tmp_path):
    state = _mixed_state()
    config = get_preset("tiny")
    written = save_checkpoint(tmp_path / "styled", state, config, {"prompt": "a marble statue", "step": 250})
    assert written == tmp_path / "styled.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["styled.json", "styled.safetensors"]  # no temp files left

    loaded_config, loaded_state, extra = load_checkpoint(tmp_path / "styled")
    assert loaded_config == config
    assert extra == {"prompt": "a marble statue", "step": 250}
    _assert_bit_exact(loaded_state, state)

    meta = json.loads((tmp_path / "styled.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["tensor_count"] == len(state)
    assert meta["config"]["name"] == "tiny"


def test_paths_folder_and_suffixes(tmp_path):
    state = {"a": torch.ones(2)}
    path = save_checkpoint(tmp_path, state, get_preset("tiny"), None)
    assert path == tmp_path / "tiny.safetensors"
    for spelling in (tmp_path / "tiny", tmp_path / "tiny.json", tmp_path / "tiny.safetensors"):
        _, loaded, extra = load_checkpoint(spelling)
        assert torch.equal(loaded["a"], state["a"]) and extra == {}
    assert checkpoint_files(tmp_path / "x.json") == (tmp_path / "x.safetensors", tmp_path / "x.json")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_views_sharing_memory_are_saved_independently(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    state = {"first": base[:6], "second": base[6:], "whole": base}
    save_checkpoint(tmp_path / "shared", state, get_preset("tiny"))
    _, loaded, _ = load_checkpoint(tmp_path / "shared")
    _assert_bit_exact(loaded, {k: v.clone() for k, v in state.items()})


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    config = get_preset("tiny")
    save_checkpoint(tmp_path / "ck", {"a": torch.ones(3)}, config, {"step": 1})
    with pytest.raises(CheckpointError, match="ck.json.*JSON-serialisable"):
        save_checkpoint(tmp_path / "ck", {"a": torch.zeros(3)}, config, {"step": object()})
    with pytest.raises(CheckpointError, match="not a named tensor"):
        save_checkpoint(tmp_path / "ck", {"a": [0.0, 1.0]}, config)
    _, state, extra = load_checkpoint(tmp_path / "ck")
    assert torch.equal(state["a"], torch.ones(3)) and extra == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "ck.safetensors"]


@pytest.fixture
def saved(tmp_path):
    save_checkpoint(tmp_path / "ck", _mixed_state(), get_preset("tiny"), {"step": 7})
    return tmp_path / "ck.safetensors", tmp_path / "ck.json"


def _edit_json(meta_path: Path, **changes) -> None:
    meta = json.loads(meta_path.read_text())
    meta.update(changes)
    meta_path.write_text(json.dumps(meta))


def test_missing_files_are_named(saved):
    tensors, meta = saved
    tensors.unlink()
    with pytest.raises(CheckpointError, match=r"ck\.safetensors: checkpoint tensors file not found"):
        load_checkpoint(meta)
    meta.unlink()
    with pytest.raises(CheckpointError, match=r"ck\.json: checkpoint metadata file not found"):
        load_checkpoint(tensors)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": "something-else", "format_version": 1}', "not a head-stylizer-generator checkpoint"),
    ],
)
def test_invalid_json_is_reported(saved, text, message):
    _, meta = saved
    meta.write_text(text)
    with pytest.raises(CheckpointError, match=rf"ck\.json: {message}"):
        load_checkpoint(meta)


def test_missing_field_and_unknown_version(saved):
    _, meta = saved
    original = meta.read_text()
    _edit_json(meta, format_version=99)
    with pytest.raises(CheckpointError, match=r"ck\.json: unknown checkpoint format version 99"):
        load_checkpoint(meta)
    meta.write_text(original)
    data = json.loads(original)
    del data["tensors_sha256"]
    meta.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"ck\.json: field 'tensors_sha256' is missing"):
        load_checkpoint(meta)


def test_modified_or_truncated_tensors_fail_the_hash(saved):
    tensors, meta = saved
    blob = bytearray(tensors.read_bytes())
    blob[-1] ^= 0x01  # one bit of tensor data
    tensors.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"ck\.safetensors: SHA-256 does not match ck\.json"):
        load_checkpoint(meta)
    tensors.write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(CheckpointError, match=r"ck\.safetensors: SHA-256 does not match.*size \d+ bytes, expected"):
        load_checkpoint(meta)


def test_corrupt_safetensors_with_matching_hash(saved):
    """A file that passes the hash (JSON rewritten to match) but is not safetensors is still caught."""
    import hashlib

    tensors, meta = saved
    garbage = b"\xff" * 64
    tensors.write_bytes(garbage)
    _edit_json(meta, tensors_sha256=hashlib.sha256(garbage).hexdigest(), tensors_bytes=64)
    with pytest.raises(CheckpointError, match=r"ck\.safetensors: corrupt safetensors file"):
        load_checkpoint(meta)


def test_tensor_count_and_config_are_checked(saved):
    tensors, meta = saved
    original = meta.read_text()
    _edit_json(meta, tensor_count=3)
    with pytest.raises(CheckpointError, match=r"holds 8 tensors but ck\.json lists 3"):
        load_checkpoint(meta)
    data = json.loads(original)
    data["config"]["rendering"]["triplane_size"] = 30
    meta.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"ck\.json: invalid generator config:.*triplane_size"):
        load_checkpoint(meta)


# -------------------------------------------------------------------------------------------------
# load_state_into


class _Small(torch.nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, width)
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


def test_load_state_into_copies_by_name():
    source = _Small()
    with torch.no_grad():
        source.fc.weight.normal_()
        source.count.fill_(5)
    target = _Small()
    load_state_into(target, source.state_dict(), "src.safetensors")
    _assert_bit_exact(target.state_dict(), source.state_dict())


def test_load_state_into_casts_floats_but_not_int_to_float():
    source = {k: v.clone() for k, v in _Small().state_dict().items()}
    source["fc.weight"] = source["fc.weight"].half()
    target = _Small()
    load_state_into(target, source, "half.safetensors")
    assert target.fc.weight.dtype == torch.float32
    assert torch.equal(target.fc.weight, source["fc.weight"].float())
    source["count"] = torch.zeros((), dtype=torch.float32)
    with pytest.raises(CheckpointError, match=r"dtype mismatch.*count: checkpoint torch.float32 vs model torch.int64"):
        load_state_into(target, source, "x.safetensors")


def test_wrong_architecture_is_explained_and_nothing_is_copied():
    target = _Small(width=4)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    wrong = _Small(width=5).state_dict()  # fc.weight [5,3] vs [4,3], fc.bias [5] vs [4]
    wrong["extra.weight"] = torch.zeros(1)
    del wrong["count"]
    with pytest.raises(CheckpointError) as info:
        load_state_into(target, wrong, "other.safetensors")
    message = str(info.value)
    assert message.startswith("other.safetensors: wrong architecture:")
    assert "1 missing key(s): count" in message
    assert "1 unexpected key(s): extra.weight" in message
    assert "2 shape mismatch(es): fc.weight: checkpoint [5, 3] vs model [4, 3], fc.bias: checkpoint [5] vs model [4]" in message
    _assert_bit_exact(target.state_dict(), before)


def test_wrong_architecture_lists_only_the_first_few():
    target = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(4)])  # 8 keys
    with pytest.raises(CheckpointError, match=r"8 missing key\(s\): 0\.weight, 0\.bias, 1\.weight, 1\.bias, 2\.weight, … \(\+3 more\)"):
        load_state_into(target, {}, "empty.safetensors")


# -------------------------------------------------------------------------------------------------
# Manifest


def test_panohead_manifest_invariants():
    manifest = load_manifest(MANIFEST)
    tensors = manifest["tensors"]
    assert "TriPlaneGenerator" in manifest["source"] and "17ad915941c7e2703d5aa3eb5ff12eac47c90e53" in manifest["source"]
    assert tensors["backbone.mapping.w_avg"] == {"shape": [512], "dtype": "float32", "kind": "buffer"}
    assert tensors["decoder.net.0.weight"]["shape"] == [64, 32]  # OSGDecoder: 32 features → 64 hidden
    assert tensors["decoder.net.2.weight"]["shape"] == [33, 64]  # → 1 density + 32 features
    assert tensors["t_mapping.w_avg"]["shape"] == [3]  # self-adaptive camera translation
    assert tensors["torgb.weight"]["shape"] == [3, 32, 1, 1]
    config = panohead_config_from_init_kwargs(manifest["init_kwargs"])
    assert config == get_preset("panohead")
    # Backbone output: 3 planes × depth 3 × 32 features; first SR block 256 channels (8XDC).
    assert tensors["backbone.synthesis.b256.torgb.bias"]["shape"] == [config.backbone_channels]
    assert tensors["superresolution.block0.conv0.bias"]["shape"] == [config.sr_channels[0]]
    assert tensors["superresolution.block1.conv0.bias"]["shape"] == [config.sr_channels[1]]
    assert {"backbone", "bcg_synthesis", "decoder", "superresolution", "t_mapping", "torgb"} == {
        name.split(".")[0] for name in tensors
    }
    assert all(spec["dtype"] == "float32" and spec["kind"] in ("parameter", "buffer") for spec in tensors.values())
    assert sum(spec["kind"] == "buffer" for spec in tensors.values()) == 73  # w_avg ×2, filters, noise_const
    assert len(tensors) == 295


def test_manifest_mismatches(tmp_path):
    shapes = {name: tuple(spec["shape"]) for name, spec in load_manifest(MANIFEST)["tensors"].items()}
    assert manifest_mismatches(shapes, MANIFEST) == []
    del shapes["backbone.mapping.w_avg"]
    shapes["decoder.net.0.weight"] = (64, 31)
    shapes["made.up"] = (1,)
    assert manifest_mismatches(shapes, MANIFEST) == [
        "missing from module: backbone.mapping.w_avg [512]",
        "not in manifest: made.up [1]",
        "shape of decoder.net.0.weight: module [64, 31] vs manifest [64, 32]",
    ]
    assert state_shapes(_Small()) == {"fc.weight": (4, 3), "fc.bias": (4,), "count": ()}
    with pytest.raises(CheckpointError, match="missing.json: manifest not found"):
        manifest_mismatches({}, tmp_path / "missing.json")


# =================================================================================================
# PanoHead-style network pickles
# =================================================================================================


def _public(obj, module: str, name: str):
    """Give a test-local function/class the global name pickle should write for it."""
    obj.__module__, obj.__qualname__, obj.__name__ = module, name, name
    return obj


@pytest.fixture
def nvidia_names(monkeypatch):
    """Register stand-ins under the module names the official checkpoint references.

    Returns a namespace with ``persistent(cls, module_src)``: wraps an ``nn.Module`` class so that instances
    record their constructor arguments and pickle as ``_reconstruct_persistent_obj(meta)`` with
    ``meta = {type, version, module_src, class_name, state}`` — the layout ``torch_utils.persistence`` writes.
    """

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - the loader under test must never call it
        raise AssertionError("the original reconstruct function was called")

    class EasyDict(dict):
        def __getattr__(self, name):
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

    class RaySampler(torch.nn.Module):  # PanoHead's is a plain (non-persistent) module without weights
        def __init__(self):
            super().__init__()
            self.ray_origins_h = None

    reconstruct = _public(_reconstruct_persistent_obj, "torch_utils.persistence", "_reconstruct_persistent_obj")
    modules = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": types.ModuleType("torch_utils.persistence"),
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": types.ModuleType("dnnlib.util"),
        "training": types.ModuleType("training"),
        "training.volumetric_rendering": types.ModuleType("training.volumetric_rendering"),
        "training.volumetric_rendering.ray_sampler": types.ModuleType("training.volumetric_rendering.ray_sampler"),
    }
    modules["torch_utils.persistence"]._reconstruct_persistent_obj = reconstruct
    modules["dnnlib.util"].EasyDict = _public(EasyDict, "dnnlib.util", "EasyDict")
    modules["training.volumetric_rendering.ray_sampler"].RaySampler = _public(
        RaySampler, "training.volumetric_rendering.ray_sampler", "RaySampler"
    )
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)

    def persistent(cls, module_src: str):
        class Recorded(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self._init_args = copy.deepcopy(args)
                self._init_kwargs = copy.deepcopy(kwargs)

            def __reduce__(self):
                meta = {
                    "type": "class",
                    "version": 6,
                    "module_src": module_src,
                    "class_name": cls.__name__,
                    "state": dict(self.__dict__),
                }
                return (reconstruct, (meta,), None)

        Recorded.__name__ = Recorded.__qualname__ = cls.__name__
        return Recorded

    return types.SimpleNamespace(persistent=persistent, EasyDict=EasyDict, RaySampler=RaySampler)


def _marker_source(marker: Path) -> str:
    """A module_src whose execution would leave a file behind (the official loader execs module_src)."""
    return f"open({str(marker)!r}, 'w').write('module_src was executed')\nclass Anything:\n    pass\n"


def _mini_panohead(names, marker: Path):
    """Small modules shaped like PanoHead's G: nested persistent modules, a Sequential, None entries, numpy
    scalars and plain tensor attributes, non-persistent buffers, fp16/bf16/int64 tensors."""
    src = _marker_source(marker)
    P = lambda cls: names.persistent(cls, src)  # noqa: E731

    @P
    class FullyConnectedLayer(torch.nn.Module):
        def __init__(self, in_features, out_features, bias=True, lr_multiplier=1.0):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
            self.register_parameter("bias", torch.nn.Parameter(torch.randn(out_features)) if bias else None)
            self.weight_gain = lr_multiplier / np.sqrt(in_features)  # numpy.float64, as in the original
            self.bias_gain = lr_multiplier

    @P
    class MappingNetwork(torch.nn.Module):
        def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=2, lr_multiplier=0.01):
            super().__init__()
            self.embed = FullyConnectedLayer(c_dim, w_dim)
            for i in range(num_layers):
                setattr(self, f"fc{i}", FullyConnectedLayer(w_dim * 2 if i == 0 else w_dim, w_dim, lr_multiplier=lr_multiplier))
            self.register_buffer("w_avg", torch.randn(w_dim))
            self.num_ws, self.w_avg_beta = num_ws, 0.998

    @P
    class SynthesisLayer(torch.nn.Module):
        def __init__(self, cin, cout, w_dim, resolution):
            super().__init__()
            self.affine = FullyConnectedLayer(w_dim, cin)
            self.weight = torch.nn.Parameter(torch.randn(cout, cin, 3, 3))
            self.noise_strength = torch.nn.Parameter(torch.randn(()))
            self.bias = torch.nn.Parameter(torch.randn(cout))
            self.register_buffer("resample_filter", torch.rand(4, 4))
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.act_gain = np.sqrt(2)

    @P
    class SynthesisBlock(torch.nn.Module):
        def __init__(self, cin, cout, w_dim, resolution, img_channels):
            super().__init__()
            if cin == 0:
                self.const = torch.nn.Parameter(torch.randn(cout, resolution, resolution))
            else:
                self.conv0 = SynthesisLayer(cin, cout, w_dim, resolution)
            self.conv1 = SynthesisLayer(cout, cout, w_dim, resolution)
            self.torgb = FullyConnectedLayer(cout, img_channels)
            self.register_buffer("resample_filter", torch.rand(4, 4))
            self.register_buffer("cache", torch.zeros(3), persistent=False)

    @P
    class SynthesisNetwork(torch.nn.Module):
        def __init__(self, w_dim, img_resolution, img_channels):
            super().__init__()
            self.block_resolutions = [4, 8]
            self.b4 = SynthesisBlock(0, 8, w_dim, 4, img_channels)
            self.b8 = SynthesisBlock(8, 6, w_dim, 8, img_channels)

    @P
    class Generator(torch.nn.Module):
        def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, **synthesis_kwargs):
            super().__init__()
            self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels)
            self.mapping = MappingNetwork(z_dim, c_dim, w_dim, num_ws=4, **mapping_kwargs)

    @P
    class SuperresolutionHybrid2X(torch.nn.Module):
        def __init__(self, channels, img_resolution, sr_num_fp16_res, sr_antialias, **block_kwargs):
            super().__init__()
            self.block0 = SynthesisBlock(channels, 6, 8, 8, 3).half()  # fp16 weights, as with sr_num_fp16_res > 0
            self.register_buffer("filter_bf16", torch.randn(4).bfloat16())
            self.register_buffer("steps", torch.tensor([3, -4], dtype=torch.int64))
            self.input_resolution = 8

    @P
    class OSGDecoder(torch.nn.Module):
        def __init__(self, n_features, options):
            super().__init__()
            self.net = torch.nn.Sequential(FullyConnectedLayer(n_features, 5), torch.nn.Softplus(), FullyConnectedLayer(5, 4))
            self.activation = options["decoder_activation"]

    @P
    class ImportanceRenderer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.plane_axes = torch.eye(3).expand(3, 3, 3).clone()  # a tensor attribute, not a buffer

    @P
    class TriPlaneGenerator(torch.nn.Module):
        def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, sr_num_fp16_res=0,
                     mapping_kwargs={}, rendering_kwargs={}, sr_kwargs={}, **synthesis_kwargs):  # fmt: skip
            super().__init__()
            self.renderer = ImportanceRenderer()
            self.ray_sampler = names.RaySampler()
            self.backbone = Generator(z_dim, c_dim, w_dim, 8, 6, mapping_kwargs=mapping_kwargs)
            self.superresolution = SuperresolutionHybrid2X(3, img_resolution, sr_num_fp16_res, True, **sr_kwargs)
            self.decoder = OSGDecoder(3, {"decoder_activation": rendering_kwargs["decoder_activation"]})
            self.torgb = FullyConnectedLayer(3, 3, bias=False)  # a None entry in _parameters
            self.bcg_synthesis = None  # like use_background=False: a plain attribute, not a child
            self.register_module("unused", None)  # a None entry in _modules
            self.t_mapping = MappingNetwork(z_dim, c_dim, 3, num_ws=1, num_layers=1)
            self.neural_rendering_resolution = 64
            self.rendering_kwargs = rendering_kwargs

    return TriPlaneGenerator


def _mini_init_kwargs(names) -> dict:
    rendering = dict(load_manifest(MANIFEST)["init_kwargs"]["rendering_kwargs"])
    rendering["superresolution_module"] = "training.superresolution.SuperresolutionHybrid2X"
    return dict(
        z_dim=6, c_dim=25, w_dim=6, img_resolution=128, img_channels=3, sr_num_fp16_res=4,
        mapping_kwargs=names.EasyDict(num_layers=2), rendering_kwargs=rendering,
        sr_kwargs=names.EasyDict(channel_base=32768, channel_max=512, fused_modconv_default="inference_only"),
        channel_base=2048, channel_max=8, num_fp16_res=0, conv_clamp=None, fused_modconv_default="inference_only",
    )  # fmt: skip


def _write_snapshot(names, path: Path, marker: Path, protocol: int = 4):
    """A snapshot dict laid out like PanoHead's training_loop writes it; returns (G_ema, G)."""
    TriPlaneGenerator = _mini_panohead(names, marker)
    torch.manual_seed(0)
    kwargs = _mini_init_kwargs(names)
    G_ema = TriPlaneGenerator(**kwargs).eval().requires_grad_(False)
    positional = [kwargs.pop(k) for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")]
    G = TriPlaneGenerator(*positional, **kwargs).requires_grad_(False)  # built with positional arguments
    D = names.persistent(torch.nn.Module, _marker_source(marker))()
    snapshot = {
        "training_set_kwargs": dict(names.EasyDict(class_name="training.dataset.MaskLabeledDataset", resolution=128)),
        "G": G,
        "D": D,
        "G_ema": G_ema,
        "augment_pipe": None,
    }
    path.write_bytes(pickle.dumps(snapshot, protocol=protocol))
    return G_ema, G


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_panohead_style_pickle_loads_bit_exact_without_running_module_src(tmp_path, nvidia_names, protocol):
    marker = tmp_path / "marker.txt"
    pkl = tmp_path / "network-snapshot.pkl"
    G_ema, _ = _write_snapshot(nvidia_names, pkl, marker, protocol)
    assert not marker.exists()

    init_kwargs, state = load_panohead_pkl(pkl)
    _assert_bit_exact(state, G_ema.state_dict())  # dotted names, order, dtypes (fp16/bf16/int64), bits
    assert "superresolution.block0.cache" not in state  # non-persistent buffer
    assert "decoder.net.0.weight" in state and "renderer.plane_axes" not in state
    assert init_kwargs["mapping_kwargs"] == {"num_layers": 2} and type(init_kwargs["mapping_kwargs"]) is dict
    assert init_kwargs["rendering_kwargs"]["triplane_depth"] == 3
    assert not marker.exists(), "module_src was executed"

    network = read_pickled_network(pkl, "G_ema")
    assert network.attributes["neural_rendering_resolution"] == 64
    assert network.attributes["rendering_kwargs"]["decoder_activation"] == "none"


def test_marker_source_would_have_had_a_side_effect(tmp_path):
    """Guards the test above: executing the stored source (what the official loader does) leaves the marker."""
    marker = tmp_path / "marker.txt"
    exec(_marker_source(marker), {})  # noqa: S102 - our own test string
    assert marker.exists()


def test_stub_tree_and_positional_init_args(tmp_path, nvidia_names):
    pkl = tmp_path / "snap.pkl"
    _, G = _write_snapshot(nvidia_names, pkl, tmp_path / "marker")
    data = load_network_pickle(pkl)
    assert sorted(data) == ["D", "G", "G_ema", "augment_pipe", "training_set_kwargs"]
    stub = data["G_ema"]
    assert isinstance(stub, PersistentStub) and stub.class_name == "TriPlaneGenerator"
    assert "class Anything" in stub.module_src  # kept as text
    assert stub.attributes["bcg_synthesis"] is None and stub.children["unused"] is None
    assert stub.children["torgb"].parameters["bias"] is None
    assert stub.children["ray_sampler"].class_name == "RaySampler"
    decoder_net = stub.children["decoder"].children["net"]
    assert decoder_net.pickled_as == "torch.nn.modules.container.Sequential"
    assert decoder_net.children["1"].class_name == "Softplus"
    fc = decoder_net.children["0"]
    assert fc.init_kwargs == {} and fc.init_args == (3, 5)
    assert isinstance(fc.attributes["weight_gain"], np.float64) and fc.attributes["weight_gain"] == 1 / np.sqrt(3)

    init_kwargs, state = load_panohead_pkl(pkl, key="G")
    assert (init_kwargs["z_dim"], init_kwargs["c_dim"], init_kwargs["img_resolution"]) == (6, 25, 128)
    _assert_bit_exact(state, G.state_dict())

    with pytest.raises(CheckpointError, match=r"snap\.pkl: no network named 'G_missing'; the file holds \['D', 'G', 'G_ema'"):
        load_panohead_pkl(pkl, key="G_missing")
    with pytest.raises(CheckpointError, match=r"snap\.pkl: 'D' is a Module, not PanoHead's TriPlaneGenerator"):
        load_panohead_pkl(pkl, key="D")
    with pytest.raises(CheckpointError, match=r"'augment_pipe' is a NoneType, not a persistence-saved network"):
        load_panohead_pkl(pkl, key="augment_pipe")


def test_mini_config_from_init_kwargs(nvidia_names):
    config = panohead_config_from_init_kwargs(_mini_init_kwargs(nvidia_names), name="mini")
    assert (config.superresolution, config.sr_channels, config.img_resolution) == ("2X", (128, 64), 128)
    assert (config.channel_base, config.channel_max, config.sr_num_fp16_res, config.mapping_layers) == (2048, 8, 4, 2)


# -------------------------------------------------------------------------------------------------
# Malicious and broken pickles


class _Calls:
    """Pickles as ``func(*args)``: what a malicious checkpoint uses to run code on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _marker_command(marker: Path) -> str:
    return f'"{sys.executable}" -c "open(r\'{marker}\', \'w\').close()"'


@pytest.mark.parametrize(
    "make_payload, refused",
    [
        (lambda m: _Calls(os.system, _marker_command(m)), r"refused to unpickle (posix|nt|os)\.system"),
        (lambda m: _Calls(builtins.eval, f"open({str(m)!r}, 'w').close()"), r"refused to unpickle builtins\.eval"),
        (lambda m: _Calls(builtins.exec, f"open({str(m)!r}, 'w').close()"), r"refused to unpickle builtins\.exec"),
        (lambda m: _Calls(subprocess.Popen, [sys.executable, "-c", f"open({str(m)!r}, 'w').close()"]), r"refused to unpickle subprocess\.Popen"),
        (lambda m: _Calls(builtins.getattr, _Calls(builtins.__import__, "os"), "system"), r"refused to unpickle builtins\.getattr"),
        (lambda m: _Calls(torch.load, str(m)), r"refused to unpickle torch\.serialization\.load"),
        (lambda m: _Calls(np.load, str(m)), r"refused to unpickle numpy\.lib\._npyio_impl\.load|refused to unpickle numpy"),
    ],
)  # fmt: skip
def test_malicious_pickles_are_refused(tmp_path, make_payload, refused):
    marker = tmp_path / "pwned"
    pkl = tmp_path / "evil.pkl"
    # A harmless tensor first, so the refusal happens mid-stream, as it would inside a real checkpoint.
    pkl.write_bytes(pickle.dumps({"G_ema": torch.ones(2), "payload": make_payload(marker)}, protocol=4))
    with pytest.raises(CheckpointError, match=rf"evil\.pkl: {refused}"):
        load_network_pickle(pkl)
    assert not marker.exists()


def test_malicious_payload_inside_a_persistent_module_state(tmp_path, nvidia_names):
    marker = tmp_path / "pwned"
    Module = nvidia_names.persistent(torch.nn.Module, _marker_source(marker))
    module = Module()
    module.hook = _Calls(os.system, _marker_command(marker))
    pkl = tmp_path / "evil_state.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": module}, protocol=4))
    with pytest.raises(CheckpointError, match=r"evil_state\.pkl: refused to unpickle (posix|nt|os)\.system"):
        load_network_pickle(pkl)
    assert not marker.exists()


def test_malicious_storage_blob_is_refused(tmp_path):
    """``torch.storage._load_from_bytes`` is an inner torch.save blob: it is read with weights_only=True."""
    marker = tmp_path / "pwned"
    inner = io.BytesIO()
    torch.save(_Calls(os.system, _marker_command(marker)), inner, _use_new_zipfile_serialization=False)
    load_from_bytes = sys.modules["torch.storage"]._load_from_bytes
    pkl = tmp_path / "evil_storage.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": _Calls(load_from_bytes, inner.getvalue())}, protocol=4))
    with pytest.raises(CheckpointError, match=r"evil_storage\.pkl: refused or unreadable tensor storage blob"):
        load_network_pickle(pkl)
    assert not marker.exists()


def test_other_names_in_allowed_modules_are_refused(tmp_path, nvidia_names):
    """Only the listed names are allowed, not whole modules (dnnlib.util has e.g. call_func_by_name)."""

    def call_func_by_name(*args):  # pragma: no cover - must not be called
        raise AssertionError

    sys.modules["dnnlib.util"].call_func_by_name = _public(call_func_by_name, "dnnlib.util", "call_func_by_name")
    pkl = tmp_path / "bad.pkl"
    pkl.write_bytes(pickle.dumps(_Calls(call_func_by_name, "os.system", "true"), protocol=4))
    with pytest.raises(CheckpointError, match=r"bad\.pkl: refused to unpickle dnnlib\.util\.call_func_by_name"):
        load_network_pickle(pkl)


def test_out_of_bounds_tensor_view_is_refused(tmp_path):
    storage = torch.arange(4, dtype=torch.float32)
    typed = torch.storage.TypedStorage(wrap_storage=storage.untyped_storage(), dtype=torch.float32, _internal=True)
    rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
    pkl = tmp_path / "oob.pkl"
    pkl.write_bytes(pickle.dumps(_Calls(rebuild, typed, 2, (3,), (1,), False, {}), protocol=4))
    with pytest.raises(CheckpointError, match=r"oob\.pkl: malformed tensor: view of shape \(3,\) reaches past its storage"):
        load_network_pickle(pkl)


def test_broken_pickles_name_the_file(tmp_path, nvidia_names):
    pkl = tmp_path / "snap.pkl"
    _write_snapshot(nvidia_names, pkl, tmp_path / "marker")
    blob = pkl.read_bytes()

    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pkl: (the file ends early|not a readable network pickle)"):
        load_panohead_pkl(truncated)

    corrupt = tmp_path / "corrupt.pkl"
    corrupt.write_bytes(blob[:2] + b"\xfe\xfd\xfc\xfb" * 4 + blob[18:])
    with pytest.raises(CheckpointError, match=r"corrupt\.pkl: "):
        load_panohead_pkl(corrupt)

    for name, content in (("empty.pkl", b""), ("text.pkl", b"not a pickle at all\n")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"{name}: "):
            load_panohead_pkl(tmp_path / name)

    with pytest.raises(CheckpointError, match=r"absent\.pkl: file not found"):
        load_panohead_pkl(tmp_path / "absent.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match=r"list\.pkl: expected a dict of networks"):
        load_panohead_pkl(tmp_path / "list.pkl")


# -------------------------------------------------------------------------------------------------
# init_kwargs → GeneratorConfig


def _official_kwargs() -> dict:
    return copy.deepcopy(load_manifest(MANIFEST)["init_kwargs"])


def test_official_kwargs_give_the_panohead_preset():
    kwargs = _official_kwargs()
    kwargs["mapping_kwargs"] = AttrDict(kwargs["mapping_kwargs"])  # EasyDict values unpickle as AttrDict
    assert panohead_config_from_init_kwargs(kwargs) == get_preset("panohead")


def test_missing_kwargs_take_panohead_constructor_defaults():
    kwargs = _official_kwargs()
    for key in ("conv_clamp", "num_fp16_res", "channel_base"):
        del kwargs[key]
    kwargs["mapping_kwargs"] = {}
    del kwargs["rendering_kwargs"]["c_scale"]
    kwargs["rendering_kwargs"]["some_training_option"] = 3  # unknown and harmless: ignored
    config = panohead_config_from_init_kwargs(kwargs)
    assert (config.conv_clamp, config.num_fp16_res, config.channel_base, config.mapping_layers) == (256.0, 4, 32768, 8)
    assert config.rendering.c_scale == 0.0  # PanoHead: rendering_kwargs.get('c_scale', 0)
    assert math.isclose(config.rendering.ray_end, 3.3)


def test_four_x_superresolution():
    kwargs = _official_kwargs()
    kwargs["img_resolution"] = 256
    kwargs["rendering_kwargs"]["superresolution_module"] = "training.superresolution.SuperresolutionHybrid4X"
    config = panohead_config_from_init_kwargs(kwargs)
    assert (config.superresolution, config.sr_channels) == ("4X", (128, 64))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda k: k["rendering_kwargs"].update(superresolution_module="training.superresolution.SuperresolutionHybrid8X"),
         "superresolution module 'training.superresolution.SuperresolutionHybrid8X' is not supported"),
        (lambda k: k.update(architecture="resnet"), "generator option architecture='resnet' is not supported"),
        (lambda k: k["sr_kwargs"].update(use_noise=False), "sr_kwargs option use_noise=False is not supported"),
        (lambda k: k["mapping_kwargs"].update(layer_features=256), "mapping_kwargs layer_features=256 is not supported"),
        (lambda k: k["rendering_kwargs"].update(ray_start="auto"), r"rendering_kwargs ray_start='auto' is not a number"),
        (lambda k: k["rendering_kwargs"].pop("triplane_depth"), r"rendering_kwargs lacks \['triplane_depth'\]"),
        (lambda k: k.pop("z_dim"), "z_dim is missing"),
        (lambda k: k.update(img_resolution=256), "cannot be represented: .*img_resolution is 256"),
    ],
)  # fmt: skip
def test_unrepresentable_kwargs_are_refused(edit, message):
    kwargs = _official_kwargs()
    edit(kwargs)
    with pytest.raises(CheckpointError, match=rf"G\.pkl: {message}"):
        panohead_config_from_init_kwargs(kwargs, source="G.pkl")


def test_numpy_values_in_numpy1_and_numpy2_spelling(tmp_path):
    values = {"gain": np.float64(0.5), "count": np.int32(-3), "table": np.arange(6, dtype=np.float32).reshape(2, 3)}
    for protocol in (2, 4):
        blob = pickle.dumps(values, protocol=protocol)
        for spelling in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
            path = tmp_path / f"np{protocol}.pkl"
            path.write_bytes(blob.replace(b"numpy._core.multiarray", spelling) if protocol == 2 else blob)
            loaded = load_network_pickle(path)
            assert loaded["gain"] == 0.5 and loaded["gain"].dtype == np.float64
            assert loaded["count"] == -3 and loaded["count"].dtype == np.int32
            np.testing.assert_array_equal(loaded["table"], values["table"])


def test_identical_weights_give_identical_bytes(tmp_path):
    """Pack manifests hash checkpoint files, so saving the same weights twice must give the same bytes."""
    import torch

    from engine.generator.checkpoint import save_checkpoint
    from engine.generator.config import get_preset

    state = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.float16)}
    first = save_checkpoint(tmp_path / "one", state, get_preset("tiny"), {"note": "x"})
    second = save_checkpoint(tmp_path / "two", state, get_preset("tiny"), {"note": "x"})
    assert first.with_suffix(".safetensors").read_bytes() == second.with_suffix(".safetensors").read_bytes()
