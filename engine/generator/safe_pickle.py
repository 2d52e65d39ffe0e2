"""Read NVIDIA-style network pickles (the official PanoHead ``.pkl``) without running any code from them.

Why this exists: the published PanoHead checkpoint is a plain ``pickle.dump`` of a dict holding ``G``, ``D``,
``G_ema`` ... whose modules were written by NVIDIA's ``torch_utils.persistence``. Such an object does not pickle
as "class + state" but as a call ``_reconstruct_persistent_obj(meta)``, where ``meta`` carries the *Python
source code* of the module that defined the class (``module_src``) and the official loader ``exec``s it. A
normal ``pickle.load`` of a downloaded file can therefore run arbitrary code, twice over (any ``__reduce__``
global, and ``module_src``).

This module replaces every global a pickle asks for with something from a short, explicit table:

* containers (``collections.OrderedDict``, ``dnnlib.util.EasyDict`` → :class:`AttrDict`), torch dtypes,
  ``torch.Size``, numpy scalars of plain dtypes and numpy arrays;
* tensor reconstruction (``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``) by functions of ours that
  only accept a storage, offsets and sizes; storages (``torch.storage._load_from_bytes``, an inner
  ``torch.save`` blob) are read with ``torch.load(..., weights_only=True)``;
* ``torch_utils.persistence._reconstruct_persistent_obj`` → a function that never looks at ``module_src`` and
  returns a :class:`PersistentStub` holding the class name, the constructor keyword arguments persistence
  recorded, and the module's parameters, buffers and children;
* a few plain ``torch.nn`` containers/activations and PanoHead's parameter-free ``RaySampler`` → a
  :class:`ModuleStub` that only stores the pickled state.

Anything else raises :class:`~engine.errors.CheckpointError` naming the file and the refused global. The
second half of the module turns a stub tree into a ``state_dict`` with the same dotted names
``module.state_dict()`` would produce, and PanoHead's constructor arguments into a :class:`GeneratorConfig`.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError, InputError
from ..io.untrusted import open_checked
from .config import GeneratorConfig, RenderingConfig

__all__ = [
    "AttrDict",
    "ModuleStub",
    "PersistentStub",
    "PickledNetwork",
    "RestrictedUnpickler",
    "load_network_pickle",
    "read_pickled_network",
    "load_panohead_pkl",
    "panohead_config_from_init_kwargs",
]


class _Refused(Exception):
    """Raised inside unpickling; the loader turns it into a CheckpointError that names the file."""


# =================================================================================================
# Stand-ins for the objects a network pickle contains
# =================================================================================================


class AttrDict(dict):
    """A dict whose keys can also be read as attributes: what ``dnnlib.EasyDict`` values unpickle into."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


class ModuleStub:
    """The pickled state of one ``torch.nn.Module``, kept as data; none of the module's code is involved.

    ``parameters``/``buffers``/``children`` mirror ``nn.Module``'s ``_parameters``/``_buffers``/``_modules``
    (values may be ``None``, as torch allows); ``attributes`` holds every other entry of the instance dict
    (plain Python values such as ``rendering_kwargs`` or ``neural_rendering_resolution``).
    """

    class_name: str = "Module"
    pickled_as: str = ""  # "module.Class" for plain classes; empty for persistence objects (code-less)

    def __init__(self, class_name: str, state: dict[str, Any]) -> None:
        self.class_name = class_name
        self._adopt_state(state)

    # Plain (non-persistent) modules are rebuilt by pickle as ``cls.__new__(cls)`` + ``__setstate__(state)``.
    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (instance dict, slot values) form
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        self._adopt_state(state)

    def _adopt_state(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise _Refused(f"malformed state for module {self.class_name}: not a dict but {type(state).__name__}")
        state = dict(state)
        self.parameters = _tensor_table(state.pop("_parameters", {}), self.class_name, "_parameters")
        self.buffers = _tensor_table(state.pop("_buffers", {}), self.class_name, "_buffers")
        non_persistent = state.pop("_non_persistent_buffers_set", set())
        if not isinstance(non_persistent, (set, frozenset, list, tuple)):
            raise _Refused(f"malformed _non_persistent_buffers_set in module {self.class_name}")
        self.non_persistent_buffers: frozenset[str] = frozenset(non_persistent)
        children = state.pop("_modules", {})
        if not isinstance(children, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, ModuleStub)) for k, v in children.items()
        ):
            raise _Refused(f"malformed _modules in module {self.class_name}: children must be modules or None")
        self.children: dict[str, ModuleStub | None] = dict(children)
        self.attributes: dict[str, Any] = state

    # ---------------------------------------------------------------------------------------------
    def named_stubs(self, prefix: str = "") -> Iterator[tuple[str, "ModuleStub"]]:
        """(dotted path, stub) for this stub and all descendants, depth first, like ``named_modules``."""
        yield prefix, self
        for name, child in self.children.items():
            if child is not None:
                yield from child.named_stubs(f"{prefix}.{name}" if prefix else name)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters and persistent buffers under dotted names, in the order ``nn.Module.state_dict`` uses."""
        out: dict[str, torch.Tensor] = {}
        for path, stub in self.named_stubs():
            head = f"{path}." if path else ""
            for name, tensor in stub.parameters.items():
                if tensor is not None:
                    out[head + name] = tensor.detach()
            for name, tensor in stub.buffers.items():
                if tensor is not None and name not in stub.non_persistent_buffers:
                    out[head + name] = tensor.detach()
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.class_name!r}, {len(self.parameters)} parameters, "
            f"{len(self.buffers)} buffers, children={list(self.children)})"
        )


class PersistentStub(ModuleStub):
    """A module saved by ``torch_utils.persistence``: its stored source is kept as text and never executed."""

    def __init__(self, meta: dict[str, Any]) -> None:
        state = dict(meta["state"])
        init_args = state.pop("_init_args", ())
        init_kwargs = state.pop("_init_kwargs", {})
        if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, dict):
            raise _Refused(f"malformed constructor arguments for persistent class {meta['class_name']}")
        super().__init__(meta["class_name"], state)
        self.version = meta.get("version")
        self.module_src: str = meta["module_src"]  # data only
        self.init_args: tuple = tuple(init_args)
        self.init_kwargs: dict[str, Any] = dict(init_kwargs)


def _tensor_table(table: Any, owner: str, what: str) -> dict[str, torch.Tensor | None]:
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, torch.Tensor)) for k, v in table.items()
    ):
        raise _Refused(f"malformed {what} in module {owner}: expected a name → tensor table")
    return dict(table)


# =================================================================================================
# Safe replacements for the callables a network pickle references
# =================================================================================================


def _stub_from_persistence_meta(meta: Any) -> PersistentStub:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: records, never imports or execs."""
    if not isinstance(meta, dict):
        raise _Refused("malformed persistent object: its metadata is not a dict")
    missing = [k for k in ("type", "module_src", "class_name", "state") if k not in meta]
    if missing:
        raise _Refused(f"malformed persistent object: metadata lacks {missing}")
    if meta["type"] != "class" or not isinstance(meta["class_name"], str) or not isinstance(meta["module_src"], str):
        raise _Refused(f"malformed persistent object of type {meta['type']!r}")
    if not isinstance(meta["state"], dict):
        raise _Refused(f"malformed persistent object {meta['class_name']}: state is not a dict")
    return PersistentStub(meta)


def _plain_module_stub_class(qualified: str) -> type[ModuleStub]:
    """A ModuleStub subclass that pickle can instantiate (``cls.__new__`` + ``__setstate__``) for one class name."""
    short = qualified.rsplit(".", 1)[1]
    return type(f"{short}Stub", (ModuleStub,), {"class_name": short, "pickled_as": qualified, "__module__": __name__})


def _storage_from_bytes(blob: Any) -> torch.storage.TypedStorage | torch.UntypedStorage:
    """Stand-in for ``torch.storage._load_from_bytes``: the blob is a ``torch.save`` of one storage."""
    if not isinstance(blob, (bytes, bytearray)):
        raise _Refused("malformed tensor storage: expected bytes")
    try:
        storage = torch.load(io.BytesIO(bytes(blob)), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError for unsafe blobs and various errors for bad ones
        raise _Refused(f"refused or unreadable tensor storage blob ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise _Refused(f"tensor storage blob holds a {type(storage).__name__}, not a storage")
    return storage


def _tensor_from_storage(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a strided view of a loaded storage, bounds-checked.

    Backward hooks and metadata are dropped: a checkpoint carries values, not behaviour.
    """
    if isinstance(storage, torch.storage.TypedStorage):
        dtype, untyped = storage.dtype, storage.untyped()
    elif isinstance(storage, torch.UntypedStorage):
        dtype, untyped = torch.uint8, storage
    else:
        raise _Refused(f"malformed tensor: storage is a {type(storage).__name__}")
    if not _is_int_sequence(size) or not _is_int_sequence(stride) or len(size) != len(stride):
        raise _Refused("malformed tensor: size/stride are not matching integer tuples")
    if not isinstance(storage_offset, int) or min([storage_offset, *size, *stride]) < 0:
        raise _Refused("malformed tensor: negative offset, size or stride")
    available = untyped.nbytes() // dtype.itemsize
    if all(size):  # non-empty: the furthest element must lie inside the storage
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= available:
            raise _Refused(
                f"malformed tensor: view of shape {tuple(size)} reaches past its storage of {available} elements"
            )
    tensor = torch.empty((0,), dtype=dtype).set_(untyped, storage_offset, tuple(size), tuple(stride))
    return tensor.requires_grad_(bool(requires_grad)) if tensor.is_floating_point() or tensor.is_complex() else tensor


def _parameter_from_tensor(
    data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None
) -> torch.nn.Parameter:
    """Stand-in for ``torch._utils._rebuild_parameter`` (and ``_with_state``): hooks and extra state dropped."""
    if not isinstance(data, torch.Tensor):
        raise _Refused("malformed parameter: data is not a tensor")
    return torch.nn.Parameter(data.detach(), requires_grad=bool(requires_grad) and data.is_floating_point())


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    """Stand-in for ``numpy.core.multiarray.scalar`` restricted to plain (non-object) dtypes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise _Refused("refused numpy scalar of an object dtype or without raw bytes")
    if len(data) != dtype.itemsize:
        raise _Refused("malformed numpy scalar: byte count does not match its dtype")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0].copy()


def _numpy_array_shell(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """Stand-in for ``numpy.core.multiarray._reconstruct``: an empty ndarray that BUILD then fills."""
    if subtype is not np.ndarray:
        raise _Refused("refused numpy array of a subclass")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles use to store ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("refused _codecs.encode other than str → latin-1 bytes")
    return text.encode("latin-1")


def _is_int_sequence(value: Any) -> bool:
    if not isinstance(value, (tuple, list, torch.Size)):
        return False
    return all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


# -------------------------------------------------------------------------------------------------
# The whitelist. Keys are (module, name) exactly as they appear in the pickle.

_DTYPES = [
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
]  # fmt: skip

# Module classes whose pickled state we accept as data. None of them has code we would need: containers and
# activations carry no weights of their own; PanoHead's RaySampler has no parameters at all.
_PLAIN_MODULE_CLASSES = [
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.ModuleDict",
    "torch.nn.modules.container.ParameterList",
    "torch.nn.modules.container.ParameterDict",
    "torch.nn.modules.activation.Softplus",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.activation.LeakyReLU",
    "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.activation.Tanh",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.activation.GELU",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.conv.Conv2d",
    "training.volumetric_rendering.ray_sampler.RaySampler",
]


def _build_allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("_codecs", "encode"): _latin1_bytes,
        ("dnnlib.util", "EasyDict"): AttrDict,
        ("dnnlib", "EasyDict"): AttrDict,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _stub_from_persistence_meta,
        ("torch._utils", "_rebuild_tensor_v2"): _tensor_from_storage,
        ("torch._utils", "_rebuild_parameter"): _parameter_from_tensor,
        ("torch._utils", "_rebuild_parameter_with_state"): _parameter_from_tensor,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x spellings
        allowed[(module, "scalar")] = _numpy_scalar
        allowed[(module, "_reconstruct")] = _numpy_array_shell
    for dtype in _DTYPES:
        allowed[("torch", str(dtype).removeprefix("torch."))] = dtype
    for fmt in ("contiguous_format", "channels_last", "preserve_format"):
        allowed[("torch", fmt)] = getattr(torch, fmt)
    for qualified in _PLAIN_MODULE_CLASSES:
        module, name = qualified.rsplit(".", 1)
        allowed[(module, name)] = _plain_module_stub_class(qualified)
    return allowed


_ALLOWED_GLOBALS = _build_allowed_globals()
_PYTHON2_MODULE_NAMES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves globals only through the table above; ``source`` names the file."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        module = _PYTHON2_MODULE_NAMES.get(module, module)  # protocol-2 pickles spell builtins "__builtin__"
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(
                f"{self.source}: refused to unpickle {module}.{name}: it is not on the list of objects a network "
                f"checkpoint may contain (the file may be malicious or from an unsupported program)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self.source}: refused to unpickle a persistent id (not used by network pickles)")


def load_network_pickle(path: str | os.PathLike) -> Any:
    """Unpickle a network pickle with :class:`RestrictedUnpickler`; every failure is a CheckpointError."""
    path = Path(path)
    try:
        handle = open_checked(path, "file")  # untrusted: a regular file within the size limit
    except InputError as exc:
        raise CheckpointError(str(exc)) from None
    with handle, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        try:
            return RestrictedUnpickler(handle, str(path)).load()
        except CheckpointError:
            raise
        except _Refused as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        except EOFError:
            raise CheckpointError(f"{path}: the file ends early (truncated or incomplete download?)") from None
        except Exception as exc:  # a corrupt pickle can fail with almost any exception type
            raise CheckpointError(
                f"{path}: not a readable network pickle (corrupt or truncated): {type(exc).__name__}: {_first_line(exc)}"
            ) from None


# =================================================================================================
# PanoHead: pick a network out of the pickle, flatten it, and describe it as a GeneratorConfig
# =================================================================================================

# Positional constructor parameters of PanoHead's TriPlaneGenerator, for pickles whose G was built with *args.
_TRIPLANE_POSITIONAL = (
    "z_dim", "c_dim", "w_dim", "img_resolution", "img_channels",
    "sr_num_fp16_res", "mapping_kwargs", "rendering_kwargs", "sr_kwargs",
)  # fmt: skip


@dataclass
class PickledNetwork:
    """One network read from a pickle: what it was built with, its tensors, and its other top-level state."""

    class_name: str
    init_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    attributes: dict[str, Any] = field(default_factory=dict)  # e.g. neural_rendering_resolution, rendering_kwargs


def _plain(value: Any) -> Any:
    """AttrDict/tuple-heavy pickled values → plain dicts/lists/ints so configs compare and serialise simply."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_pickled_network(path: str | os.PathLike, key: str = "G_ema") -> PickledNetwork:
    """Read ``data[key]`` of a persistence-style network pickle as a :class:`PickledNetwork`."""
    data = load_network_pickle(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of networks at the top level, found {type(data).__name__}")
    if key not in data:
        raise CheckpointError(f"{path}: no network named {key!r}; the file holds {sorted(map(str, data))}")
    stub = data[key]
    if not isinstance(stub, PersistentStub):
        raise CheckpointError(f"{path}: {key!r} is a {type(stub).__name__}, not a persistence-saved network")
    init_kwargs = _plain(stub.init_kwargs)
    if stub.init_args:
        if stub.class_name != "TriPlaneGenerator" or len(stub.init_args) > len(_TRIPLANE_POSITIONAL):
            raise CheckpointError(f"{path}: {key} ({stub.class_name}) was built with positional arguments we cannot name")
        init_kwargs.update(zip(_TRIPLANE_POSITIONAL, _plain(list(stub.init_args))))
    attributes = {k: _plain(v) for k, v in stub.attributes.items() if not k.startswith("_")}
    return PickledNetwork(stub.class_name, init_kwargs, stub.state_dict(), attributes)


def load_panohead_pkl(path: str | os.PathLike, key: str = "G_ema") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(init_kwargs, state_dict)`` of PanoHead's generator in an official ``.pkl``, read without executing code.

    The state dict uses the dotted names and order of ``TriPlaneGenerator.state_dict()`` (parameters and
    persistent buffers), with the stored dtypes, bit for bit.
    """
    network = read_pickled_network(path, key)
    if network.class_name != "TriPlaneGenerator":
        raise CheckpointError(f"{path}: {key!r} is a {network.class_name}, not PanoHead's TriPlaneGenerator")
    return network.init_kwargs, network.state_dict


# -------------------------------------------------------------------------------------------------
# init_kwargs → GeneratorConfig

_SR_MODULES = {  # PanoHead superresolution class → (our name, output channels of its two synthesis blocks)
    "SuperresolutionHybrid8XDC": ("8XDC", (256, 128)),
    "SuperresolutionHybrid4X": ("4X", (128, 64)),
    "SuperresolutionHybrid2X": ("2X", (128, 64)),
}

# rendering_kwargs entries PanoHead reads with [] (no default): a checkpoint without them is not PanoHead's.
_REQUIRED_RENDERING = (
    "triplane_size", "triplane_depth", "superresolution_module", "sr_antialias", "decoder_activation",
    "c_gen_conditioning_zero", "superresolution_noise_mode", "ray_start", "ray_end", "box_warp",
    "depth_resolution", "depth_resolution_importance", "disparity_space_sampling", "clamp_mode",
)  # fmt: skip

# rendering_kwargs entries copied into RenderingConfig when present (the others keep our defaults).
_FLOAT_RENDERING = (
    "ray_start", "ray_end", "box_warp", "decoder_lr_mul", "c_scale", "density_noise", "avg_camera_radius",
)  # fmt: skip
_INT_RENDERING = ("triplane_size", "triplane_depth", "depth_resolution", "depth_resolution_importance")
_BOOL_RENDERING = (
    "disparity_space_sampling", "use_torgb_raw", "use_background", "c_gen_conditioning_zero", "sr_antialias",
    "white_back",
)  # fmt: skip
_STR_RENDERING = ("clamp_mode", "decoder_activation", "superresolution_noise_mode")

# Options of the StyleGAN2 layers that change the set or shape of weights; our backbone has the defaults.
_FIXED_ARCHITECTURE = {
    "architecture": "skip",
    "resample_filter": [1, 3, 3, 1],
    "use_noise": True,
    "kernel_size": 3,
    "activation": "lrelu",
}


def panohead_config_from_init_kwargs(
    init_kwargs: dict[str, Any],
    *,
    neural_rendering_resolution: int = 64,
    name: str = "panohead",
    source: str = "PanoHead init_kwargs",
) -> GeneratorConfig:
    """Describe a PanoHead ``TriPlaneGenerator`` (its recorded constructor kwargs) as our GeneratorConfig.

    Missing entries take the defaults of PanoHead's constructors (not ours), e.g. 8 mapping layers and
    conv_clamp 256. Training-only or cosmetic entries (``gpc_reg_prob``, ``fused_modconv_default``, ...) are
    ignored. Options that would change the weights in a way GeneratorConfig cannot express raise a
    CheckpointError naming ``source``. ``neural_rendering_resolution`` is module state, not a constructor
    argument (pass ``PickledNetwork.attributes['neural_rendering_resolution']`` when known).
    """

    def fail(message: str) -> CheckpointError:
        return CheckpointError(f"{source}: {message}")

    kw = _plain(init_kwargs)
    if not isinstance(kw, dict):
        raise fail("init_kwargs is not a dict")
    for key in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"):
        if not isinstance(kw.get(key), int):
            raise fail(f"{key} is missing or not an integer")
    rendering = kw.get("rendering_kwargs")
    if not isinstance(rendering, dict):
        raise fail("rendering_kwargs is missing")
    missing = [k for k in _REQUIRED_RENDERING if k not in rendering]
    if missing:
        raise fail(f"rendering_kwargs lacks {missing}; this is not a PanoHead generator")
    mapping = kw.get("mapping_kwargs") or {}
    sr_kwargs = kw.get("sr_kwargs") or {}

    for owner, options in (("generator", kw), ("sr_kwargs", sr_kwargs)):
        for key, expected in _FIXED_ARCHITECTURE.items():
            if key in options and options[key] != expected:
                raise fail(f"{owner} option {key}={options[key]!r} is not supported (only {expected!r})")
    for key in ("embed_features", "layer_features"):
        if mapping.get(key) not in (None, kw["w_dim"]):
            raise fail(f"mapping_kwargs {key}={mapping[key]!r} is not supported (only the default, w_dim)")
    if mapping.get("activation", "lrelu") != "lrelu":
        raise fail(f"mapping_kwargs activation={mapping['activation']!r} is not supported")

    sr_class = str(rendering["superresolution_module"]).rsplit(".", 1)[-1]
    if sr_class not in _SR_MODULES:
        raise fail(f"superresolution module {rendering['superresolution_module']!r} is not supported; "
                   f"known: {sorted(_SR_MODULES)}")  # fmt: skip
    superresolution, sr_channels = _SR_MODULES[sr_class]
    if rendering.get("decoder_output_dim", 32) != 32:
        raise fail("decoder_output_dim other than 32 is not supported")

    render_fields: dict[str, Any] = {"neural_rendering_resolution": int(neural_rendering_resolution)}
    try:
        for key in _FLOAT_RENDERING:
            if key in rendering:
                render_fields[key] = float(rendering[key])
        for key in _INT_RENDERING:
            if key in rendering:
                render_fields[key] = int(rendering[key])
    except (TypeError, ValueError):
        value = rendering[key]
        raise fail(f"rendering_kwargs {key}={value!r} is not a number (an 'auto' ray range is not supported)") from None
    render_fields.update({key: bool(rendering[key]) for key in _BOOL_RENDERING if key in rendering})
    render_fields.update({key: str(rendering[key]) for key in _STR_RENDERING if key in rendering})
    render_fields.setdefault("c_scale", 0.0)  # PanoHead multiplies the pose by rendering_kwargs.get('c_scale', 0)
    if "avg_camera_pivot" in rendering:
        render_fields["avg_camera_pivot"] = tuple(float(v) for v in rendering["avg_camera_pivot"])

    conv_clamp = kw.get("conv_clamp", 256)  # SynthesisBlock's default when the generator does not pass one
    try:
        config = GeneratorConfig(
            name=name,
            z_dim=kw["z_dim"],
            w_dim=kw["w_dim"],
            c_dim=kw["c_dim"],
            img_resolution=kw["img_resolution"],
            img_channels=kw["img_channels"],
            mapping_layers=int(mapping.get("num_layers", 8)),
            mapping_lr_multiplier=float(mapping.get("lr_multiplier", 0.01)),
            channel_base=int(kw.get("channel_base", 32768)),
            channel_max=int(kw.get("channel_max", 512)),
            num_fp16_res=int(kw.get("num_fp16_res", 4)),
            conv_clamp=None if conv_clamp is None else float(conv_clamp),
            sr_num_fp16_res=int(kw.get("sr_num_fp16_res", 0)),
            sr_channels=sr_channels,
            superresolution=superresolution,
            rendering=RenderingConfig(**render_fields),
        )
        return config.validate()
    except ConfigError as exc:
        raise fail(f"cannot be represented: {exc}") from None

