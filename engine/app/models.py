"""Model manager: download the real models by repository id, pinned and verified — only when asked.

The engine never downloads while it runs; this is the one place that does, and only when a person asks for it
(``python -m engine models download KEY``, or the Blender preferences' *Download* buttons, which run the same
command). The repository is resolved and listed through ``huggingface_hub`` (the Hub's own client: its API,
``HF_ENDPOINT`` for mirrors and tests, the user's token); files are then fetched one by one from the Hub's
``resolve`` URLs into ``<file>.part`` and **resumed with a byte range** when a previous attempt was cut off
(huggingface_hub 2.x writes every attempt to a fresh temporary file, so a multi-GB UNet interrupted at 90 %
would start again from zero), so progress is exact and an interrupted download continues where it stopped:

1. the revision is resolved once to a commit and recorded in ``<models>/models.json``; later downloads of
   the same model use that commit (pinned) unless ``--update`` asks for the newest;
2. the repository's tree listing gives each file's size and hash (git blob SHA-1, and SHA-256 for LFS
   files); only the files the engine needs are fetched (``ModelSpec.files``: the safetensors weights and
   configs of a diffusers folder, not the duplicate ``.bin``/fp16 copies);
3. every file is verified against the listing after download; a mismatch deletes it and fails with the file's
   name (a corrupt mirror or a truncated file never reaches the engine).

A few models are not on the Hub from their authors: LPIPS-Alex (``lpips-alex``, the perceptual loss of the
paper's recipe) is torchvision's ImageNet AlexNet from ``download.pytorch.org`` plus the LPIPS authors'
linear layers from their repository at a fixed commit. Such a model lists its files as URLs with a pinned
SHA-256 (:class:`UrlFile`); each is sized by a HEAD request, fetched and resumed the same way, and checked
against its pin (``endpoint`` replaces the hosts, for a mirror or a test server).

PanoHead's generator is not on the Hub under a licence that allows redistribution: the user points the
preferences at their ``.pkl`` (read by the restricted unpickler), and the licence text is shown there.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, EngineError
from ..io.atomic import write_json
from ..io.events import emit
from ..pack import sha256_file

MANIFEST = "models.json"


@dataclass(frozen=True)
class UrlFile:
    """One file of a model that is downloaded from a plain URL: its name in the model's folder, its pin."""

    name: str
    url: str
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    key: str
    repo_id: str  # the Hub repository; for URL models, a label of where the files come from
    files: tuple[str, ...]  # glob patterns of what the engine reads
    role: str  # which preference / engine option the folder fills
    licence: str
    attribution: str
    urls: tuple[UrlFile, ...] = ()  # set for models fetched from plain URLs instead of the Hub
    revision: str = ""  # URL models: the pinned revision recorded in models.json


_SD15_FILES = ("model_index.json", "scheduler/*.json", "tokenizer/*", "text_encoder/config.json",
               "text_encoder/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
               "vae/config.json", "vae/diffusion_pytorch_model.safetensors")
_LPIPS_COMMIT = "c33f89e9f46522a584cf41d8880eb0afa982708b"  # richzhang/PerceptualSimilarity: last change of v0.1 alex.pth


MODEL_SPECS: dict[str, ModelSpec] = {
    s.key: s
    for s in (
        ModelSpec("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", _SD15_FILES,
                  "diffusion", "CreativeML OpenRAIL-M",
                  "Stable Diffusion v1.5 by Runway / CompVis / Stability AI"),
        ModelSpec("realistic-vision-v5.1", "SG161222/Realistic_Vision_V5.1_noVAE", _SD15_FILES,
                  "diffusion", "CreativeML OpenRAIL-M",
                  "Realistic Vision V5.1 by SG161222, a Stable Diffusion 1.5 fine-tune: the diffusion model of "
                  "the stylization paper"),
        ModelSpec("controlnet-canny", "lllyasviel/sd-controlnet-canny",
                  ("config.json", "diffusion_pytorch_model.safetensors"), "edge_controlnet", "OpenRAIL",
                  "ControlNet (Canny) by Lvmin Zhang and Maneesh Agrawala"),
        ModelSpec("controlnet-depth", "lllyasviel/sd-controlnet-depth",
                  ("config.json", "diffusion_pytorch_model.safetensors"), "depth_controlnet", "OpenRAIL",
                  "ControlNet (depth) by Lvmin Zhang and Maneesh Agrawala"),
        ModelSpec("lpips-alex", "download.pytorch.org (AlexNet) + richzhang/PerceptualSimilarity",
                  (), "lpips", "BSD-3-Clause (torchvision AlexNet) + BSD-2-Clause (LPIPS)",
                  "LPIPS by Richard Zhang, Phillip Isola, Alexei A. Efros, Eli Shechtman, Oliver Wang (CVPR 2018); "
                  "AlexNet ImageNet weights by the PyTorch team",
                  urls=(UrlFile("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                                "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02"),
                        UrlFile("alex.pth", "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/"
                                            f"{_LPIPS_COMMIT}/lpips/weights/v0.1/alex.pth",
                                "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0")),
                  revision=_LPIPS_COMMIT),
        ModelSpec("depth-anything-v2-base", "depth-anything/Depth-Anything-V2-Base-hf",
                  ("config.json", "model.safetensors", "preprocessor_config.json"), "depth_model",
                  "CC BY-NC 4.0 (non-commercial use only)",
                  "Depth Anything V2 (ViT-B) by Lihe Yang et al. (NeurIPS 2024): the official code's grid depth network"),
    )
}
# What `models download all` fetches: the models every real run needs. `paper` adds what the paper's recipe uses.
DEFAULT_KEYS = ("sd15", "controlnet-canny", "controlnet-depth")
PAPER_KEYS = ("realistic-vision-v5.1", "controlnet-canny", "controlnet-depth", "lpips-alex", "depth-anything-v2-base")


class DownloadError(EngineError):
    """A download failed or a file did not verify (the message names the repository and file)."""


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def wanted(path: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def verify_file(path: Path, entry: dict[str, Any]) -> None:
    """Raise DownloadError unless ``path`` has the size and hash the tree listing gave."""
    if not path.is_file() or path.stat().st_size != entry["size"]:
        size = path.stat().st_size if path.is_file() else "missing"
        raise DownloadError(f"{path}: {size} bytes, the repository lists {entry['size']}")
    if entry.get("sha256"):
        got, want, kind = sha256_file(path), entry["sha256"], "SHA-256"
    else:
        got, want, kind = git_blob_sha1(path), entry["blob_id"], "git blob SHA-1"
    if got != want:
        raise DownloadError(f"{path}: {kind} {got[:12]}… does not match the repository's {want[:12]}… "
                            "(corrupt download or mirror); the file was removed, download again")


CHUNK_BYTES = 1 << 20


def fetch_resumable(url: str, target: Path, size: int, headers: dict[str, str],
                    on_bytes: Callable[[int], None] | None = None, timeout: float = 60.0) -> None:
    """Download ``url`` to ``target`` through ``target.part``, continuing a partial file with a Range request;
    the part is renamed into place only once it has ``size`` bytes. Raises DownloadError (keeping the part)."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.is_file() else 0
    if start > size:
        part.unlink()
        start = 0
    request_headers = dict(headers)
    if 0 < start < size:
        request_headers["Range"] = f"bytes={start}-"
    try:
        if start < size:
            with urllib.request.urlopen(urllib.request.Request(url, headers=request_headers), timeout=timeout) as response:
                if start and response.status != 206:  # the server ignored the range: start over
                    start = 0
                with open(part, "ab" if start else "wb") as fh:
                    for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                        fh.write(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DownloadError(f"{target.name} was interrupted at {part.stat().st_size if part.is_file() else 0} of "
                            f"{size} bytes ({type(exc).__name__}: {exc}); run the download again to resume it") from exc
    got = part.stat().st_size if part.is_file() else 0
    if got != size:
        raise DownloadError(f"{target.name} was interrupted at {got} of {size} bytes; run the download again to resume it")
    os.replace(part, target)


def _mirrored(url: str, endpoint: str | None) -> str:
    """``url`` on ``endpoint``'s scheme and host (same path), or unchanged without an endpoint."""
    if not endpoint:
        return url
    base = urllib.parse.urlsplit(endpoint.rstrip("/"))
    return urllib.parse.urlunsplit((base.scheme, base.netloc, base.path + urllib.parse.urlsplit(url).path, "", ""))


def remote_size(url: str, timeout: float = 60.0) -> int:
    """The size a server announces for ``url`` (HEAD request); DownloadError when it does not say."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            length = response.headers.get("Content-Length")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DownloadError(f"{url}: cannot reach it ({type(exc).__name__}: {exc})") from exc
    if length is None or not length.isdigit():
        raise DownloadError(f"{url}: the server does not give the file's size")
    return int(length)


def _download_urls(spec: ModelSpec, root: Path, endpoint: str | None, on_event: Callable[..., None]) -> Path:
    """Fetch a URL model's files into ``root/key``, each checked against its pinned SHA-256 (see the docstring)."""
    folder = root / spec.key
    pending = [f for f in spec.urls if not ((folder / f.name).is_file() and sha256_file(folder / f.name) == f.sha256)]
    sizes = {f.name: remote_size(_mirrored(f.url, endpoint)) for f in pending}
    total = sum(sizes.values())
    on_event("stage", stage="download", message=f"{spec.repo_id}: {len(spec.urls)} files, {total / 2**20:.1f} MiB to fetch")
    started = time.perf_counter()
    done_bytes = 0
    for index, item in enumerate(spec.urls, start=1):
        target = folder / item.name
        if item.name in sizes:
            fetch_resumable(_mirrored(item.url, endpoint), target, sizes[item.name], {})
            got = sha256_file(target)
            if got != item.sha256:
                target.unlink(missing_ok=True)
                raise DownloadError(f"{target}: SHA-256 {got[:12]}… does not match the pinned {item.sha256[:12]}… "
                                    f"({item.url}: corrupt download or mirror); the file was removed, download again")
            done_bytes += sizes[item.name]
        on_event("progress", stage="download", step=index, total=len(spec.urls), file=item.name,
                 fraction=done_bytes / max(total, 1) if total else 1.0, bytes=done_bytes, total_bytes=total)
    manifest = read_manifest(root)
    manifest[spec.key] = {"repo_id": spec.repo_id, "revision": spec.revision, "role": spec.role, "licence": spec.licence,
                          "attribution": spec.attribution, "folder": spec.key,
                          "files": {f.name: f.sha256 for f in spec.urls}, "urls": {f.name: f.url for f in spec.urls},
                          "downloaded": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(root / MANIFEST, manifest)
    on_event("done", result=str(folder), role=spec.role, revision=spec.revision,
             seconds=round(time.perf_counter() - started, 2))
    return folder


def download_model(
    key: str,
    root: str | os.PathLike,
    *,
    revision: str | None = None,
    update: bool = False,
    repo_id: str | None = None,
    endpoint: str | None = None,
    on_event: Callable[..., None] = emit,
) -> Path:
    """Download model ``key`` into ``root/key`` and verify it; returns the folder (see the module docstring)."""
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers

    if key not in MODEL_SPECS:
        raise ConfigError(f"unknown model {key!r}; choose one of {', '.join(MODEL_SPECS)}")
    spec = MODEL_SPECS[key]
    repo = repo_id or spec.repo_id
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} is a file; give the models folder")
    if spec.urls:
        if repo_id or revision or update:
            raise ConfigError(f"{key} is pinned to fixed files by their SHA-256: --repo, --revision and --update do not apply")
        return _download_urls(spec, root, endpoint, on_event)
    folder = root / key
    manifest = read_manifest(root)
    recorded = manifest.get(key, {})
    api = HfApi(endpoint=endpoint)
    headers = build_hf_headers(library_name="head-stylizer")
    try:
        if revision is None and not update and recorded.get("repo_id") == repo and recorded.get("revision"):
            commit = recorded["revision"]  # pinned by the first download
        else:
            commit = api.repo_info(repo, revision=revision or "main").sha
        listing = [f for f in api.list_repo_tree(repo, revision=commit, recursive=True) if hasattr(f, "blob_id")]
    except (HfHubHTTPError, OSError) as exc:
        raise DownloadError(f"{repo}: cannot list the repository ({exc})") from exc
    except Exception as exc:  # httpx connection errors surface under several names
        raise DownloadError(f"{repo}: cannot reach the hub ({type(exc).__name__}: {exc})") from exc
    entries = [{"path": f.path, "size": int(f.size), "blob_id": f.blob_id,
                "sha256": f.lfs.sha256 if f.lfs is not None else None}
               for f in listing if wanted(f.path, spec.files)]
    if not entries:
        raise DownloadError(f"{repo}@{commit[:12]}: none of the files the engine needs ({', '.join(spec.files)})")
    total = sum(e["size"] for e in entries)
    on_event("stage", stage="download", message=f"{repo}@{commit[:12]}: {len(entries)} files, {total / 2**20:.1f} MiB")
    done_bytes = 0
    started = time.perf_counter()
    for index, entry in enumerate(entries, start=1):
        target = folder / entry["path"]
        fresh = not (target.is_file() and target.stat().st_size == entry["size"])
        if fresh:
            url = hf_hub_url(repo, entry["path"], revision=commit, endpoint=endpoint)
            try:
                fetch_resumable(url, target, entry["size"], headers)
            except DownloadError as exc:
                raise DownloadError(f"{repo}: {exc}") from exc
        try:
            verify_file(target, entry)
        except DownloadError:
            target.unlink(missing_ok=True)
            raise
        done_bytes += entry["size"]
        on_event("progress", stage="download", step=index, total=len(entries), file=entry["path"],
                 fraction=done_bytes / max(total, 1), bytes=done_bytes, total_bytes=total)
    manifest[key] = {"repo_id": repo, "revision": commit, "role": spec.role, "licence": spec.licence,
                     "attribution": spec.attribution, "folder": key,
                     "files": {e["path"]: e["sha256"] or e["blob_id"] for e in entries},
                     "downloaded": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(root / MANIFEST, manifest)
    on_event("done", result=str(folder), role=spec.role, revision=commit, seconds=round(time.perf_counter() - started, 2))
    return folder
