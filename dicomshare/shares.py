"""Share tokens, PINs and the rules deciding whether a share may be redeemed.

A share gives a clinician time-limited access to one study (and optionally the same
patient's earlier studies). It is reached with an opaque bearer token, not a JWT, so that
it can be revoked before it expires. The token is 256 bits from :mod:`secrets`; only its
SHA-256 hash is stored. An optional PIN is stored with scrypt (RFC 7914), salted.

This module is pure domain: no AWS calls. ``dicomshare_aws.share_store`` persists
:class:`Share` and enforces the counters atomically with the same rules.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from dicomshare.settings import Settings

TOKEN_BYTES = 32
"""Bytes of randomness in a token (256 bits, URL-safe base64 encoded)."""

MAX_PIN_FAILURES = 5
"""Wrong PINs after which a share locks until an administrator unlocks it."""

AUTHORIZATION_SCHEME = "Share"
"""``Authorization: Share <token>`` carries the token on ``POST /redeem``."""

PIN_HEADER = "X-Share-Pin"

MIN_PIN_LENGTH = 6
GENERATED_PIN_DIGITS = 8

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1

REFUSALS = {
    "token_required": (401, "This link is incomplete: it carries no share token."),
    "unknown_link": (404, "This link is not valid."),
    "pin_required": (403, "This share is protected by a PIN."),
    "wrong_pin": (403, "The PIN is not correct."),
    "revoked": (410, "The sender has revoked this share."),
    "expired": (410, "This share has expired."),
    "exhausted": (410, "This share has been opened the maximum number of times."),
    "locked": (410, "This share is locked after too many wrong PINs; ask the sender to unlock it."),
    "not_redeemed": (403, "Open the share link first: this share has not been redeemed."),
}
"""Machine reason -> (HTTP status, human message) for a refused redemption."""


class ShareRefused(Exception):
    """A redemption is refused; ``reason`` is a key of :data:`REFUSALS`."""

    def __init__(self, reason: str, **detail: int):
        self.reason = reason
        self.status, self.message = REFUSALS[reason]
        self.detail = detail
        super().__init__(reason)


class ShareRequestError(ValueError):
    """A share cannot be created as requested; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Share:
    share_id: str
    study_uids: tuple[str, ...]
    """The shared study first, then the priors (oldest last) when ``include_priors``."""
    created_at: int
    expires_at: int
    created_by: str
    partner: str = ""
    """The partner the shared study belongs to, frozen when the share is created."""
    patient_pseudonym: str = ""
    """The patient the shared studies belong to, frozen when the share is created."""
    recipient: str = ""
    pin_hash: str = ""
    max_redemptions: int | None = None
    allow_download: bool = True
    include_priors: bool = False
    redemptions: int = 0
    pin_failures: int = 0
    revoked_at: int | None = None
    first_redeemed_at: int | None = None

    @property
    def study_uid(self) -> str:
        return self.study_uids[0]

    @property
    def locked(self) -> bool:
        return self.pin_failures >= MAX_PIN_FAILURES


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_share_id() -> str:
    return secrets.token_hex(8)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, stored_sha256: str) -> bool:
    """Constant-time comparison of a presented token with the stored hash."""
    return hmac.compare_digest(token_sha256(token), stored_sha256)


def token_from_authorization(header: str | None) -> str | None:
    """The token of an ``Authorization: Share <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != AUTHORIZATION_SCHEME.lower() or not token or len(token) > 256:
        return None
    return token


def pin_weakness(pin: str) -> str | None:
    """Why a PIN chosen by an administrator is too weak, or None: shorter than
    :data:`MIN_PIN_LENGTH`, one character repeated (``000000``, six spaces), or a run
    (``123456``, ``987654``, ``abcdef``). The reason never contains the PIN."""
    if len(pin) < MIN_PIN_LENGTH:
        return f"a PIN needs at least {MIN_PIN_LENGTH} characters"
    if pin.strip() != pin or not pin.isprintable():
        return "a PIN may not start or end with spaces or hold control characters"
    if len(set(pin)) == 1:
        return "a PIN may not be one character repeated"
    steps = {ord(b) - ord(a) for a, b in zip(pin, pin[1:])}
    if steps in ({1}, {-1}):
        return "a PIN may not be a run of consecutive characters"
    return None


def new_pin() -> str:
    """A server-generated PIN: :data:`GENERATED_PIN_DIGITS` random decimal digits."""
    while True:
        pin = "".join(secrets.choice("0123456789") for _ in range(GENERATED_PIN_DIGITS))
        if pin_weakness(pin) is None:
            return pin


def hash_pin(pin: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$<salt>$<hash>`` (base64) of a PIN."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def pin_matches(pin: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    candidate = hashlib.scrypt(
        pin.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    return hmac.compare_digest(candidate, base64.b64decode(digest))


def expiry_seconds(expires_in: int | None, settings: Settings) -> int:
    """The share lifetime asked for, checked against the configured bounds."""
    if expires_in is None:
        return settings.share_default_seconds
    if not settings.share_min_seconds <= expires_in <= settings.share_max_seconds:
        raise ShareRequestError(
            "expires_in_out_of_range",
            f"expires_in must be between {settings.share_min_seconds} and {settings.share_max_seconds} seconds",
        )
    return expires_in


def refusal(share: Share, now: int) -> str | None:
    """Why ``share`` cannot be redeemed at ``now`` (epoch seconds), before any PIN check."""
    if share.revoked_at is not None:
        return "revoked"
    if share.locked:
        return "locked"
    if now >= share.expires_at:
        return "expired"
    if share.max_redemptions is not None and share.redemptions >= share.max_redemptions:
        return "exhausted"
    return None


def owns(share: Share, item: dict) -> bool:
    """Whether the share may serve an index item (a study or an instance): one of its
    studies, carrying the partner and patient pseudonym frozen in the share when it was
    created. Anything else (an item added later under another partner or pseudonym,
    whatever the cause) is left out; a share created without a frozen owner serves nothing."""
    return (bool(share.partner) and item.get("partner") == share.partner
            and item.get("patient_pseudonym") == share.patient_pseudonym
            and item.get("study_uid") in share.study_uids)


def access_refusal(share: Share, now: int) -> str | None:
    """Why the pages of a share (instance URLs, the viewer document, the Key Object
    Selection pages) cannot be read at ``now``. As :func:`refusal`, except that
    ``max_redemptions`` limits openings, not reads of an opened share: a share becomes
    readable with its first redemption and stays so until it expires, is revoked or locks."""
    reason = refusal(share, now)
    if reason == "exhausted":
        return None
    if reason is None and share.redemptions < 1:
        return "not_redeemed"
    return reason


def presign_seconds(share: Share, now: int, settings: Settings) -> int:
    """Lifetime of a presigned URL: ``Settings.presign_seconds``, never past the share's expiry."""
    return max(1, min(settings.presign_seconds, share.expires_at - now))


def iso(epoch: int | float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
