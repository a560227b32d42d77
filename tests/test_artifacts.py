"""The image check of ``artifacts.image`` (bot.changes.artifacts): image
references taken apart, and ``HEAD /v2/<name>/manifests/<tag>`` against a
real registry (Debian's docker-registry, tests/registry.py) with images the
tests push over its HTTP API, and against a small aiohttp stand-in for what
that registry does not do here (bearer tokens, a 401 challenge, a 503, a
registry that never answers)."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from bot.changes.artifacts import (
    MANIFEST_TYPES,
    ImageRef,
    InvalidImageReference,
    RegistryUnavailable,
    image_exists,
    image_reference,
    parse_image,
)
from bot.changes.model import SourceUnavailable
from bot.config import Artifacts
from tests.registry import (  # noqa: F401 (fixtures)
    RealRegistry,
    apush_image,
    real_registry,
    registry_server,
    unique_repository,
)

# -- references ----------------------------------------------------------------


@pytest.mark.parametrize(("reference", "registry", "repository", "tag", "base_url"), [
    ("registry.example.com/acme/api:1.4.2", "registry.example.com", "acme/api", "1.4.2",
     "https://registry.example.com"),
    ("registry.example.com:8443/acme/api:v2", "registry.example.com:8443", "acme/api", "v2",
     "https://registry.example.com:8443"),
    ("ghcr.io/acme/platform/billing/api:2024.06.01-rc.1", "ghcr.io", "acme/platform/billing/api",
     "2024.06.01-rc.1", "https://ghcr.io"),
    ("registry.example.com/a.b/c_d/e__f/g--h:latest", "registry.example.com", "a.b/c_d/e__f/g--h", "latest",
     "https://registry.example.com"),
    ("127.0.0.1:5000/acme/api:1.0", "127.0.0.1:5000", "acme/api", "1.0", "http://127.0.0.1:5000"),
    ("127.3.4.5:5000/api:1.0", "127.3.4.5:5000", "api", "1.0", "http://127.3.4.5:5000"),
    ("localhost:5000/acme/api:1.0", "localhost:5000", "acme/api", "1.0", "http://localhost:5000"),
    ("localhost/acme/api:1.0", "localhost", "acme/api", "1.0", "http://localhost"),
    ("[::1]:5000/acme/api:1.0", "[::1]:5000", "acme/api", "1.0", "http://[::1]:5000"),
    ("10.0.0.7:5000/acme/api:1.0", "10.0.0.7:5000", "acme/api", "1.0", "https://10.0.0.7:5000"),
    ("128.0.0.1:5000/acme/api:1.0", "128.0.0.1:5000", "acme/api", "1.0", "https://128.0.0.1:5000"),
    ("localhost.example.com/acme/api:1.0", "localhost.example.com", "acme/api", "1.0",
     "https://localhost.example.com"),
])
def test_parse_image(reference: str, registry: str, repository: str, tag: str, base_url: str) -> None:
    ref = parse_image(reference)
    assert ref == ImageRef(registry, repository, tag)
    assert ref.base_url == base_url
    assert ref.manifest_url == f"{base_url}/v2/{repository}/manifests/{tag}"
    assert str(ref) == reference


def test_host_and_port() -> None:
    assert (parse_image("registry.example.com:8443/a:1").host, parse_image("registry.example.com:8443/a:1").port) \
        == ("registry.example.com", 8443)
    assert (parse_image("registry.example.com/a:1").host, parse_image("registry.example.com/a:1").port) \
        == ("registry.example.com", None)
    assert (parse_image("[::1]:5000/a:1").host, parse_image("[::1]:5000/a:1").port) == ("[::1]", 5000)


def test_the_configured_template_with_its_version_filled_in() -> None:
    template = Artifacts(image="registry.example.com/acme/api:{version}").image
    assert template is not None
    ref = parse_image(image_reference(template, "1.4.2"))
    assert ref == ImageRef("registry.example.com", "acme/api", "1.4.2")
    assert parse_image(image_reference("registry.example.com/acme/api:v{version}-alpine", "2.0.0")).tag \
        == "v2.0.0-alpine"


@pytest.mark.parametrize(("reference", "says"), [
    ("registry.example.com/acme/api@sha256:" + "a" * 64, "a digest"),
    ("registry.example.com/acme/api:1.0@sha256:" + "a" * 64, "a digest"),
    ("acme/api:1.0", "Docker Hub short names are not supported"),
    ("api:1.0", "no registry host"),
    ("registry.example.com/acme/api", "no tag"),
    ("registry.example.com:5000/acme/api", "no tag"),
    ("registry.example.com/acme/api:", "no tag"),
    ("registry.example.com/acme/Api:1.0", "name component 'Api'"),
    ("registry.example.com/acme//api:1.0", "name component ''"),
    ("registry.example.com/acme/api-:1.0", "name component 'api-'"),
    ("registry.example.com/acme/api:1.2.3+build.4", "not a valid image tag"),  # semver build metadata
    ("registry.example.com/acme/api:.hidden", "not a valid image tag"),
    ("registry.example.com/acme/api:" + "x" * 129, "not a valid image tag"),
    ("https://registry.example.com/acme/api:1.0", "no scheme"),
    ("registry.example.com:99999/acme/api:1.0", "port 99999 is out of range"),
    ("reg_istry.example.com/acme/api:1.0", "is not a registry host"),
    (" registry.example.com/acme/api:1.0", "whitespace"),
    ("", "empty"),
])
def test_parse_image_refuses(reference: str, says: str) -> None:
    with pytest.raises(InvalidImageReference, match=re.escape(says)) as caught:
        parse_image(reference)
    assert isinstance(caught.value, ValueError)
    assert repr(reference) in str(caught.value)


def test_a_registry_unavailable_is_a_source_unavailable() -> None:
    assert issubclass(RegistryUnavailable, SourceUnavailable)


async def test_an_invalid_reference_is_not_taken_for_an_unavailable_registry() -> None:
    with pytest.raises(InvalidImageReference):
        await image_exists("registry.example.com/acme/api:1.2.3+build", token=None)


# -- against the real registry -------------------------------------------------


async def test_a_pushed_tag_exists(real_registry: RealRegistry) -> None:
    name = unique_repository()
    await apush_image(real_registry.url, name, "1.4.2")
    assert parse_image(real_registry.image(name, "1.4.2")).base_url == real_registry.url  # loopback: HTTP
    assert await image_exists(real_registry.image(name, "1.4.2"), token=None) is True


async def test_a_missing_tag_does_not_exist(real_registry: RealRegistry) -> None:
    name = unique_repository()
    await apush_image(real_registry.url, name, "1.4.2")
    assert await image_exists(real_registry.image(name, "1.4.3"), token=None) is False
    assert await image_exists(real_registry.image(name, "1.4"), token=None) is False


async def test_an_unknown_repository_does_not_exist(real_registry: RealRegistry) -> None:
    assert await image_exists(real_registry.image(unique_repository("nobody/pushed"), "1.0"), token=None) is False


async def test_the_configured_template_against_the_registry(real_registry: RealRegistry) -> None:
    name = unique_repository("acme/platform/api")
    template = Artifacts(image=f"{real_registry.host}/{name}:v{{version}}").image
    assert template is not None
    await apush_image(real_registry.url, name, "v2.0.0")
    assert await image_exists(image_reference(template, "2.0.0"), token=None) is True
    assert await image_exists(image_reference(template, "2.0.1"), token=None) is False


async def test_the_callers_session_is_used_and_left_open(real_registry: RealRegistry) -> None:
    name = unique_repository()
    await apush_image(real_registry.url, name, "1.0")
    async with aiohttp.ClientSession(raise_for_status=True) as session:  # a 404 is still an answer
        assert await image_exists(real_registry.image(name, "1.0"), token=None, session=session) is True
        assert await image_exists(real_registry.image(name, "1.1"), token=None, session=session) is False
        assert not session.closed


async def test_a_stopped_registry_is_unavailable_with_a_clear_reason(real_registry: RealRegistry) -> None:
    name = unique_repository()
    await apush_image(real_registry.url, name, "1.0")
    reference = real_registry.image(name, "1.0")
    await asyncio.to_thread(real_registry.stop)
    with pytest.raises(RegistryUnavailable) as caught:
        await image_exists(reference, token=None)
    assert str(caught.value) == f"{real_registry.host} unreachable (connection refused)"
    # Back on the same port with the same storage: the image is there again.
    await asyncio.to_thread(real_registry.start)
    assert await image_exists(reference, token=None) is True


# -- against a stand-in --------------------------------------------------------

ISSUED = "issued-by-the-token-service"


@dataclass
class StandIn:
    """An aiohttp registry stand-in on 127.0.0.1: records every request's
    headers; ``mode`` says how the manifest endpoint answers."""

    mode: str = "open"  # open | bearer (401 challenge until the issued token) | always-401 | status | hang | basic
    status: int = 503
    tags: set[str] = field(default_factory=lambda: {"1.0"})
    realm: str | None = None  # default: this stand-in's /token
    token_status: int = 200  # how the token service answers
    requests: list[tuple[str, str, dict[str, str], dict[str, str]]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def made(self, path: str) -> list[tuple[dict[str, str], dict[str, str]]]:
        """(headers, query) of every request to ``path``."""
        return [(headers, query) for _, p, headers, query in self.requests if p == path]

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.headers), dict(request.query)))
        tag = request.match_info["tag"]
        if self.mode == "hang":
            await self.release.wait()
        if self.mode == "status":
            return web.Response(status=self.status)
        if self.mode == "basic":
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="registry"'})
        if self.mode in ("bearer", "always-401") and (
                self.mode == "always-401" or request.headers.get("Authorization") != f"Bearer {ISSUED}"):
            realm = self.realm or f"http://{self.host}/token"
            challenge = (f'Bearer realm="{realm}",service="stand-in.example.com",'
                         f'scope="repository:{request.match_info["name"]}:pull"')
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        return web.Response(status=200 if tag in self.tags else 404,
                            headers={"Content-Type": MANIFEST_TYPES[1]})

    async def token(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, dict(request.headers), dict(request.query)))
        if self.token_status != 200:
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=self.token_status)
        return web.json_response({"token": ISSUED, "expires_in": 300})


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    state = StandIn()
    app = web.Application()
    app.router.add_route("HEAD", r"/v2/{name:.+}/manifests/{tag}", state.manifest)
    app.router.add_get("/token", state.token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


async def test_the_accept_header_lists_oci_and_docker_manifests(stand_in: StandIn) -> None:
    assert await image_exists(f"{stand_in.host}/acme/api:1.0", token=None) is True
    [(headers, _)] = stand_in.made("/v2/acme/api/manifests/1.0")
    accepted = [part.strip() for part in headers["Accept"].split(",")]
    assert set(accepted) == {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }


async def test_anonymous_sends_no_authorization(stand_in: StandIn) -> None:
    assert await image_exists(f"{stand_in.host}/acme/api:1.0", token=None) is True
    assert await image_exists(f"{stand_in.host}/acme/api:2.0", token=None) is False
    assert all("Authorization" not in headers for _, _, headers, _ in stand_in.requests)


async def test_a_configured_token_is_sent_as_bearer_up_front(stand_in: StandIn) -> None:
    assert await image_exists(f"{stand_in.host}/acme/api:1.0", token="s3cret-token") is True
    assert await image_exists(f"{stand_in.host}/acme/api:9.9", token="s3cret-token") is False
    heads = stand_in.made("/v2/acme/api/manifests/1.0") + stand_in.made("/v2/acme/api/manifests/9.9")
    assert [headers["Authorization"] for headers, _ in heads] == ["Bearer s3cret-token"] * 2
    assert stand_in.made("/token") == []  # no challenge, no dance


async def test_a_user_password_token_is_sent_as_basic(stand_in: StandIn) -> None:
    assert await image_exists(f"{stand_in.host}/acme/api:1.0", token="robot$ci:pa:ss") is True
    [(headers, _)] = stand_in.made("/v2/acme/api/manifests/1.0")
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"robot$ci:pa:ss").decode()


async def test_a_bearer_challenge_gets_an_anonymous_token(stand_in: StandIn) -> None:
    stand_in.mode = "bearer"
    assert await image_exists(f"{stand_in.host}/acme/api:1.0", token=None) is True
    assert await image_exists(f"{stand_in.host}/acme/api:1.1", token=None) is False
    tokens = stand_in.made("/token")
    assert len(tokens) == 2  # once per check
    for headers, query in tokens:
        assert "Authorization" not in headers
        assert query == {"service": "stand-in.example.com", "scope": "repository:acme/api:pull"}
    heads = stand_in.made("/v2/acme/api/manifests/1.0")
    assert ["Authorization" in headers for headers, _ in heads] == [False, True]
    assert heads[1][0]["Authorization"] == f"Bearer {ISSUED}"


async def test_a_bearer_challenge_with_a_configured_token(stand_in: StandIn) -> None:
    stand_in.mode = "bearer"
    assert await image_exists(f"{stand_in.host}/acme/team/api:1.0", token="s3cret-token") is True
    [(token_headers, query)] = stand_in.made("/token")
    assert token_headers["Authorization"] == "Bearer s3cret-token"
    assert query["scope"] == "repository:acme/team/api:pull"
    heads = stand_in.made("/v2/acme/team/api/manifests/1.0")
    assert [headers["Authorization"] for headers, _ in heads] == ["Bearer s3cret-token", f"Bearer {ISSUED}"]


async def test_a_bearer_challenge_with_user_and_password(stand_in: StandIn) -> None:
    stand_in.mode = "bearer"
    assert await image_exists(f"{stand_in.host}/acme/api:1.0", token="deployer:hunter2") is True
    [(token_headers, _)] = stand_in.made("/token")
    assert token_headers["Authorization"] == "Basic " + base64.b64encode(b"deployer:hunter2").decode()


async def test_the_token_dance_is_done_once(stand_in: StandIn) -> None:
    stand_in.mode = "always-401"
    with pytest.raises(RegistryUnavailable) as caught:
        await image_exists(f"{stand_in.host}/acme/api:1.0", token=None)
    assert str(caught.value) == f"{stand_in.host} answered 401 even with a token handed out anonymously"
    assert len(stand_in.made("/token")) == 1
    assert len(stand_in.made("/v2/acme/api/manifests/1.0")) == 2


async def test_credentials_are_not_sent_to_a_plain_http_token_service(stand_in: StandIn) -> None:
    stand_in.mode = "bearer"
    stand_in.realm = "http://auth.example.com/token"
    with pytest.raises(RegistryUnavailable, match=r"token service auth\.example\.com is not HTTPS: "
                                                   r"credentials not sent"):
        await image_exists(f"{stand_in.host}/acme/api:1.0", token="s3cret-token")


async def test_a_basic_challenge(stand_in: StandIn) -> None:
    stand_in.mode = "basic"
    with pytest.raises(RegistryUnavailable) as caught:
        await image_exists(f"{stand_in.host}/acme/api:1.0", token=None)
    assert str(caught.value) == (f"{stand_in.host} answered 401 "
                                 "(it asks for a password: registry_token_env holding user:password)")
    with pytest.raises(RegistryUnavailable) as caught:
        await image_exists(f"{stand_in.host}/acme/api:1.0", token="deployer:wrong")
    assert str(caught.value) == f"{stand_in.host} answered 401 (credentials refused)"


async def test_a_token_service_refusing_the_credentials(stand_in: StandIn) -> None:
    stand_in.mode, stand_in.token_status = "bearer", 401
    with pytest.raises(RegistryUnavailable) as caught:
        await image_exists(f"{stand_in.host}/acme/api:1.0", token="s3cret-token")
    assert str(caught.value) == f"{stand_in.host}'s token service answered 401"


@pytest.mark.parametrize("status", [500, 503, 429, 400])
async def test_another_answer_is_unavailable(stand_in: StandIn, status: int) -> None:
    stand_in.mode, stand_in.status = "status", status
    with pytest.raises(RegistryUnavailable) as caught:
        await image_exists(f"{stand_in.host}/acme/api:1.0", token=None)
    assert str(caught.value) == f"{stand_in.host} answered {status}"


async def test_a_forbidden_repository_is_unavailable(stand_in: StandIn) -> None:
    stand_in.mode, stand_in.status = "status", 403
    with pytest.raises(RegistryUnavailable, match=r"answered 403 \(no access to acme/api\)"):
        await image_exists(f"{stand_in.host}/acme/api:1.0", token=None)


async def test_a_registry_that_does_not_answer_times_out(stand_in: StandIn) -> None:
    stand_in.mode = "hang"
    started = asyncio.get_running_loop().time()
    with pytest.raises(RegistryUnavailable) as caught:
        await image_exists(f"{stand_in.host}/acme/api:1.0", token=None, timeout=0.3)
    assert str(caught.value) == f"{stand_in.host} timed out after 0.3 s"
    assert asyncio.get_running_loop().time() - started < 3


class _ToLoopback(AbstractResolver):
    """Resolves every name to 127.0.0.1 (so a real host name reaches the stand-in)."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


async def test_a_registry_elsewhere_is_spoken_to_over_https(stand_in: StandIn) -> None:
    # registry.example.com resolves to the stand-in, which speaks plain
    # HTTP: the check's TLS handshake fails there, so it did try HTTPS.
    connector = aiohttp.TCPConnector(resolver=_ToLoopback())
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(RegistryUnavailable) as caught:
            await image_exists(f"registry.example.com:{stand_in.port}/acme/api:1.0", token="s3cret-token",
                               session=session, timeout=5)
    assert str(caught.value) == f"registry.example.com:{stand_in.port} unreachable (TLS handshake failed)"
    assert stand_in.requests == []  # no plain HTTP request, so no token in the clear
