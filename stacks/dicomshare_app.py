"""The dicomshare CDK app: which configuration document, which removal policies, the five
stacks and how they reference each other (storage <- ingest <- share API <- web, no cycles;
edge, pinned to us-east-1, <- web through an SSM parameter), and the optional hosted DICOM
gateway (storage <- gateway), when the configuration enables it.
"""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk

from dicomshare.settings import ConfigError, Settings, from_document
from dicomshare_aws import resources
from stacks.edge import EdgeStack
from stacks.gateway_service import GatewayServiceStack
from stacks.ingest import IngestStack
from stacks.share_api import ShareApiStack
from stacks.storage import StorageStack
from stacks.web import WebStack

CONTEXT_KEY = "dicomshare"
"""``cdk.json`` context: the default configuration document (the local system reads it too)."""
ENV_CONTEXT_KEY = "dicomshare_env"
"""``-c dicomshare_env=prod`` selects the document under ``dicomshare:prod`` instead."""

CONFIG_ENV_BUDGET = 3072
"""Bytes the configuration may take in a function's environment: Lambda allows 4 KB for all
variables, and the resource names and Powertools settings need the rest."""

RETAINED_ENVIRONMENTS = frozenset({"prod"})
"""Environments whose keys, buckets, table and secret outlive ``cdk destroy``."""


@dataclass(frozen=True)
class DicomshareStacks:
    storage: StorageStack
    ingest: IngestStack
    share_api: ShareApiStack
    web: WebStack
    edge: EdgeStack
    gateway: GatewayServiceStack | None = None


def configuration(app: cdk.App) -> Settings:
    """The configuration document selected by the context, validated."""
    environment = app.node.try_get_context(ENV_CONTEXT_KEY)
    key = f"{CONTEXT_KEY}:{environment}" if environment else CONTEXT_KEY
    document = app.node.try_get_context(key)
    if document is None:
        raise ConfigError(f"context: no configuration document under {key!r} (see docs/deployment.md)")
    settings = from_document(document)
    if environment and settings.environment != environment:
        raise ConfigError(f"{key}.environment: expected {environment!r}, got {settings.environment!r}")
    if len(settings.to_json().encode()) > CONFIG_ENV_BUDGET:
        raise ConfigError(f"{key}: more than {CONFIG_ENV_BUDGET} bytes as JSON, too large for Lambda's 4 KB "
                          "environment (fewer partners, or shorter principals and option lists)")
    return settings


def removal_policy(settings: Settings) -> cdk.RemovalPolicy:
    return cdk.RemovalPolicy.RETAIN if settings.environment in RETAINED_ENVIRONMENTS else cdk.RemovalPolicy.DESTROY


def build(app: cdk.App) -> DicomshareStacks:
    settings = configuration(app)
    removal = removal_policy(settings)
    prefix = f"dicomshare-{settings.environment}"
    storage = StorageStack(app, f"{prefix}-storage", settings=settings, removal=removal,
                           description=f"dicomshare {settings.environment}: buckets, index table, secret, partner roles")
    ingest = IngestStack(app, f"{prefix}-ingest", storage=storage, removal=removal,
                         description=f"dicomshare {settings.environment}: ingest, preview and counts pipeline")
    share_origin = resources.share_origin_parameter(prefix)
    share_api = ShareApiStack(app, f"{prefix}-share-api", storage=storage, bus=ingest.bus,
                              share_origin_parameter=share_origin, removal=removal,
                              description=f"dicomshare {settings.environment}: share API and clinician page")
    edge = EdgeStack(app, f"{prefix}-edge", settings=settings, removal=removal,
                     description=f"dicomshare {settings.environment}: share origin's WAF web ACL (us-east-1)")
    web = WebStack(app, f"{prefix}-web", storage=storage, share_api=share_api, edge=edge,
                   share_origin_parameter=share_origin, removal=removal,
                   description=f"dicomshare {settings.environment}: share origin (CloudFront: viewer and share API)")
    gateway = GatewayServiceStack(
        app, f"{prefix}-gateway", storage=storage, service=settings.gateway, removal=removal,
        description=f"dicomshare {settings.environment}: hosted DICOM gateway for partners over VPN",
    ) if settings.gateway else None
    for stack in (storage, ingest, share_api, edge, web, gateway):
        if stack is not None:
            cdk.Tags.of(stack).add("application", "dicomshare")
            cdk.Tags.of(stack).add("environment", settings.environment)
    return DicomshareStacks(storage, ingest, share_api, web, edge, gateway)
