"""Deployment configuration: one versioned document, read the same way everywhere.

The document is the ``dicomshare`` key of ``cdk.json``'s context (see the README's
"Configuration" section). The CDK app reads it from the context and hands it to every
Lambda as the JSON environment variable :data:`CONFIG_ENV`; the local system reads
``cdk.json`` directly and sets the same variable. Handlers call :func:`from_environment`.

Resource names (buckets, queue, table, secret, event bus) are not configuration: CDK
generates them and passes them in the environment variables named below.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

CONFIG_VERSION = 1

CONFIG_ENV = "DICOMSHARE_CONFIG"
INGEST_BUCKET_ENV = "INGEST_BUCKET"
DEID_BUCKET_ENV = "DEID_BUCKET"
QUARANTINE_BUCKET_ENV = "QUARANTINE_BUCKET"
TABLE_NAME_ENV = "TABLE_NAME"
DEID_SECRET_ARN_ENV = "DEID_SECRET_ARN"
EVENT_BUS_NAME_ENV = "EVENT_BUS_NAME"

PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")

DEFAULT_OPTIONS = ("rtnLongModifDatesOpt", "cleanDescOpt")
"""PS3.15 E.3 options applied when a partner names none: the clinician-sharing profile."""


HIGH_RISK_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
    "1.2.840.10008.5.1.4.1.1.6.3",  # Photoacoustic Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video Endoscopic Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.2",  # VL Microscopic Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.2.1",  # Video Microscopic Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.3",  # VL Slide-Coordinates Microscopic Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.5.1",  # Ophthalmic Photography 8 Bit Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.5.2",  # Ophthalmic Photography 16 Bit Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.6",  # VL Whole Slide Microscopy Image Storage (slide labels)
    "1.2.840.10008.5.1.4.1.1.77.1.7",  # Dermoscopic Photography Image Storage
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF Storage
    "1.2.840.10008.5.1.4.1.1.104.2",  # Encapsulated CDA Storage
)
"""Classes whose pixels (or documents) are likely to show identifying text or faces: refused
unless Burned In Annotation is exactly ``NO`` (never for the encapsulated documents) or the
partner opts in (:attr:`Partner.pixel_opt_in`)."""


class ConfigError(ValueError):
    """The configuration document is invalid; the message names the field."""


@dataclass(frozen=True)
class Partner:
    """A system allowed to upload under ``<id>/`` in the ingest bucket."""

    id: str
    principal: str | None = None
    """AWS account id or role ARN allowed to assume the partner's upload role."""
    options: tuple[str, ...] = DEFAULT_OPTIONS
    """PS3.15 E.3 option keys (as in the Table E.1-1 data) for this partner's uploads."""
    pixel_opt_in: tuple[str, ...] = ()
    """SOP classes of :attr:`Settings.high_risk_sop_classes` this partner vouches for: its
    objects of these classes are accepted without Burned In Annotation ``NO``."""
    keep_free_text: bool = False
    """Under Clean Descriptors, also keep (cleaned) histories and comments (see
    docs/deidentification.md); by default they are removed."""

    @property
    def prefix(self) -> str:
        return f"{self.id}/"


@dataclass(frozen=True)
class Settings:
    environment: str = "dev"
    partners: tuple[Partner, ...] = ()
    max_object_bytes: int = 4 * 1024**3
    share_min_seconds: int = 300
    share_max_seconds: int = 30 * 24 * 3600
    share_default_seconds: int = 7 * 24 * 3600
    presign_seconds: int = 900
    allow_burned_in_annotation: bool = False
    high_risk_sop_classes: tuple[str, ...] = HIGH_RISK_SOP_CLASSES
    pixel_opt_in: tuple[str, ...] = ()
    """Not in the document: the opt-in of the partner whose upload is processed
    (:meth:`for_partner`)."""
    retention: Mapping[str, int] = field(
        default_factory=lambda: {
            "ingest_linger_days": 7,
            "quarantine_days": 90,
            "noncurrent_version_days": 30,
            "log_days": 365,
        }
    )

    def partner(self, partner_id: str) -> Partner | None:
        return next((p for p in self.partners if p.id == partner_id), None)

    def for_partner(self, partner: Partner) -> Settings:
        """The settings for one partner's uploads: with its :attr:`Partner.pixel_opt_in`."""
        return replace(self, pixel_opt_in=partner.pixel_opt_in)

    def to_json(self) -> str:
        return json.dumps(to_document(self), sort_keys=True)


def to_document(settings: Settings) -> dict[str, Any]:
    return {
        "version": CONFIG_VERSION,
        "environment": settings.environment,
        "partners": [
            {
                "id": p.id,
                "principal": p.principal,
                "options": list(p.options),
                "pixel_opt_in": list(p.pixel_opt_in),
                "keep_free_text": p.keep_free_text,
            }
            for p in settings.partners
        ],
        "max_object_bytes": settings.max_object_bytes,
        "share_min_seconds": settings.share_min_seconds,
        "share_max_seconds": settings.share_max_seconds,
        "share_default_seconds": settings.share_default_seconds,
        "presign_seconds": settings.presign_seconds,
        "allow_burned_in_annotation": settings.allow_burned_in_annotation,
        "high_risk_sop_classes": list(settings.high_risk_sop_classes),
        "retention": dict(settings.retention),
    }


def from_document(doc: Mapping[str, Any]) -> Settings:
    """Validate and load a configuration document (the ``dicomshare`` context value)."""
    version = doc.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(f"version: expected {CONFIG_VERSION}, got {version!r}")
    defaults = Settings()
    partners = []
    for i, p in enumerate(doc.get("partners", [])):
        pid = p.get("id", "")
        if not PARTNER_ID.match(pid):
            raise ConfigError(f"partners[{i}].id: lower-case letters, digits and '-' only")
        partners.append(
            Partner(
                id=pid,
                principal=p.get("principal"),
                options=tuple(p.get("options", DEFAULT_OPTIONS)),
                pixel_opt_in=tuple(p.get("pixel_opt_in", ())),
                keep_free_text=bool(p.get("keep_free_text", False)),
            )
        )
    if len({p.id for p in partners}) != len(partners):
        raise ConfigError("partners: ids must be unique")
    settings = Settings(
        environment=doc.get("environment", defaults.environment),
        partners=tuple(partners),
        max_object_bytes=int(doc.get("max_object_bytes", defaults.max_object_bytes)),
        share_min_seconds=int(doc.get("share_min_seconds", defaults.share_min_seconds)),
        share_max_seconds=int(doc.get("share_max_seconds", defaults.share_max_seconds)),
        share_default_seconds=int(doc.get("share_default_seconds", defaults.share_default_seconds)),
        presign_seconds=int(doc.get("presign_seconds", defaults.presign_seconds)),
        allow_burned_in_annotation=bool(doc.get("allow_burned_in_annotation", False)),
        high_risk_sop_classes=tuple(doc.get("high_risk_sop_classes", defaults.high_risk_sop_classes)),
        retention={**defaults.retention, **doc.get("retention", {})},
    )
    if not re.match(r"^[a-z][a-z0-9]{1,15}$", settings.environment):
        raise ConfigError("environment: 2-16 lower-case letters and digits, starting with a letter")
    if not settings.share_min_seconds <= settings.share_default_seconds <= settings.share_max_seconds:
        raise ConfigError("share_*_seconds: need min <= default <= max")
    return settings


def from_environment(environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings a Lambda handler (or the local system) was started with."""
    raw = environ.get(CONFIG_ENV)
    return from_document(json.loads(raw)) if raw else Settings()
