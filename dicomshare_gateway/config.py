"""The gateway's configuration file: one versioned JSON document (docs/gateway.md).

```json
{
  "version": 1,
  "ae_title": "DICOMSHARE",
  "bind_address": "0.0.0.0",
  "port": 11112,
  "spool_dir": "/var/spool/dicomshare-gateway",
  "min_free_bytes": 1073741824,
  "upload_id_secret_file": "/etc/dicomshare-gateway/upload-id-secret",
  "tls": {"certificate": "/etc/…/gateway.pem", "private_key": "/etc/…/gateway.key", "ca_certificates": null},
  "upload": {"bucket": "<IngestBucketName>", "region": "eu-west-1", "sse_kms_key_id": "<IngestKeyArn>",
             "endpoint_url": null, "retry_seconds": 5, "max_retry_seconds": 300},
  "partners": [{"id": "st-mary-pacs", "calling_ae_titles": ["STMARY_PACS"], "role_arn": "<PartnerRoleArn…>",
                "external_id": null, "profile": null}]
}
```

Relative paths are relative to the file's folder. Everything is checked on load; an error
names the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dicomshare.settings import PARTNER_ID

GATEWAY_CONFIG_VERSION = 1

AE_TITLE = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")
"""PS3.5 6.2 AE: 1-16 characters of the default repertoire, no backslash or control
character, no leading or trailing space."""


class GatewayConfigError(ValueError):
    """The configuration file is invalid; the message names the field."""


@dataclass(frozen=True)
class GatewayPartner:
    id: str
    calling_ae_titles: tuple[str, ...]
    """Calling AE titles this partner's systems use; any other is rejected at association."""
    role_arn: str | None = None
    """The partner's upload role (assumed with the machine's credentials); None: use them directly."""
    external_id: str | None = None
    profile: str | None = None
    """A named AWS profile for this partner's credentials instead of the default chain."""


@dataclass(frozen=True)
class Tls:
    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    """When set, callers must present a certificate signed by one of these CAs."""


@dataclass(frozen=True)
class Upload:
    bucket: str
    region: str | None = None
    sse_kms_key_id: str | None = None
    endpoint_url: str | None = None
    retry_seconds: float = 5.0
    max_retry_seconds: float = 300.0


@dataclass(frozen=True)
class GatewayConfig:
    spool_dir: Path
    upload: Upload
    partners: tuple[GatewayPartner, ...]
    upload_id_secret_file: Path
    ae_title: str = "DICOMSHARE"
    bind_address: str = "0.0.0.0"
    port: int = 11112
    min_free_bytes: int = 1024**3
    tls: Tls | None = None
    maximum_associations: int = 10
    network_timeout_seconds: int = 60
    partner_by_ae_title: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "partner_by_ae_title",
                           {ae: p.id for p in self.partners for ae in p.calling_ae_titles})


def _path(value: Any, base: Path, name: str) -> Path:
    if not isinstance(value, str) or not value:
        raise GatewayConfigError(f"{name}: a path is required")
    return base / value


def from_document(doc: Mapping[str, Any], base: Path = Path(".")) -> GatewayConfig:
    """Validate and load a configuration document; relative paths are taken from ``base``."""
    version = doc.get("version")
    if version != GATEWAY_CONFIG_VERSION:
        raise GatewayConfigError(f"version: expected {GATEWAY_CONFIG_VERSION}, got {version!r}")
    known = {"version", "ae_title", "bind_address", "port", "spool_dir", "min_free_bytes", "upload_id_secret_file",
             "tls", "upload", "partners", "maximum_associations", "network_timeout_seconds"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise GatewayConfigError(f"{unknown[0]}: unknown field")
    ae_title = doc.get("ae_title", "DICOMSHARE")
    if not isinstance(ae_title, str) or not AE_TITLE.match(ae_title):
        raise GatewayConfigError("ae_title: 1-16 printable ASCII characters, no backslash")
    partners, seen = [], set()
    for i, p in enumerate(doc.get("partners") or []):
        if not PARTNER_ID.match(str(p.get("id", ""))):
            raise GatewayConfigError(f"partners[{i}].id: lower-case letters, digits and '-' only")
        titles = p.get("calling_ae_titles") or []
        if not titles or not all(isinstance(t, str) and AE_TITLE.match(t) for t in titles):
            raise GatewayConfigError(f"partners[{i}].calling_ae_titles: one or more AE titles (1-16 characters)")
        if seen & set(titles):
            raise GatewayConfigError(f"partners[{i}].calling_ae_titles: an AE title may belong to one partner only")
        seen |= set(titles)
        partners.append(GatewayPartner(id=p["id"], calling_ae_titles=tuple(titles), role_arn=p.get("role_arn"),
                                       external_id=p.get("external_id"), profile=p.get("profile")))
    if not partners:
        raise GatewayConfigError("partners: at least one partner")
    upload = doc.get("upload") or {}
    if not upload.get("bucket"):
        raise GatewayConfigError("upload.bucket: the ingest bucket's name is required")
    tls = doc.get("tls")
    port = doc.get("port", 11112)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise GatewayConfigError("port: 0-65535")
    min_free = doc.get("min_free_bytes", 1024**3)
    if not isinstance(min_free, int) or min_free < 0:
        raise GatewayConfigError("min_free_bytes: a number of bytes, 0 or more")
    return GatewayConfig(
        spool_dir=_path(doc.get("spool_dir"), base, "spool_dir"),
        upload=Upload(bucket=upload["bucket"], region=upload.get("region"), sse_kms_key_id=upload.get("sse_kms_key_id"),
                      endpoint_url=upload.get("endpoint_url"), retry_seconds=float(upload.get("retry_seconds", 5)),
                      max_retry_seconds=float(upload.get("max_retry_seconds", 300))),
        partners=tuple(partners),
        upload_id_secret_file=_path(doc.get("upload_id_secret_file"), base, "upload_id_secret_file"),
        ae_title=ae_title,
        bind_address=doc.get("bind_address", "0.0.0.0"),
        port=port,
        min_free_bytes=min_free,
        tls=Tls(certificate=_path(tls.get("certificate"), base, "tls.certificate"),
                private_key=_path(tls.get("private_key"), base, "tls.private_key"),
                ca_certificates=_path(tls["ca_certificates"], base, "tls.ca_certificates")
                if tls.get("ca_certificates") else None) if tls else None,
        maximum_associations=int(doc.get("maximum_associations", 10)),
        network_timeout_seconds=int(doc.get("network_timeout_seconds", 60)),
    )


def load(path: Path) -> GatewayConfig:
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise GatewayConfigError(f"{path}: not a readable JSON document ({type(error).__name__})") from error
    return from_document(document, Path(path).resolve().parent)
