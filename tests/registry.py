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
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import yaml

from tests.debian import LOCAL_OPENER as _opener
from tests.debian import DebianProgram, LocalServer, proxy_free_env, running, serving

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


# -- the registry --------------------------------------------------------------

class RealRegistry(LocalServer):
    """A real ``docker-registry`` on 127.0.0.1, filesystem storage in a
    temporary directory, no authentication.

    ``start()`` launches it and waits until ``GET /v2/`` answers 200;
    ``stop()`` ends the process but keeps its port and storage, so a later
    ``start()`` brings the same URL and images back; ``close()`` stops it
    for good and removes its directory. All synchronous, so a fixture of any
    scope can use them. The lifecycle is ``LocalServer``'s (tests/debian.py).
    """

    NAME = "docker-registry"
    PROGRAM = PROGRAM
    ERROR = RegistryError
    READY_PATH = "/v2/"
    WORKDIR_PREFIX = "registry-"
    CONFIG_FILE = "config.yml"
    LOG_FILE = "registry.log"
    NO_LOG = "(no registry log)\n"

    def __init__(self, *, workdir: str | os.PathLike[str] | None = None, log_level: str = "info",
                 startup_timeout: float = 20.0, binary_path: str | None = None) -> None:
        super().__init__(workdir=workdir, startup_timeout=startup_timeout, binary_path=binary_path)
        self.log_level = log_level

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

    def _command(self, path: str) -> list[str]:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return [path, "serve", str(self.config_path)]

    def _env(self) -> dict[str, str]:
        # REGISTRY_* variables override the file; proxies must not be used.
        return {k: v for k, v in proxy_free_env().items() if not k.upper().startswith("REGISTRY_")}

    def _where(self) -> str:
        return self.url if self.port is not None else "not started"

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
    yield from serving(RealRegistry())


@pytest.fixture
def real_registry(registry_server: RealRegistry) -> Iterator[RealRegistry]:
    """A real ``docker-registry`` on 127.0.0.1 (plain HTTP, no auth),
    running when the test starts (restarted if an earlier test stopped it).
    Push with ``real_registry.push(unique_repository(), tag)``. Its log is
    printed at teardown, which pytest shows when the test failed."""
    yield from running(registry_server)
