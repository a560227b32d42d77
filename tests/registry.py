"""A real OCI registry (Debian's ``docker-registry``, distribution v2.8), run
as a subprocess on 127.0.0.1, and a way to push an image to it over its
HTTP API (no Docker daemon): for end-to-end tests of the image check
(``artifacts.image``, ``bot.changes.artifacts``).

    with RealRegistry() as registry:          # http://127.0.0.1:<port>, no auth
        digest = push_image(registry.url, "acme/api", "1.4.2")
        registry.image("acme/api", "1.4.2")   # "127.0.0.1:<port>/acme/api:1.4.2"
        registry.stop()                       # now unreachable (connection refused)
        registry.start()                      # back, same URL, same images

Or the fixtures: ``registry_server`` (one per test module) and
``real_registry`` (that server, running when the test starts: restarted if
an earlier test stopped it; its log printed at teardown, which pytest shows
for a failed test). A module's tests share the server, so each pushes
repositories of its own (``unique_repository()``). Import them into a test
module or conftest::

    from tests.registry import real_registry, registry_server  # noqa: F401

The registry runs with a configuration file of its own (storage in a
temporary directory, ``http.addr`` 127.0.0.1 on a free port, no auth), so a
system ``docker-registry`` service the Debian package may have started on
port 5000 is never spoken to. ``REGISTRY_*`` variables (which override the
file) and proxy variables are kept from it. It is ready in well under a
second. Its log (stderr) goes to a file in its directory, attached to every
error this module raises and printed when a ``with`` block fails.

The binary is Debian's ``docker-registry``, which .ci/run installs
(``$DOCKER_REGISTRY_BIN`` overrides it). If it is missing,
``ensure_installed()`` tries ``apt-get install`` once and otherwise FAILS
the test, never skips: an image check that silently stops being tested is
worse than a red build.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest
import yaml

from tests.debian import DebianProgram

PACKAGE = "docker-registry"
DEFAULT_BINARY = "/usr/bin/docker-registry"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

MISSING_MESSAGE = (
    "The real OCI registry is needed by the image-check end-to-end tests but "
    f"was not found (looked for $DOCKER_REGISTRY_BIN, {DEFAULT_BINARY}, and "
    f"docker-registry / registry on PATH). .ci/run installs it; locally run "
    f"`apt-get install -y {PACKAGE}` (Debian/Ubuntu, distribution v2.8) or point "
    "DOCKER_REGISTRY_BIN at a distribution registry binary (v2.x, `registry serve`)."
)

_repositories = itertools.count(1)


class RegistryError(RuntimeError):
    """The registry failed to start or refused a push; carries its log
    where there is one."""


def unique_repository(prefix: str = "acme/app") -> str:
    """A repository name no other test of this process uses (the fixtures
    are shared by a module's tests)."""
    return f"{prefix}-{os.getpid()}-{next(_repositories)}"


# -- the binary ----------------------------------------------------------------

PROGRAM = DebianProgram(PACKAGE, DEFAULT_BINARY, "DOCKER_REGISTRY_BIN", ("docker-registry", "registry"),
                        MISSING_MESSAGE)
binary = PROGRAM.binary
ensure_installed = PROGRAM.ensure_installed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Straight to 127.0.0.1, whatever proxy the environment names.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- the registry --------------------------------------------------------------

class RealRegistry:
    """A real ``docker-registry`` on 127.0.0.1, filesystem storage in a
    temporary directory, no authentication.

    ``start()`` launches it and waits until ``GET /v2/`` answers 200;
    ``stop()`` ends the process but keeps its port and storage, so a later
    ``start()`` brings the same URL and images back; ``close()`` stops it
    for good and removes its directory. All synchronous, so a fixture of any
    scope can use them.
    """

    def __init__(self, *, workdir: str | os.PathLike[str] | None = None, log_level: str = "info",
                 startup_timeout: float = 20.0, binary_path: str | None = None) -> None:
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self._binary_path = binary_path
        self._workdir_given = workdir is not None
        self.workdir: Path | None = Path(workdir) if workdir is not None else None
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: the registry part of an image reference."""
        assert self.port is not None, "not started"
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}"

    def image(self, name: str, tag: str) -> str:
        """The reference of ``name:tag`` in this registry."""
        return f"{self.host}/{name}:{tag}"

    # -- configuration --

    def config(self) -> dict[str, Any]:
        """The registry configuration (written out as YAML)."""
        assert self.workdir is not None and self.port is not None
        return {
            "version": 0.1,
            "log": {"level": self.log_level, "formatter": "text",
                    "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")},
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "slipway-tests"},
        }

    @property
    def config_path(self) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir / "config.yml"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir / "registry.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """Everything the registry has logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except (AssertionError, OSError):
            return "(no registry log)\n"

    def print_log(self, tail: int = 20_000) -> None:
        text = self.log()
        if len(text) > tail:
            text = "…" + text[-tail:]
        url = self.url if self.port is not None else "not started"
        sys.stderr.write(f"--- docker-registry log ({url}) ---\n{text}--- end of docker-registry log ---\n")

    def _error(self, message: str) -> RegistryError:
        url = self.url if self.port is not None else "not started"
        return RegistryError(f"{message}\n--- docker-registry log ({url}) ---\n"
                             f"{self.log()[-20_000:]}--- end of docker-registry log ---")

    # -- lifecycle --

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not isinstance(exc, RegistryError):
            self.print_log()
        self.close()

    def start(self) -> Self:
        """Launch the registry (again, after ``stop()``: same port and
        storage) and wait until it answers."""
        if self.running:
            return self
        path = self._binary_path or ensure_installed()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="registry-"))
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        restarting = self.port is not None
        # A port is picked, released, then bound by the registry: another
        # process can take it in between, so a bind failure gets a new one
        # (not on a restart: the URL must stay the same).
        for attempt in range(1 if restarting else 3):
            try:
                self._launch(path)
                return self
            except BaseException as exc:
                retry = (not restarting and isinstance(exc, RegistryError) and attempt < 2
                         and "address already in use" in self.log())
                self._terminate()
                if not retry:
                    raise
                self.port = None
        raise AssertionError("unreachable")

    def _launch(self, path: str) -> None:
        if self.port is None:
            self.port = _free_port()
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        args = [path, "serve", str(self.config_path)]
        # REGISTRY_* variables override the file; proxies must not be used.
        env = {k: v for k, v in os.environ.items()
               if not k.upper().startswith("REGISTRY_")
               and k.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}}
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(args)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             env=env, cwd=self.workdir, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll (it is an external process) until ``GET /v2/`` answers 200."""
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        while True:
            if self._process.poll() is not None:
                raise self._error(f"docker-registry exited with {self._process.returncode} before it was ready")
            try:
                with _opener.open(f"{self.url}/v2/", timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"/v2/: HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"/v2/: HTTP {exc.code}"
            except (OSError, urllib.error.URLError) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise self._error(f"docker-registry not ready after {self.startup_timeout}s ({last})")
            time.sleep(0.05)

    def _terminate(self) -> None:
        """SIGTERM, SIGKILL after 10s; always reaped."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()

    def stop(self) -> None:
        """End the process; its URL then refuses connections. ``start()``
        brings it back on the same port with the same images."""
        self._terminate()

    def close(self) -> None:
        """Stop for good and remove the temporary directory."""
        self._terminate()
        if not self._workdir_given and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- pushing --

    def push(self, name: str, tag: str) -> str:
        """Push a minimal image as ``name:tag``; its manifest digest. A
        failure raises RegistryError with the registry's log."""
        try:
            return push_image(self.url, name, tag)
        except RegistryError as exc:
            raise self._error(str(exc)) from None


# -- pushing over the HTTP API -------------------------------------------------

def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_blobs(name: str, tag: str) -> tuple[bytes, bytes, bytes]:
    """A minimal valid OCI image: (config, layer, manifest), the layer a
    gzipped tar of one file naming ``name:tag`` (so every tag has its own
    digest), the manifest pointing at both with their digests and sizes."""
    content = f"{name}:{tag}\n".encode()
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("image.txt")
        info.size, info.mode, info.mtime = len(content), 0o644, 0
        tar.addfile(info, io.BytesIO(content))
    uncompressed = tar_bytes.getvalue()
    layer = gzip.compress(uncompressed, mtime=0)
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.version": tag}},
        "rootfs": {"type": "layers", "diff_ids": [_sha256(uncompressed)]},
        "history": [{"created_by": "tests/registry.py"}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": _sha256(layer), "size": len(layer)}],
    }, sort_keys=True).encode()
    return config, layer, manifest


def _request(method: str, url: str, *, data: bytes | None = None,
             headers: dict[str, str] | None = None, expect: Iterable[int]) -> Any:
    """One request; the response (read) when its status is expected, else RegistryError."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        response = _opener.open(request, timeout=10)
    except urllib.error.HTTPError as exc:
        raise RegistryError(f"{method} {url}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
    except (OSError, urllib.error.URLError) as exc:
        raise RegistryError(f"{method} {url}: {exc!r}") from None
    with response:
        response.body = response.read()
    if response.status not in set(expect):
        raise RegistryError(f"{method} {url}: HTTP {response.status} (expected {sorted(expect)}): "
                            f"{response.body[:500]!r}")
    return response


def _upload_blob(base_url: str, name: str, blob: bytes) -> str:
    """POST an upload, then PUT the blob to its location with its digest (monolithic upload)."""
    digest = _sha256(blob)
    started = _request("POST", f"{base_url}/v2/{name}/blobs/uploads/", data=b"",
                       headers={"Content-Length": "0"}, expect=(202,))
    location = started.headers.get("Location")
    if not location:
        raise RegistryError(f"POST {base_url}/v2/{name}/blobs/uploads/: 202 without a Location")
    location = urllib.parse.urljoin(f"{base_url}/v2/{name}/blobs/uploads/", location)
    separator = "&" if urllib.parse.urlsplit(location).query else "?"
    _request("PUT", f"{location}{separator}{urllib.parse.urlencode({'digest': digest})}", data=blob,
             headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(blob))},
             expect=(201,))
    return digest


def push_image(base_url: str, name: str, tag: str) -> str:
    """Push a minimal valid OCI image as ``name:tag`` to the registry at
    ``base_url`` (``http://host:port``, no auth) over its HTTP API: the
    config blob and one layer blob, then the manifest
    (``application/vnd.oci.image.manifest.v1+json``). Returns the
    manifest's digest (checked against the registry's
    ``Docker-Content-Digest``). Synchronous (urllib, no proxy); from async
    code, ``await asyncio.to_thread(push_image, …)`` or ``apush_image``."""
    base_url = base_url.rstrip("/")
    config, layer, manifest = image_blobs(name, tag)
    for blob in (config, layer):
        _upload_blob(base_url, name, blob)
    put = _request("PUT", f"{base_url}/v2/{name}/manifests/{tag}", data=manifest,
                   headers={"Content-Type": OCI_MANIFEST, "Content-Length": str(len(manifest))},
                   expect=(201,))
    digest = _sha256(manifest)
    answered = put.headers.get("Docker-Content-Digest")
    if answered != digest:
        raise RegistryError(f"PUT {base_url}/v2/{name}/manifests/{tag}: the registry says the manifest is "
                            f"{answered}, it is {digest}")
    return digest


async def apush_image(base_url: str, name: str, tag: str) -> str:
    """``push_image`` from async code (in a thread)."""
    return await asyncio.to_thread(push_image, base_url, name, tag)


# -- fixtures ------------------------------------------------------------------

@pytest.fixture(scope="module")
def registry_server() -> Iterator[RealRegistry]:
    """The module's registry (for module-scoped fixtures; a test takes
    ``real_registry``, which is this one running)."""
    server = RealRegistry()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def real_registry(registry_server: RealRegistry) -> Iterator[RealRegistry]:
    """A real ``docker-registry`` on 127.0.0.1 (plain HTTP, no auth),
    running when the test starts (restarted if an earlier test stopped it).
    Push with ``real_registry.push(unique_repository(), tag)``. Its log is
    printed at teardown, which pytest shows when the test failed."""
    registry_server.start()
    yield registry_server
    registry_server.print_log(tail=5_000)
