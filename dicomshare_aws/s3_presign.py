"""Presigned S3 GET URLs in bulk: AWS Signature Version 4, query-string authentication.

``botocore``'s ``generate_presigned_url`` costs about a millisecond per URL (its event and
endpoint machinery runs for every call); a share of a 1,000-instance study needs 2,000
URLs. :class:`Presigner` computes the same signature (the test compares it with botocore's
byte for byte) with the signing key derived once per batch, about 20 µs per URL.

Reference: AWS S3 API, "Authenticating Requests: Using Query Parameters (AWS Signature
Version 4)". Only ``host`` is signed and the payload is ``UNSIGNED-PAYLOAD``, as botocore
does for presigned GETs.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timezone
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"


def bucket_origin(bucket: str, region: str, endpoint_url: str | None = None) -> str:
    """The origin (scheme://host) presigned URLs of ``bucket`` point at: virtual-hosted on
    AWS, the endpoint itself (path style) locally."""
    if endpoint_url:
        endpoint = urlsplit(endpoint_url)
        return f"{endpoint.scheme}://{endpoint.netloc}"
    return f"https://{bucket}.s3.{region}.amazonaws.com"


class Presigner:
    """Presigns GETs of one bucket, all with the same timestamp and lifetime."""

    def __init__(self, *, access_key: str, secret_key: str, token: str | None, region: str, bucket: str,
                 expires_in: int, endpoint_url: str | None = None, now: datetime | None = None):
        moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        self.amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
        day = moment.strftime("%Y%m%d")
        self.scope = f"{day}/{region}/s3/aws4_request"
        self.scheme, _, self.host = bucket_origin(bucket, region, endpoint_url).partition("://")
        self.prefix = f"/{bucket}" if endpoint_url else ""
        key = f"AWS4{secret_key}".encode()
        for part in (day, region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self.signing_key = key
        parameters = {
            "X-Amz-Algorithm": ALGORITHM,
            "X-Amz-Credential": f"{access_key}/{self.scope}",
            "X-Amz-Date": self.amz_date,
            "X-Amz-Expires": str(int(expires_in)),
            "X-Amz-SignedHeaders": "host",
        }
        if token:
            parameters["X-Amz-Security-Token"] = token
        self.query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(parameters.items()))

    def url(self, key: str) -> str:
        path = self.prefix + "/" + quote(key, safe="/-_.~")
        canonical_request = f"GET\n{path}\n{self.query}\nhost:{self.host}\n\nhost\nUNSIGNED-PAYLOAD"
        string_to_sign = "\n".join(
            (ALGORITHM, self.amz_date, self.scope, hashlib.sha256(canonical_request.encode()).hexdigest())
        )
        signature = hmac.new(self.signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{self.scheme}://{self.host}{path}?{self.query}&X-Amz-Signature={signature}"
