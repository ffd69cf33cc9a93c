"""cdk-nag acknowledgements: every finding the stacks accept, with the reason it is accepted.

cdk-nag v3 reports through CDK's policy validation (``Validations.of(app).add_plugins``);
a finding is acknowledged on the construct it is reported for (or a parent) by its exact
id, e.g. ``AwsSolutions-IAM5[Resource::*]``.
"""

from __future__ import annotations

from typing import Mapping

import aws_cdk as cdk
from constructs import IConstruct


def acknowledge(construct: IConstruct, reasons: Mapping[str, str]) -> None:
    """Acknowledge findings on ``construct``: rule or finding id -> why it is accepted."""
    cdk.Validations.of(construct).acknowledge(
        *(cdk.Acknowledgment(id=id, reason=reason) for id, reason in reasons.items())
    )


def object_wildcard(exported_arn: str, pattern: str) -> str:
    """Finding id of a grant on ``<ARN exported as exported_arn>/<pattern>`` (AwsSolutions-IAM5)."""
    return f"AwsSolutions-IAM5[Resource::{exported_arn}/{pattern}]"
