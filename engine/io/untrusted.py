"""Reading files that come from other people: one set of rules and limits for every reader.

Scans, portraits, latents, checkpoints and the views Blender renders may come from anyone (the batch takes
folders many people drop files into), so every reader of the engine opens its input through this module:

* **Inputs are regular files.** :func:`check_file` looks at ``os.stat`` *before* anything is opened: a FIFO,
  a device (``/dev/zero``), a socket or a folder is refused (opening a FIFO with no writer would block
  forever; reading a device would never end). The file is then opened non-blocking and ``fstat`` is checked
  again on the open descriptor, so a file swapped for a FIFO in between is refused too.
* **References stay in the input's folder.** A file named *inside* an input (a glTF buffer or image, an OBJ's
  ``mtllib``, an MTL's texture maps, a PLY's ``TextureFile``) goes through :func:`check_reference`: no
  absolute paths or URLs, no ``..`` that leaves the folder — also after percent-decoding (once or several
  times: ``%2e%2e%2f`` and ``%252e%252e%252f`` are ``../`` too) and with ``\\`` read as a separator — and no
  symbolic link whose target lies outside (the path is resolved and containment checked). All of this is
  decided from the reference's text and ``os.stat`` alone: a refused reference is never opened.
  ``data:`` URIs (base64) are decoded by :func:`decode_data_uri`, size-capped.
* **Sizes are checked before allocating** (:class:`InputLimits`): file bytes, vertex and face counts,
  image pixels (Pillow's decompression-bomb guard is set to our limit and its warning is an error), JSON
  size and nesting depth, and the declared size of every array in a ``.npz`` (read from the ``.npy`` header
  before any data is decompressed; object arrays — pickles — are refused).

Every refusal is an :class:`~engine.errors.InputError` naming the file and, for a reference, the offending
text. The defaults are far above any real scan; the command line raises them with ``--max-input-mb N`` or
``--allow-large-inputs`` (:func:`set_limits`). Nothing here imports more than the standard library at module
level (numpy and Pillow are imported where needed), so the Blender side can use the same rules.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import posixpath
import re
import stat
import urllib.parse
import warnings
import zipfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from ..errors import ConfigError, InputError

MiB = 1 << 20
GiB = 1 << 30
RAISE_HINT = "raise the limits with --max-input-mb N or --allow-large-inputs if the file is genuine"


@dataclass(frozen=True)
class InputLimits:
    """Upper bounds for untrusted inputs, checked before anything is allocated.

    The defaults are far above a real head scan (a dense photogrammetry head is 1–5 M vertices, ≤ 500 MB as
    text OBJ; a portrait ≤ 60 megapixels; a views manifest a few kB) and far below what would exhaust the
    machine.
    """

    max_file_bytes: int = 2 * GiB  # any one input file, and any one file it references
    max_vertices: int = 50_000_000
    max_faces: int = 100_000_000
    max_image_pixels: int = 100_000_000  # width × height (Pillow's MAX_IMAGE_PIXELS is set to this)
    max_json_bytes: int = 64 * MiB  # manifests, sidecars, checkpoint metadata (a .gltf is a scan: max_file_bytes)
    max_json_depth: int = 100  # nesting of [] and {} (a glTF needs < 10)
    max_model_parameters: int = 2_000_000_000  # a generator a checkpoint/config file describes (PanoHead: ~0.03 G)

    def validate(self) -> "InputLimits":
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"input limit {f.name} must be a positive integer, got {value!r}")
        if self.max_json_depth > 900:  # json's C parser recurses; deeper would hit Python's recursion limit
            raise ConfigError(f"input limit max_json_depth must be ≤ 900, got {self.max_json_depth}")
        return self

    @classmethod
    def large(cls) -> "InputLimits":
        """What ``--allow-large-inputs`` means: every limit ×16 (JSON depth ×4); still finite."""
        d = cls()
        return cls(
            max_file_bytes=d.max_file_bytes * 16,
            max_vertices=d.max_vertices * 16,
            max_faces=d.max_faces * 16,
            max_image_pixels=d.max_image_pixels * 16,
            max_json_bytes=d.max_json_bytes * 16,
            max_json_depth=d.max_json_depth * 4,
            max_model_parameters=d.max_model_parameters * 16,
        )

    def replace(self, **changes: Any) -> "InputLimits":
        return replace(self, **changes).validate()


_current = InputLimits()


def current_limits() -> InputLimits:
    """The limits readers use when none are passed (the defaults, or what the command line set)."""
    return _current


def set_limits(limits: InputLimits) -> InputLimits:
    """Make ``limits`` the process-wide default; returns the previous ones."""
    global _current
    previous, _current = _current, limits.validate()
    return previous


@contextlib.contextmanager
def limits_scope(limits: InputLimits) -> Iterator[InputLimits]:
    previous = set_limits(limits)
    try:
        yield limits
    finally:
        set_limits(previous)


def limits_from_options(max_input_mb: float | None = None, allow_large: bool = False) -> InputLimits:
    """The limits for the command-line flags ``--max-input-mb`` / ``--allow-large-inputs``."""
    limits = InputLimits.large() if allow_large else InputLimits()
    if max_input_mb is not None:
        if not (isinstance(max_input_mb, (int, float)) and math.isfinite(max_input_mb) and max_input_mb > 0):
            raise ConfigError(f"--max-input-mb must be a positive number, got {max_input_mb!r}")
        limits = replace(limits, max_file_bytes=int(max_input_mb * MiB))
    return limits.validate()


def active_limits(limits: InputLimits | None = None) -> InputLimits:
    return _current if limits is None else limits


def _mb(n: int) -> str:
    return f"{n / MiB:.1f} MB" if n < 10 * GiB else f"{n / GiB:.1f} GB"


def _size(n: int, cap: int) -> str:
    """``n`` bytes for a message that compares it with ``cap`` (exact when both round to the same MB)."""
    return f"{n:,} bytes" if _mb(n) == _mb(cap) else _mb(n)


def check_count(name: str, what: str, count: int, limit: int, limit_name: str) -> int:
    """``count`` (e.g. claimed vertices) if it is within ``limit``, else an InputError naming the file."""
    if count > limit:
        raise InputError(f"{name}: {what} {count:,} exceeds the limit of {limit:,} ({limit_name}); {RAISE_HINT}")
    return count


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------
def file_kind(mode: int) -> str:
    """A readable name for what ``os.stat`` found."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _is_inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def check_file(path: str | os.PathLike, what: str = "input", *, root: str | os.PathLike | None = None,
               limits: InputLimits | None = None, max_bytes: int | None = None, limit_name: str = "input") -> os.stat_result:
    """``os.stat`` of an input that may be opened: it exists, is a regular file within the size limit and,
    with ``root``, resolves (symbolic links followed) inside ``root``. Nothing is opened."""
    limits = active_limits(limits)
    p = Path(path)
    try:
        os.lstat(p)
    except FileNotFoundError:
        raise InputError(f"{p}: {what} not found") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot look at {what} ({exc.strerror})") from None
    if root is not None:
        real, real_root = p.resolve(), Path(root).resolve()
        if not _is_inside(real, real_root):
            raise InputError(f"{p}: {what} is a symbolic link to {real}, outside its folder {Path(root)}; refused")
    try:
        st = os.stat(p)
    except OSError as exc:
        raise InputError(f"{p}: {what} is a broken link or unreadable ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{p}: {what} is {file_kind(st.st_mode)}, not a regular file; refused")
    cap = limits.max_file_bytes if max_bytes is None else max_bytes
    if st.st_size > cap:
        raise InputError(f"{p}: {what} is {_size(st.st_size, cap)}, over the {_mb(cap)} {limit_name} limit; {RAISE_HINT}")
    return st


def open_checked(path: str | os.PathLike, what: str = "input", *, root: str | os.PathLike | None = None,
                 limits: InputLimits | None = None, max_bytes: int | None = None, limit_name: str = "input") -> BinaryIO:
    """Open an input for binary reading after :func:`check_file`; the open descriptor is checked again
    (``fstat``), so a file replaced by a FIFO or device in between is refused without reading from it."""
    limits = active_limits(limits)
    cap = limits.max_file_bytes if max_bytes is None else max_bytes
    check_file(path, what, root=root, limits=limits, max_bytes=cap, limit_name=limit_name)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputError(f"{path}: cannot open {what} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: {what} is {file_kind(st.st_mode)}, not a regular file; refused")
        if st.st_size > cap:
            raise InputError(f"{path}: {what} is {_size(st.st_size, cap)}, over the {_mb(cap)} {limit_name} limit; {RAISE_HINT}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, what: str = "input", *, root: str | os.PathLike | None = None,
               limits: InputLimits | None = None, max_bytes: int | None = None, limit_name: str = "input") -> bytes:
    """The whole file, through :func:`open_checked` (never more than the limit, even if the file grows)."""
    limits = active_limits(limits)
    cap = limits.max_file_bytes if max_bytes is None else max_bytes
    with open_checked(path, what, root=root, limits=limits, max_bytes=cap, limit_name=limit_name) as fh:
        expected = os.fstat(fh.fileno()).st_size
        chunks, total = [], 0
        try:
            while True:  # the stat'ed size first, then whatever a growing file adds, never past the limit
                chunk = fh.read(max(expected - total, 0) + 1 if total <= expected else 64 * MiB)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > cap:
                    raise InputError(f"{path}: {what} grew past the {_mb(cap)} {limit_name} limit while being read; refused")
        except OSError as exc:
            raise InputError(f"{path}: cannot read {what} ({exc.strerror})") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# --------------------------------------------------------------------------------------------------
# References from inside a file
# --------------------------------------------------------------------------------------------------
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")  # http:, file:, data:, and Windows drives (C:)


def _decodings(ref: str) -> list[str]:
    """``ref`` and its percent-decodings, repeated until nothing changes (catches double encoding)."""
    forms = [ref]
    for _ in range(8):
        nxt = urllib.parse.unquote(forms[-1])
        if nxt == forms[-1]:
            break
        forms.append(nxt)
    return forms


def _lexical_problem(form: str, prefix: str) -> str | None:
    """Why a reference text is refused before touching the file system (None when it is a plain relative path)."""
    if "\x00" in form:
        return "holds a NUL byte"
    if _SCHEME.match(form) or form.startswith(("/", "\\")):
        return "is absolute or a URL (only paths relative to the file's folder are allowed)"
    joined = posixpath.normpath(posixpath.join(prefix or ".", form.replace("\\", "/")))
    if joined == ".." or joined.startswith("../"):
        return "leaves the file's folder with '..'"
    return None


def check_reference(ref: Any, *, owner: str | os.PathLike, root: str | os.PathLike | None = None,
                    base: str | os.PathLike | None = None, what: str = "reference", uri: bool = False,
                    missing_ok: bool = False, limits: InputLimits | None = None) -> Path | None:
    """The file that ``ref`` (text found inside ``owner``) names, after every check of the module docstring.

    ``base`` is the folder ``ref`` is relative to (default: ``owner``'s folder); ``root`` the folder it must
    stay inside (default: ``base``). ``uri``: ``ref`` is a URI (glTF), used percent-decoded; otherwise it is
    used as written (OBJ/MTL), but its percent-decoded forms are checked as well, since some tools decode.
    Returns None for a missing file when ``missing_ok`` (a lost texture is not a hostile one). The target is
    never opened: only ``os.stat`` is used.
    """
    limits = active_limits(limits)
    owner_path = Path(owner)
    base_dir = Path(base) if base is not None else owner_path.parent
    root_dir = Path(root) if root is not None else base_dir
    if not isinstance(ref, str) or not ref.strip():
        raise InputError(f"{owner_path}: {what} {ref!r} is not a file name")
    try:
        prefix = posixpath.normpath(base_dir.resolve().relative_to(root_dir.resolve()).as_posix())
    except ValueError:
        raise InputError(f"{owner_path}: {what} {ref!r} is relative to {base_dir}, outside {root_dir}; refused") from None
    prefix = "" if prefix == "." else prefix
    for form in _decodings(ref):
        problem = _lexical_problem(form, prefix)
        if problem:
            shown = repr(ref) if form == ref else f"{ref!r} (decoded: {form!r})"
            raise InputError(f"{owner_path}: {what} {shown} {problem}; refused, nothing was read")
    used = urllib.parse.unquote(ref) if uri else ref
    if "\\" in used and os.sep == "/":
        used = used.replace("\\", "/")  # Windows exporters write backslashes; they are separators here too
    target = base_dir / used
    real, real_root = target.resolve(), root_dir.resolve()
    if not _is_inside(real, real_root):
        raise InputError(
            f"{owner_path}: {what} {ref!r} resolves to {real}, outside the file's folder {root_dir} "
            "(through a symbolic link); refused, nothing was read"
        )
    if not os.path.lexists(target):
        if missing_ok:
            return None
        raise InputError(f"{owner_path}: {what} {ref!r} not found (looked for {target})")
    try:
        st = os.stat(target)
    except OSError as exc:
        raise InputError(f"{owner_path}: {what} {ref!r} is unreadable ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{owner_path}: {what} {ref!r} is {file_kind(st.st_mode)}, not a regular file; refused, nothing was read")
    if st.st_size > limits.max_file_bytes:
        raise InputError(
            f"{owner_path}: {what} {ref!r} is {_size(st.st_size, limits.max_file_bytes)}, over the {_mb(limits.max_file_bytes)} input limit; {RAISE_HINT}"
        )
    return target


def read_reference(ref: Any, *, owner: str | os.PathLike, root: str | os.PathLike | None = None,
                   base: str | os.PathLike | None = None, what: str = "reference", uri: bool = False,
                   limits: InputLimits | None = None) -> bytes:
    """The bytes of the file ``ref`` names (see :func:`check_reference`); it must exist."""
    target = check_reference(ref, owner=owner, root=root, base=base, what=what, uri=uri, limits=limits)
    assert target is not None
    root_dir = root if root is not None else (base if base is not None else Path(owner).parent)
    return read_bytes(target, f"{what} {ref!r} of {Path(owner).name}", root=root_dir, limits=limits)


def decode_data_uri(uri: str, name: str, what: str = "data URI", limits: InputLimits | None = None) -> bytes:
    """The payload of a base64 ``data:`` URI, refused when it would exceed the file-size limit."""
    limits = active_limits(limits)
    head, sep, payload = uri.partition(",")
    if not sep or not head.endswith(";base64"):
        raise InputError(f"{name}: {what} is not a base64 data URI (only 'data:…;base64,…' is supported)")
    size = len(payload) * 3 // 4
    if size > limits.max_file_bytes:
        raise InputError(f"{name}: {what} holds {_mb(size)}, over the {_mb(limits.max_file_bytes)} input limit; {RAISE_HINT}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{name}: {what} is not valid base64 ({exc})") from None


# --------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(data: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text (brackets inside strings ignored), without parsing it."""
    import numpy as np

    stripped = _JSON_STRING.sub(b"", data)
    table = np.zeros(256, dtype=np.int8)
    table[ord("[")] = table[ord("{")] = 1
    table[ord("]")] = table[ord("}")] = -1
    steps = table[np.frombuffer(stripped, dtype=np.uint8)]
    steps = steps[steps != 0]
    return int(np.cumsum(steps, dtype=np.int64).max()) if steps.size else 0


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_json(data: bytes | str, name: str, what: str = "JSON", *, limits: InputLimits | None = None,
               max_bytes: int | None = None) -> Any:
    """Parse untrusted JSON: size and nesting depth are checked first; NaN/Infinity are refused."""
    limits = active_limits(limits)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    cap = limits.max_json_bytes if max_bytes is None else max_bytes
    if len(raw) > cap:
        raise InputError(f"{name}: {what} is {_size(len(raw), cap)}, over the {_mb(cap)} JSON limit; {RAISE_HINT}")
    depth = json_depth(raw)
    if depth > limits.max_json_depth:
        raise InputError(f"{name}: {what} nests {depth} levels deep, over the limit of {limits.max_json_depth}; refused")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise InputError(f"{name}: invalid JSON, unreadable {what} ({exc})") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", *, root: str | os.PathLike | None = None,
              limits: InputLimits | None = None, max_bytes: int | None = None) -> Any:
    """A JSON file, through :func:`read_bytes` and :func:`parse_json`."""
    limits = active_limits(limits)
    cap = limits.max_json_bytes if max_bytes is None else max_bytes
    return parse_json(read_bytes(path, what, root=root, limits=limits, max_bytes=cap, limit_name="JSON"), str(path), what,
                      limits=limits, max_bytes=cap)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def read_image_rgba(path: str | os.PathLike, what: str = "image", *, root: str | os.PathLike | None = None,
                    limits: InputLimits | None = None):
    """An image file as an (H, W, 4) uint8 array. The pixel count is checked from the header before any
    pixel is decoded; Pillow's own guard is set to the same limit, with its warning turned into an error."""
    with open_checked(path, what, root=root, limits=limits) as fh:
        return _decode_image_rgba(fh, str(path), what, active_limits(limits))


def decode_image_rgba(data: bytes, name: str, what: str = "image", *, limits: InputLimits | None = None):
    """Encoded image bytes (PNG, JPEG … from inside another file, e.g. a GLB's texture) as (H, W, 4) uint8,
    with the same checks as :func:`read_image_rgba`; ``name`` and ``what`` say where the bytes came from."""
    import io

    limits = active_limits(limits)
    if len(data) > limits.max_file_bytes:
        raise InputError(f"{name}: {what} is {_size(len(data), limits.max_file_bytes)}, over the "
                         f"{_mb(limits.max_file_bytes)} input limit; {RAISE_HINT}")
    return _decode_image_rgba(io.BytesIO(data), name, what, limits)


def _decode_image_rgba(fh, name: str, what: str, limits: InputLimits):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels  # deliberately ours (Pillow errors at 2×, warns at 1×)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(fh) as img:
                width, height = img.size
                if width * height > limits.max_image_pixels:
                    raise InputError(
                        f"{name}: {what} declares {width}×{height} = {width * height:,} pixels, over the limit of "
                        f"{limits.max_image_pixels:,}; {RAISE_HINT}"
                    )
                img.load()
                return np.asarray(img.convert("RGBA"), dtype=np.uint8)
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"{name}: {what} is too large to decode safely ({exc}); {RAISE_HINT}") from None
        except UnidentifiedImageError:
            raise InputError(f"{name}: not a readable {what} (not an image format Pillow recognises)") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InputError(f"{name}: not a readable {what} ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------------
# NumPy archives
# --------------------------------------------------------------------------------------------------
def _npy_header(member: BinaryIO):
    import numpy as np

    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    from numpy.lib import _format_impl

    return _format_impl._read_array_header(member, version)


def npz_headers(path: str | os.PathLike, what: str = ".npz file", *, limits: InputLimits | None = None,
                max_bytes: int | None = None) -> dict[str, tuple[tuple[int, ...], Any]]:
    """``{key: (shape, dtype)}`` of every array in a ``.npz``, read from the ``.npy`` headers only (object
    arrays and arrays declaring more than ``max_bytes`` together are refused, as by :func:`load_npz`)."""
    return _npz(path, what, None, limits, load=False, max_bytes=max_bytes)  # type: ignore[return-value]


def load_npz(path: str | os.PathLike, keys: set[str] | None = None, what: str = ".npz file", *,
             limits: InputLimits | None = None, max_bytes: int | None = None) -> dict[str, Any]:
    """The arrays ``keys`` (all when None) of a ``.npz``: every header is checked before any data is read —
    object arrays (pickles) are refused and the arrays may not declare more than ``max_bytes`` together
    (default: the file limit) — then the arrays are read with ``allow_pickle=False``."""
    return _npz(path, what, keys, limits, load=True, max_bytes=max_bytes)


def _npz(path, what, keys, limits, load: bool, max_bytes: int | None = None):
    import numpy as np

    limits = active_limits(limits)
    cap = limits.max_file_bytes if max_bytes is None else max_bytes
    with open_checked(path, what, limits=limits) as fh:
        try:
            with zipfile.ZipFile(fh) as archive:
                members = [m for m in archive.namelist() if m.endswith(".npy")]
                if len(archive.namelist()) > 10_000:
                    raise InputError(f"{path}: {what} holds {len(archive.namelist()):,} members; refused")
                headers: dict[str, tuple[tuple[int, ...], Any]] = {}
                total = 0
                for member in members:
                    key = member[:-4]
                    if keys is not None and key not in keys:
                        continue
                    with archive.open(member) as stream:
                        shape, _, dtype = _npy_header(stream)
                    if dtype.hasobject:
                        raise InputError(
                            f"{path}: array {key!r} of the {what} holds pickled Python objects; refused "
                            "(only plain numeric arrays are read, never pickles)"
                        )
                    nbytes = math.prod(shape) * dtype.itemsize
                    total += nbytes
                    if nbytes > cap or total > cap:
                        raise InputError(
                            f"{path}: array {key!r} of the {what} declares shape {tuple(shape)} ({_mb(nbytes)}), "
                            f"over the {_mb(cap)} limit{'' if nbytes > cap else ' for all arrays together'}; {RAISE_HINT}"
                        )
                    headers[key] = (tuple(shape), dtype)
                if not load:
                    return headers
                arrays = {}
                for key in headers:
                    with archive.open(key + ".npy") as stream:
                        arrays[key] = np.lib.format.read_array(stream, allow_pickle=False)
                return arrays
        except InputError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, KeyError, TypeError,
                NotImplementedError, RuntimeError) as exc:
            raise InputError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None
