"""A loopback HTTP server that speaks enough of the Hugging Face Hub's API for ``snapshot_download``.

It serves one or more tiny repositories (``{repo_id: {path: bytes}}``) at one commit each: repository info,
the recursive tree listing (with git blob ids and, for files marked large, LFS sha256 like the Hub), and
``/resolve/`` downloads with HEAD, ETag, ``X-Repo-Commit`` and byte ranges (resumed downloads). Faults for
tests: ``drop_after[path] = [n, …]`` closes the connection after n bytes of that file, one list item per GET; ``corrupt[path] =
bytes`` serves other bytes than the tree lists. ``static`` serves plain files at fixed URL paths (the model manager's
URL-pinned models), with the same HEAD, byte ranges and faults (keyed by the URL path).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], lfs_min_bytes: int = 1024, static: dict[str, bytes] | None = None):
        self.repos = repos
        self.static = static or {}
        self.commits = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}
        self.lfs_min_bytes = lfs_min_bytes
        self.drop_after: dict[str, list[int]] = {}
        self.corrupt: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -------------------------------------------------------------------------------------------------
    def _entry(self, path: str, data: bytes) -> dict:
        entry = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
        if len(data) >= self.lfs_min_bytes:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _json(self, handler, payload, status=200):
        body = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _handle(self, handler, head: bool) -> None:
        url = urlparse(handler.path)
        path = unquote(url.path)
        self.requests.append((handler.command, path, handler.headers.get("Range")))
        if path in self.static:
            return self._file(handler, head, "static", path, self.static[path])
        for repo, files in self.repos.items():
            commit = self.commits[repo]
            m = re.fullmatch(rf"/api/models/{re.escape(repo)}/revision/(.+)", path)
            if m:
                if m.group(1) not in ("main", commit):
                    return self._json(handler, {"error": "Revision Not Found"}, 404)
                return self._json(handler, {"id": repo, "sha": commit,
                                            "siblings": [{"rfilename": p} for p in sorted(files)]})
            m = re.fullmatch(rf"/api/models/{re.escape(repo)}/tree/([^/]+)(/.*)?", path)
            if m:
                return self._json(handler, [self._entry(p, d) for p, d in sorted(files.items())])
            m = re.fullmatch(rf"/{re.escape(repo)}/resolve/([^/]+)/(.+)", path)
            if m:
                name = m.group(2)
                if m.group(1) not in ("main", commit) or name not in files:
                    handler.send_response(404)
                    handler.send_header("Content-Length", "0")
                    handler.send_header("X-Error-Code", "EntryNotFound")
                    handler.end_headers()
                    return
                return self._file(handler, head, commit, name, files[name])
        handler.send_response(404)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _file(self, handler, head: bool, commit: str, name: str, data: bytes) -> None:
        etag = self._entry(name, data).get("lfs", {}).get("oid") or git_blob_id(data)
        served = self.corrupt.get(name, data)
        start = 0
        rng = handler.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            start = int(m.group(1)) if m else 0
        body = served[start:]
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", commit)
        handler.send_header("ETag", f'"{etag}"')
        handler.send_header("Content-Length", str(len(body)))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(served) - 1}/{len(served)}")
        handler.send_header("Accept-Ranges", "bytes")
        handler.end_headers()
        if head:
            return
        limits = self.drop_after.get(name)
        limit = limits.pop(0) if limits else None
        if limit is not None and limit < len(body):
            handler.wfile.write(body[:limit])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        handler.wfile.write(body)
