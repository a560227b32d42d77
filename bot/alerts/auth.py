"""Who may post alerts: a bearer token (Alertmanager, generic) or Grafana's
HMAC signature of the body.

Grafana's scheme, from its webhook contact point documentation
(https://grafana.com/docs/grafana/latest/alerting/configure-notifications/manage-contact-points/integrations/webhook-notifier/,
"HMAC signature") and its sender, grafana/alerting ``http/hmac.go``
(``HMACRoundTripper.sign``):

* the signature is HMAC-SHA256 keyed with the shared secret, sent as a
  lower-case hex string (no ``sha256=`` prefix) in the configured header;
* with no timestamp header configured, the signed message is the raw body;
* with a timestamp header configured, Grafana puts the Unix time in seconds
  in that header and signs ``<timestamp>:<body>`` (separator ``":"``).

The header's documented default is ``X-Grafana-Alerting-Signature`` (the
docs and the contact point form's placeholder), but ``http/hmac.go`` falls
back to ``X-Grafana-Alert-Signature`` when the header field is left empty; so
when the caller asks for the documented default, either name is accepted —
the signature itself is checked the same either way. There is no default
timestamp header: it exists only if configured in Grafana, and then Slipway
must be told its name.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

GRAFANA_SIGNATURE_HEADER = "X-Grafana-Alerting-Signature"
GRAFANA_CODE_DEFAULT_HEADER = "X-Grafana-Alert-Signature"  # grafana/alerting http/hmac.go defaultHeaderName
TOLERANCE_SECONDS = 300.0


def bearer_ok(headers: Mapping[str, str], token: str) -> bool:
    """True when ``Authorization: Bearer <token>`` carries exactly ``token``
    (compared in constant time). An empty ``token`` never matches."""
    if not token:
        return False
    scheme, _, given = (_header(headers, "Authorization") or "").strip().partition(" ")
    if scheme.lower() != "bearer":  # RFC 7235: the scheme is case-insensitive
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def grafana_signature_problem(headers: Mapping[str, str], body: bytes, secret: str, *,
                              header: str = GRAFANA_SIGNATURE_HEADER, timestamp_header: str | None = None,
                              now: float | None = None, tolerance: float = TOLERANCE_SECONDS) -> str | None:
    """``None`` when ``body`` carries Grafana's HMAC signature made with
    ``secret`` (and, with ``timestamp_header``, a timestamp within
    ``tolerance`` seconds of ``now``); otherwise why not, for the 401 and
    the log."""
    if not secret:
        return "no Grafana signing secret is configured"
    given = _header(headers, header)
    if given is None and header.lower() == GRAFANA_SIGNATURE_HEADER.lower():
        given = _header(headers, GRAFANA_CODE_DEFAULT_HEADER)
    if not given:
        return f"missing {header} header"
    message = body
    timestamp = None
    if timestamp_header is not None:
        stamp = (_header(headers, timestamp_header) or "").strip()
        if not stamp:
            return f"missing {timestamp_header} header"
        if not stamp.isascii() or not stamp.isdigit():
            return f"{timestamp_header} is not a Unix timestamp"
        timestamp = int(stamp)
        message = stamp.encode() + b":" + body
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode("utf-8", "replace")):
        return f"bad signature in {header}"
    # Checked after the signature, so "stale" is only said of a request
    # Grafana really signed: a replay, or clocks that disagree.
    if timestamp is not None:
        skew = (time.time() if now is None else now) - timestamp
        if abs(skew) > tolerance:
            return f"stale timestamp in {timestamp_header}: {abs(skew):.0f}s {'old' if skew > 0 else 'in the future'}" \
                   f" (at most {tolerance:.0f}s)"
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The header ``name``, case-insensitively (aiohttp's headers already are;
    a plain dict is not)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)
