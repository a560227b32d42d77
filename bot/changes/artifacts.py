"""Whether a version's image exists in its OCI registry (``artifacts.image``).

    ref = parse_image("registry.example.com/acme/api:1.4.2")
    ref.base_url                       # https://registry.example.com
    await image_exists("registry.example.com/acme/api:1.4.2", token=None)   # True / False

The check is the OCI distribution API's ``HEAD /v2/<name>/manifests/<tag>``
with an ``Accept`` listing the OCI image index and manifest and Docker's v2
manifest list and manifest: 200 is there, 404 is not. Anything else, and a
registry that cannot be reached or does not answer in time, raises
:class:`RegistryUnavailable` saying why in a few words (the caller refuses a
new request then — fail closed — and only warns on a rollback).

HTTPS always, except a registry on a loopback address (127.0.0.0/8, ::1,
``localhost``), which is spoken to over plain HTTP, as Docker does.

Authentication, with the configured ``token`` (``registry_token_env``):

- none: anonymous;
- ``user:password`` (it holds a colon): HTTP Basic, up front and to the
  token service;
- anything else: ``Authorization: Bearer <token>`` up front (a registry
  that takes a static token answers at once) and to the token service.

A 401 with a ``WWW-Authenticate: Bearer realm=…,service=…,scope=…``
challenge gets the token dance once (``GET realm?service=…&scope=…``,
with the credentials above or anonymously), and the HEAD is retried with
the token it hands out. Credentials are never sent to a token service over
plain HTTP (unless it is on a loopback address).

Docker Hub short names (``acme/api``, ``ubuntu``) are out of scope: the
reference must start with a registry host.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from bot.changes.model import SourceUnavailable

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
ACCEPT = ", ".join(MANIFEST_TYPES)

# The distribution reference grammar (github.com/distribution/reference).
_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(rf"^(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9a-fA-F:.]+\])(?::(\d{{1,5}}))?$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_NAME_MAX = 255
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


class InvalidImageReference(ValueError):
    """An image reference that is not ``host[:port]/name:tag``; the message
    names the reference and what is wrong with it."""


class RegistryUnavailable(SourceUnavailable):
    """The registry could not be asked whether the image exists
    (unreachable, timed out, an answer other than 200 or 404, refused
    credentials); the message says why in a few words."""


@dataclass(frozen=True)
class ImageRef:
    """An image reference taken apart: ``registry`` (host[:port] as
    written), ``repository`` (the name, path components joined by ``/``)
    and ``tag``."""

    registry: str
    repository: str
    tag: str

    @property
    def host(self) -> str:
        """The registry's host, without its port (an IPv6 address keeps its brackets)."""
        if self.registry.startswith("["):
            return self.registry[: self.registry.index("]") + 1]
        return self.registry.rsplit(":", 1)[0] if ":" in self.registry else self.registry

    @property
    def port(self) -> int | None:
        rest = self.registry[self.registry.index("]") + 1:] if self.registry.startswith("[") else self.registry
        return int(rest.rsplit(":", 1)[1]) if ":" in rest else None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def base_url(self) -> str:
        """``http://host[:port]`` for a registry on a loopback address, else ``https://host[:port]``."""
        return f"{'http' if self.loopback else 'https'}://{self.registry}"

    @property
    def manifest_url(self) -> str:
        return f"{self.base_url}/v2/{self.repository}/manifests/{self.tag}"

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


def is_loopback(host: str) -> bool:
    """``localhost``, an address in 127.0.0.0/8, or ::1 (brackets allowed)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def image_reference(template: str, version: str) -> str:
    """``artifacts.image`` with ``{version}`` filled in (str.replace, not
    str.format: nothing else in the template is read)."""
    return template.replace("{version}", version)


def parse_image(reference: str) -> ImageRef:
    """``host[:port]/name[/name…]:tag`` taken apart. Raises
    InvalidImageReference for a digest (``@sha256:…``), a missing tag, a
    first part that is not a registry host (a Docker Hub short name) and
    anything else the distribution reference grammar does not allow."""

    def invalid(why: str) -> InvalidImageReference:
        return InvalidImageReference(f"image {reference!r}: {why}")

    if not reference or reference != reference.strip() or any(c.isspace() for c in reference):
        raise invalid("empty or contains whitespace")
    if "@" in reference:
        raise invalid("a digest (@sha256:…) is not supported: name the image by tag, registry/name:tag")
    if "://" in reference:
        raise invalid("no scheme: write host[:port]/name:tag (a loopback registry is spoken to over HTTP, "
                      "any other over HTTPS)")
    registry, slash, rest = reference.partition("/")
    if not slash or not rest:
        raise invalid("no registry host: write host[:port]/name:tag (Docker Hub short names are not supported)")
    host_match = _HOST.match(registry)
    if host_match is None:
        raise invalid(f"{registry!r} is not a registry host[:port]")
    # Docker's rule: a first part without a dot or a port that is not
    # localhost is a Docker Hub namespace ("acme/api"), not a host.
    if "." not in registry and ":" not in registry and registry != "localhost":
        raise invalid(f"{registry!r} is not a registry host (no dot, no port); Docker Hub short names "
                      "are not supported: write e.g. registry.example.com/acme/api:{version}")
    if host_match.group(1) is not None and not 0 < int(host_match.group(1)) < 65536:
        raise invalid(f"port {host_match.group(1)} is out of range")
    name, colon, tag = rest.rpartition(":")
    if not colon or not tag or "/" in tag:
        raise invalid("no tag: write host[:port]/name:tag")
    if not _TAG.match(tag):
        raise invalid(f"tag {tag!r} is not a valid image tag (letters, digits, _ . -, at most 128, "
                      "not starting with . or -)")
    for component in name.split("/"):
        if not _PATH_COMPONENT.match(component):
            raise invalid(f"name component {component!r} is not valid (lowercase letters and digits, "
                          "separated by . _ __ or dashes)")
    if len(registry) + 1 + len(name) > _NAME_MAX:
        raise invalid(f"the name is longer than {_NAME_MAX} characters")
    return ImageRef(registry, name, tag)


# -- the registry --------------------------------------------------------------

async def image_exists(reference: str, *, token: str | None, timeout: float = 10.0,
                       session: aiohttp.ClientSession | None = None) -> bool:
    """Whether the registry has a manifest for ``reference``'s tag.

    Raises InvalidImageReference for a reference that is not
    ``host[:port]/name:tag``, RegistryUnavailable when the registry cannot
    say (unreachable, ``timeout`` seconds passed — for the whole check,
    token dance included — or an answer other than 200 and 404)."""
    ref = parse_image(reference)
    try:
        async with asyncio.timeout(timeout), _client(session) as http:
            return await _check(http, ref, token, timeout)
    except TimeoutError:  # aiohttp's own timeouts derive from it too
        raise RegistryUnavailable(f"{ref.registry} timed out after {timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        raise RegistryUnavailable(f"{ref.registry} unreachable ({_connect_reason(exc)})") from None
    except aiohttp.ClientError as exc:
        raise RegistryUnavailable(f"{ref.registry}: request failed ({exc or type(exc).__name__})") from None


@asynccontextmanager
async def _client(session: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
    """The caller's session, or one of our own for the duration."""
    if session is not None:
        yield session
        return
    async with aiohttp.ClientSession() as own:
        yield own


async def _check(http: aiohttp.ClientSession, ref: ImageRef, token: str | None, timeout: float) -> bool:
    credentials = _credentials(token)
    status, challenges = await _head(http, ref, credentials, timeout)
    if status == 401:
        challenge = _bearer_challenge(challenges)
        if challenge is None:
            if token:
                raise RegistryUnavailable(f"{ref.registry} answered 401 (credentials refused)")
            basic = any(c.strip().lower().startswith("basic") for c in challenges)
            wants = " (it asks for a password: registry_token_env holding user:password)" if basic else ""
            raise RegistryUnavailable(f"{ref.registry} answered 401{wants}")
        bearer = await _token_dance(http, ref, challenge, credentials, timeout)
        status, _ = await _head(http, ref, f"Bearer {bearer}", timeout)
        if status == 401:
            raise RegistryUnavailable(f"{ref.registry} answered 401 even with a token "
                                      f"{'for the configured credentials' if token else 'handed out anonymously'}")
    if status == 200:
        return True
    if status == 404:
        return False
    if status == 403:
        raise RegistryUnavailable(f"{ref.registry} answered 403 (no access to {ref.repository})")
    raise RegistryUnavailable(f"{ref.registry} answered {status}")


def _credentials(token: str | None) -> str | None:
    """The Authorization header value the configured token makes."""
    if not token:
        return None
    if ":" in token:
        return "Basic " + base64.b64encode(token.encode()).decode("ascii")
    return f"Bearer {token}"


async def _head(http: aiohttp.ClientSession, ref: ImageRef, authorization: str | None,
                timeout: float) -> tuple[int, list[str]]:
    headers = {"Accept": ACCEPT}
    if authorization:
        headers["Authorization"] = authorization
    # raise_for_status=False: a 404 or a 503 is an answer to judge, whatever the caller's session says
    async with http.head(ref.manifest_url, headers=headers, allow_redirects=True, raise_for_status=False,
                         timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        return response.status, response.headers.getall("WWW-Authenticate", [])


def _bearer_challenge(challenges: list[str]) -> dict[str, str] | None:
    """The parameters of the first ``Bearer`` challenge (realm, service, scope)."""
    for challenge in challenges:
        scheme, _, params = challenge.strip().partition(" ")
        if scheme.lower() != "bearer":
            continue
        found = {key.lower(): (quoted if quoted is not None else bare)
                 for key, quoted, bare in _CHALLENGE_PARAM.findall(params)}
        found = {key: value.replace('\\"', '"') for key, value in found.items() if value is not None}
        if found.get("realm"):
            return found
    return None


async def _token_dance(http: aiohttp.ClientSession, ref: ImageRef, challenge: dict[str, str],
                       credentials: str | None, timeout: float) -> str:
    """A pull token from the challenge's realm (with the credentials where
    given, else anonymously)."""
    realm = challenge["realm"]
    parts = urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryUnavailable(f"{ref.registry}'s token service {realm!r} is not an HTTP(S) URL")
    if credentials and parts.scheme != "https" and not is_loopback(parts.hostname):
        raise RegistryUnavailable(f"{ref.registry}'s token service {parts.netloc} is not HTTPS: "
                                  "credentials not sent")
    params = {"scope": challenge.get("scope") or f"repository:{ref.repository}:pull"}
    if challenge.get("service"):
        params["service"] = challenge["service"]
    headers = {"Authorization": credentials} if credentials else {}
    try:
        async with http.get(realm, params=params, headers=headers, raise_for_status=False,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                raise RegistryUnavailable(f"{ref.registry}'s token service answered {response.status}")
            try:
                body = await response.json(content_type=None)
            except ValueError:
                raise RegistryUnavailable(f"{ref.registry}'s token service did not answer JSON") from None
    except aiohttp.ClientConnectorError as exc:
        raise RegistryUnavailable(f"{ref.registry}'s token service {parts.netloc} unreachable "
                                  f"({_connect_reason(exc)})") from None
    bearer = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
    if not isinstance(bearer, str) or not bearer:
        raise RegistryUnavailable(f"{ref.registry}'s token service gave no token")
    return bearer


def _connect_reason(exc: aiohttp.ClientConnectorError) -> str:
    """Why a connection failed, in a few words."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate not trusted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    error = exc.os_error
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "name not resolved"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(exc) or type(exc).__name__
