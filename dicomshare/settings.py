"""Deployment configuration: one versioned document, read the same way everywhere.

The document is the ``dicomshare`` key of ``cdk.json``'s context (see the README's
"Configuration" section). The CDK app reads it from the context and hands it to every
Lambda as the JSON environment variable :data:`CONFIG_ENV`; the local system reads
``cdk.json`` directly and sets the same variable. Handlers call :func:`from_environment`.

Resource names (buckets, queue, table, secret, event bus) are not configuration: CDK
generates them and passes them in the environment variables named below.
"""

from __future__ import annotations

import hashlib
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
SHARE_ORIGIN_PARAMETER_ENV = "SHARE_ORIGIN_PARAMETER"

PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
ACCOUNT_ID = re.compile(r"^\d{12}$")
EXTERNAL_ID = re.compile(r"^[\w+=,.@:/-]{16,1224}$")
"""sts:ExternalId: IAM allows 2-1224 of these characters; at least 16 so it is not guessable."""
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$")
"""An IAM role ARN (with an optional path): account id and role name as groups."""
DOMAIN_NAME = re.compile(r"^(?=.{4,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
US_EAST_1_CERTIFICATE_ARN = re.compile(r"^arn:aws[a-z-]*:acm:us-east-1:\d{12}:certificate/[0-9a-f-]{36}$")
ASSUMED_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:sts::(\d{12}):assumed-role/([\w+=,.@-]{1,64})/[\w+=,.@-]+$")
"""The caller ARN of a session of a role (API Gateway's ``userArn``): the role's path is not in it."""

DEFAULT_OPTIONS = ("rtnLongModifDatesOpt", "cleanDescOpt")
"""PS3.15 E.3 options applied when a partner names none: the clinician-sharing profile."""


FUNCTIONS = ("ingest", "preview", "counts", "reconcile", "api")
"""The Lambda functions whose reserved concurrency the document may set."""
SQS_CONSUMERS = ("ingest", "preview")
"""Functions behind an SQS event source, whose maximum concurrency must be at least 2."""
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
class ShareDomain:
    """The share origin's own domain name (``"share_domain": {"name", "certificate_arn"}``):
    CloudFront answers on it with that ACM certificate (CloudFront takes certificates from
    us-east-1 only), share links name it, and the de-identified bucket's CORS allows it
    besides the distribution's own name. The DNS record pointing it at the distribution is
    the operator's (docs/deployment.md)."""

    name: str
    certificate_arn: str


@dataclass(frozen=True)
class Partner:
    """A system allowed to upload under ``<id>/`` in the ingest bucket."""

    id: str
    principal: str | None = None
    """AWS account id or role ARN allowed to assume the partner's upload role."""
    external_id: str | None = None
    """The ``sts:ExternalId`` the partner must present to assume its upload role: required
    when ``principal`` is an account (a vendor uploading for several hospitals cannot be
    tricked into using one hospital's role for another: the confused deputy)."""
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

    def role_name(self, environment: str, region: str) -> str:
        """Name of the partner's IAM role (uploads, ``GET /receipts``) in ``environment`` and
        ``region``: derived, not configured, so the API recognises a partner caller by the
        role in its signed identity. At most 61 characters (IAM allows 64)."""
        return f"dicomshare-{environment}-p-{hashlib.sha256(self.id.encode()).hexdigest()[:16]}-{region}"


@dataclass(frozen=True)
class GatewayService:
    """The optional hosted DICOM gateway (``stacks/gateway_service.py``) for partners that
    reach AWS over a VPN: off unless the document has ``"gateway": {"enabled": true, ...}``."""

    image: str
    """Container image URI of the gateway (built from ``gateway.Dockerfile``, pushed to ECR)."""
    calling_ae_titles: Mapping[str, tuple[str, ...]]
    """Partner id -> the calling AE titles its systems use."""
    allowed_cidrs: tuple[str, ...]
    """Networks (the partners' VPN ranges) allowed to reach the DICOM port."""
    vpc_cidr: str = "10.80.0.0/16"
    port: int = 11112
    ae_title: str = "DICOMSHARE"

    @staticmethod
    def task_role_name(environment: str, region: str) -> str:
        """Name of the hosted gateway's task role: fixed in advance, so the partner roles
        (storage stack, deployed first) can trust it by ARN before it exists. At most 64
        characters."""
        return f"dicomshare-{environment}-gateway-task-{region}"


@dataclass(frozen=True)
class Settings:
    environment: str = "dev"
    partners: tuple[Partner, ...] = ()
    admins: tuple[str, ...] = ()
    """Role ARNs whose sessions may call the admin routes (shares, studies): the API's
    resource policy and the API function both allow exactly these."""
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
    reserved_concurrency: Mapping[str, int] = field(default_factory=dict)
    """Reserved concurrent executions per function (:data:`FUNCTIONS`); a function left out
    reserves none and draws on the account's unreserved pool (docs/deployment.md)."""
    gateway: GatewayService | None = None
    share_domain: ShareDomain | None = None

    def partner(self, partner_id: str) -> Partner | None:
        return next((p for p in self.partners if p.id == partner_id), None)

    def is_admin(self, caller_arn: str | None) -> bool:
        """Whether an API caller (``requestContext.identity.userArn``: a role session
        ``arn:aws:sts::<account>:assumed-role/<role>/<session>``, or the role ARN itself)
        is a session of one of :attr:`admins`."""
        caller = ASSUMED_ROLE_ARN.match(caller_arn or "") or ROLE_ARN.match(caller_arn or "")
        if caller is None:
            return False
        return any((m := ROLE_ARN.match(a)) and m.groups() == caller.groups() for a in self.admins)

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
            {"id": p.id, "principal": p.principal, "options": list(p.options),
             "pixel_opt_in": list(p.pixel_opt_in), "keep_free_text": p.keep_free_text,
             **({"external_id": p.external_id} if p.external_id else {})}
            for p in settings.partners
        ],
        "admins": list(settings.admins),
        "max_object_bytes": settings.max_object_bytes,
        "share_min_seconds": settings.share_min_seconds,
        "share_max_seconds": settings.share_max_seconds,
        "share_default_seconds": settings.share_default_seconds,
        "presign_seconds": settings.presign_seconds,
        "allow_burned_in_annotation": settings.allow_burned_in_annotation,
        "high_risk_sop_classes": list(settings.high_risk_sop_classes),
        "retention": dict(settings.retention),
        "reserved_concurrency": dict(settings.reserved_concurrency),
        **({"gateway": {"enabled": True, "image": settings.gateway.image,
                        "calling_ae_titles": {k: list(v) for k, v in settings.gateway.calling_ae_titles.items()},
                        "allowed_cidrs": list(settings.gateway.allowed_cidrs), "vpc_cidr": settings.gateway.vpc_cidr,
                        "port": settings.gateway.port, "ae_title": settings.gateway.ae_title}}
           if settings.gateway else {}),
        **({"share_domain": {"name": settings.share_domain.name, "certificate_arn": settings.share_domain.certificate_arn}}
           if settings.share_domain else {}),
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
        principal, external_id = p.get("principal"), p.get("external_id")
        if principal is not None and not (ACCOUNT_ID.match(str(principal)) or ROLE_ARN.match(str(principal))):
            raise ConfigError(f"partners[{i}].principal: an AWS account id (12 digits) or an IAM role ARN")
        if external_id is not None and not EXTERNAL_ID.match(str(external_id)):
            raise ConfigError(f"partners[{i}].external_id: 16-1224 characters of letters, digits and +=,.@:/-")
        if principal is not None and ACCOUNT_ID.match(str(principal)) and not external_id:
            raise ConfigError(f"partners[{i}].external_id: required when the principal is an account")
        partners.append(Partner(id=pid, principal=principal, external_id=external_id,
                                options=tuple(p.get("options", DEFAULT_OPTIONS)),
                                pixel_opt_in=tuple(p.get("pixel_opt_in", ())),
                                keep_free_text=bool(p.get("keep_free_text", False))))
    if len({p.id for p in partners}) != len(partners):
        raise ConfigError("partners: ids must be unique")
    admins = tuple(doc.get("admins", ()))
    for i, arn in enumerate(admins):
        if not isinstance(arn, str) or not ROLE_ARN.match(arn):
            raise ConfigError(f"admins[{i}]: an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
    settings = Settings(
        environment=doc.get("environment", defaults.environment),
        partners=tuple(partners),
        admins=admins,
        max_object_bytes=int(doc.get("max_object_bytes", defaults.max_object_bytes)),
        share_min_seconds=int(doc.get("share_min_seconds", defaults.share_min_seconds)),
        share_max_seconds=int(doc.get("share_max_seconds", defaults.share_max_seconds)),
        share_default_seconds=int(doc.get("share_default_seconds", defaults.share_default_seconds)),
        presign_seconds=int(doc.get("presign_seconds", defaults.presign_seconds)),
        allow_burned_in_annotation=bool(doc.get("allow_burned_in_annotation", False)),
        high_risk_sop_classes=tuple(doc.get("high_risk_sop_classes", defaults.high_risk_sop_classes)),
        retention={**defaults.retention, **doc.get("retention", {})},
        reserved_concurrency=_reserved_concurrency(doc.get("reserved_concurrency") or {}),
        gateway=_gateway_service(doc.get("gateway") or {}, {p.id for p in partners}),
        share_domain=_share_domain(doc["share_domain"]) if doc.get("share_domain") is not None else None,
    )
    if not re.match(r"^[a-z][a-z0-9]{1,15}$", settings.environment):
        raise ConfigError("environment: 2-16 lower-case letters and digits, starting with a letter")
    if not settings.share_min_seconds <= settings.share_default_seconds <= settings.share_max_seconds:
        raise ConfigError("share_*_seconds: need min <= default <= max")
    return settings


def _reserved_concurrency(doc: Mapping[str, Any]) -> dict[str, int]:
    """``{"ingest": 20, "counts": null, ...}`` -> the functions that reserve concurrency."""
    reserved = {}
    for name, value in doc.items():
        if name not in FUNCTIONS:
            raise ConfigError(f"reserved_concurrency.{name}: not a function ({', '.join(FUNCTIONS)})")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name in SQS_CONSUMERS else 1):
            raise ConfigError(f"reserved_concurrency.{name}: null or an integer of at least "
                              f"{2 if name in SQS_CONSUMERS else 1} (SQS event sources run at least 2 at once)")
        reserved[name] = value
    return reserved


def _gateway_service(doc: Mapping[str, Any], partner_ids: set[str]) -> GatewayService | None:
    if not doc.get("enabled"):
        return None
    if not doc.get("image"):
        raise ConfigError("gateway.image: the gateway's container image URI is required when enabled")
    titles = {k: tuple(v) for k, v in (doc.get("calling_ae_titles") or {}).items()}
    if not titles or not set(titles) <= partner_ids or not all(titles.values()):
        raise ConfigError("gateway.calling_ae_titles: {partner id: [AE titles]} of configured partners")
    if not doc.get("allowed_cidrs"):
        raise ConfigError("gateway.allowed_cidrs: the networks (VPN ranges) that may reach the gateway")
    defaults = GatewayService(image="", calling_ae_titles={}, allowed_cidrs=())
    return GatewayService(image=doc["image"], calling_ae_titles=titles, allowed_cidrs=tuple(doc["allowed_cidrs"]),
                          vpc_cidr=doc.get("vpc_cidr", defaults.vpc_cidr), port=int(doc.get("port", defaults.port)),
                          ae_title=doc.get("ae_title", defaults.ae_title))


def _share_domain(doc: Mapping[str, Any]) -> ShareDomain:
    name, certificate = doc.get("name"), doc.get("certificate_arn")
    if not isinstance(name, str) or not DOMAIN_NAME.match(name):
        raise ConfigError("share_domain.name: a lower-case DNS name such as share.example.org")
    if not isinstance(certificate, str) or not US_EAST_1_CERTIFICATE_ARN.match(certificate):
        raise ConfigError("share_domain.certificate_arn: an ACM certificate ARN in us-east-1 (CloudFront's region) "
                          "covering the name")
    return ShareDomain(name=name, certificate_arn=certificate)


def from_environment(environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings a Lambda handler (or the local system) was started with."""
    raw = environ.get(CONFIG_ENV)
    return from_document(json.loads(raw)) if raw else Settings()
