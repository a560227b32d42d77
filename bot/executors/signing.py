"""HMAC-SHA256 signatures between Slipway and a webhook deploy engine.

Both directions use one scheme, modelled on Slack's: the signature covers
``{timestamp}.{body}``, is sent as ``X-Slipway-Signature: v1=<hex>`` with
``X-Slipway-Timestamp: <unix seconds>``, and a timestamp more than five
minutes away from now is refused, so a captured request cannot be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

SIGNATURE_HEADER = "X-Slipway-Signature"
TIMESTAMP_HEADER = "X-Slipway-Timestamp"
TOLERANCE_SECONDS = 5 * 60
MAX_TIMESTAMP_DIGITS = 12  # unix seconds for the next 30,000 years


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> str | None:
    """``None`` when the request is signed with ``secret`` and fresh; else
    the reason it is not (for the 401 body and the log)."""
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    if not timestamp or not given:
        return f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}"
    # ASCII digits, and few: "²" passes str.isdigit() but not int(), and
    # int() refuses 5,000 digits; either is a refusal, never an exception
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > MAX_TIMESTAMP_DIGITS:
        return f"{TIMESTAMP_HEADER} is not a unix timestamp"
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_SECONDS:
        return "timestamp too far from now (replayed or clock skew)"
    # compared as bytes: compare_digest refuses str with non-ASCII characters ("v1=é")
    if not given.isascii() or not hmac.compare_digest(signature(secret, timestamp, body).encode(), given.encode()):
        return "signature does not match"
    return None
