"""The share origin's edge: CloudFront's WAF web ACL, which AWS accepts only with the
``CLOUDFRONT`` scope in us-east-1, so this stack is pinned there whatever region the rest
of the app is deployed to. Its rules are the API stage's (:func:`stacks.share_api.web_acl`)
plus a per-client-IP limit on the viewer's files; its logs stay in us-east-1, encrypted,
with tokens and PINs redacted.

The web stack (another region, or none known when the app is synthesized) cannot take the
ACL's ARN as a CloudFormation reference: CDK's ``cross_region_references`` needs an
explicit region on both stacks, and pinning the web stack pins the whole app. So this
stack writes the ARN into an SSM parameter whose name is known in advance
(:attr:`EdgeStack.web_acl_parameter`), and the web stack reads it from us-east-1 while it
deploys (:func:`stacks.web.edge_web_acl_arn`).
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_kms as kms
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from dicomshare.settings import Settings
from stacks.python_function import allow_cloudwatch_logs
from stacks.share_api import web_acl, web_acl_logging

EDGE_REGION = "us-east-1"
"""The only region where WAF takes CloudFront web ACLs."""


class EdgeStack(cdk.Stack):
    def __init__(self, scope: Construct, id: str, *, settings: Settings, removal: cdk.RemovalPolicy,
                 **kwargs) -> None:
        super().__init__(scope, id, env=cdk.Environment(region=EDGE_REGION), **kwargs)
        name = f"dicomshare-{settings.environment}-share-origin"
        logs_key = kms.Key(self, "WafLogsKey", description="dicomshare share origin's WAF logs",
                           enable_key_rotation=True, removal_policy=removal)
        allow_cloudwatch_logs(logs_key)
        self.web_acl = web_acl(self, "WebAcl", name=name, waf_scope="CLOUDFRONT")
        web_acl_logging(self, self.web_acl, log_group=f"aws-waf-logs-{name}", key=logs_key, settings=settings,
                        removal=removal)
        self.web_acl_parameter = f"/dicomshare-{settings.environment}/share-origin-web-acl-arn"
        ssm.StringParameter(self, "WebAclArn", parameter_name=self.web_acl_parameter,
                            string_value=self.web_acl.attr_arn,
                            description="ARN of the share origin's CloudFront web ACL, read by the web stack")
        cdk.CfnOutput(self, "WebAclArnOutput", value=self.web_acl.attr_arn)
