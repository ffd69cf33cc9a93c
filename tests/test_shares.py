"""Share tokens, PINs and redemption rules (pure domain)."""

from __future__ import annotations

import hashlib

import pytest

from dicomshare import shares
from dicomshare.settings import Settings

NOW = 1_800_000_000


def share(**changes) -> shares.Share:
    values = dict(share_id="0123456789abcdef", study_uids=("1.2.3",), created_at=NOW - 10,
                  expires_at=NOW + 3600, created_by="arn:aws:iam::1:user/a")
    return shares.Share(**{**values, **changes})


def test_tokens_are_long_random_and_url_safe():
    tokens = {shares.new_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        assert len(token) >= 43  # 256 bits in base64url
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_token_hash_is_sha256_and_compared_in_full():
    token = shares.new_token()
    digest = shares.token_sha256(token)
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert shares.token_matches(token, digest)
    assert not shares.token_matches(token[:-1], digest)


@pytest.mark.parametrize("header, token", [
    ("Share abc", "abc"), ("share abc ", "abc"), ("Bearer abc", None), ("Share", None), ("", None), (None, None),
    ("Share " + "a" * 300, None),
])
def test_token_from_authorization(header, token):
    assert shares.token_from_authorization(header) == token


def test_pin_hash_is_salted_scrypt():
    first, second = shares.hash_pin("1234"), shares.hash_pin("1234")
    assert first != second and first.startswith("scrypt$16384$8$1$")
    assert "1234" not in first
    assert shares.pin_matches("1234", first) and shares.pin_matches("1234", second)
    assert not shares.pin_matches("1235", first)


def test_expiry_bounds_come_from_settings():
    settings = Settings(share_min_seconds=300, share_default_seconds=600, share_max_seconds=900)
    assert shares.expiry_seconds(None, settings) == 600
    assert shares.expiry_seconds(300, settings) == 300
    for outside in (299, 901, -1):
        with pytest.raises(shares.ShareRequestError) as refused:
            shares.expiry_seconds(outside, settings)
        assert refused.value.reason == "expires_in_out_of_range"


@pytest.mark.parametrize("changes, reason", [
    ({}, None),
    ({"revoked_at": NOW - 1}, "revoked"),
    ({"expires_at": NOW}, "expired"),
    ({"pin_failures": shares.MAX_PIN_FAILURES}, "locked"),
    ({"max_redemptions": 2, "redemptions": 2}, "exhausted"),
    ({"max_redemptions": 2, "redemptions": 1}, None),
    ({"revoked_at": NOW - 1, "expires_at": NOW - 5}, "revoked"),
])
def test_refusal(changes, reason):
    assert shares.refusal(share(**changes), NOW) == reason


def test_presigned_urls_never_outlive_the_share():
    settings = Settings(presign_seconds=900)
    assert shares.presign_seconds(share(), NOW, settings) == 900
    assert shares.presign_seconds(share(expires_at=NOW + 60), NOW, settings) == 60


def test_refusals_carry_status_and_message():
    refused = shares.ShareRefused("wrong_pin", attempts_left=2)
    assert (refused.status, refused.detail) == (403, {"attempts_left": 2})
    assert {shares.REFUSALS[r][0] for r in ("revoked", "expired", "exhausted", "locked")} == {410}
    assert shares.REFUSALS["unknown_link"][0] == 404
