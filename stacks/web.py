"""The share origin: one CloudFront distribution serving the viewer (OHIF, built by
``make viewer``) from a private bucket through origin access control, and routing the
share API (``/v1/*``: the share page, ``/redeem``, the ``/share/*`` pages) to API Gateway,
so page, viewer and API share one origin. A response-headers policy sets the viewer's
Content-Security-Policy (script hashes from the build), HSTS, nosniff and
``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from constructs import Construct

from dicomshare_aws import resources
from stacks.acknowledge import acknowledge
from stacks.share_api import STAGE_NAME, ShareApiStack
from stacks.storage import StorageStack

VIEWER_BUILD = Path(__file__).resolve().parent.parent / "web" / "build" / "viewer"

SPA_ROUTES = """function handler(event) {
  var request = event.request;
  if (!/\\.[A-Za-z0-9]+$/.test(request.uri)) { request.uri = '/index.html'; }
  return request;
}"""
"""Viewer routes (``/viewer/dicomjson``, …) are the single-page app's ``index.html``."""


class WebStack(cdk.Stack):
    def __init__(self, scope: Construct, id: str, *, storage: StorageStack, share_api: ShareApiStack,
                 removal: cdk.RemovalPolicy, **kwargs) -> None:
        super().__init__(scope, id, **kwargs)
        hashes = json.loads((VIEWER_BUILD / "csp.json").read_text())
        deid_bucket = cdk.Fn.select(5, cdk.Fn.split(":", storage.imported_arns["DeidentifiedBucketArn"]))
        object_origin = f"https://{deid_bucket}.s3.{self.region}.{self.url_suffix}"

        self.bucket = s3.Bucket(
            self, "ViewerBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            removal_policy=removal,
        )
        acknowledge(self.bucket, {
            rule: "Holds only the viewer's public program files (OHIF's npm build and our configuration), no "
            "patient data; versioned, private, reached only by CloudFront through origin access control."
            for rule in ("AwsSolutions-S1", "HIPAA.Security-S3BucketLoggingEnabled",
                         "HIPAA.Security-S3BucketReplicationEnabled", "HIPAA.Security-S3DefaultEncryptionKMS")
        })

        security = cloudfront.ResponseSecurityHeadersBehavior(
            strict_transport_security=cloudfront.ResponseHeadersStrictTransportSecurity(
                access_control_max_age=cdk.Duration.days(365), include_subdomains=True, override=True),
            content_type_options=cloudfront.ResponseHeadersContentTypeOptions(override=True),
            referrer_policy=cloudfront.ResponseHeadersReferrerPolicy(
                referrer_policy=cloudfront.HeadersReferrerPolicy.NO_REFERRER, override=True),
            frame_options=cloudfront.ResponseHeadersFrameOptions(
                frame_option=cloudfront.HeadersFrameOption.DENY, override=True),
        )
        viewer_headers = cloudfront.ResponseHeadersPolicy(
            self, "ViewerHeaders",
            comment="dicomshare viewer: CSP with build-time script hashes, HSTS, nosniff, no-referrer",
            security_headers_behavior=cloudfront.ResponseSecurityHeadersBehavior(
                **{k: getattr(security, k) for k in ("strict_transport_security", "content_type_options",
                                                     "referrer_policy", "frame_options")},
                content_security_policy=cloudfront.ResponseHeadersContentSecurityPolicy(
                    content_security_policy=resources.viewer_content_security_policy(hashes, object_origin),
                    override=True),
            ),
        )
        api_headers = cloudfront.ResponseHeadersPolicy(
            self, "ApiHeaders", comment="dicomshare API and share page: HSTS, nosniff, no-referrer "
            "(the page's CSP comes from the function)", security_headers_behavior=security)

        api_domain = f"{share_api.api.rest_api_id}.execute-api.{self.region}.{self.url_suffix}"
        self.distribution = cloudfront.Distribution(
            self, "Distribution",
            comment="dicomshare share origin: viewer (S3) and share API",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.S3BucketOrigin.with_origin_access_control(self.bucket),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                response_headers_policy=viewer_headers,
                function_associations=[cloudfront.FunctionAssociation(
                    function=cloudfront.Function(self, "SpaRoutes", code=cloudfront.FunctionCode.from_inline(SPA_ROUTES),
                                                 runtime=cloudfront.FunctionRuntime.JS_2_0),
                    event_type=cloudfront.FunctionEventType.VIEWER_REQUEST)],
            ),
            additional_behaviors={f"/{STAGE_NAME}/*": cloudfront.BehaviorOptions(
                origin=origins.HttpOrigin(api_domain, protocol_policy=cloudfront.OriginProtocolPolicy.HTTPS_ONLY),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
                cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
                origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
                response_headers_policy=api_headers,
            )},
            default_root_object="index.html",
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
            price_class=cloudfront.PriceClass.PRICE_CLASS_100,
        )
        acknowledge(self.distribution, {
            "AwsSolutions-CFR1": "Clinicians open shares from anywhere (second opinions across borders).",
            "AwsSolutions-CFR2": "Share API requests pass the API stage's regional WAF (redeem rate limit); a "
            "CloudFront-scoped web ACL must live in us-east-1 and is not yet part of this app.",
            "AwsSolutions-CFR3": "Access logs: the API stage logs every API request (never the token); viewer "
            "files are public program code.",
            "AwsSolutions-CFR4": "The default *.cloudfront.net certificate; a custom domain brings its own "
            "certificate and TLS 1.2 minimum.",
        })

        s3deploy.BucketDeployment(
            self, "ViewerFiles",
            sources=[s3deploy.Source.asset(str(VIEWER_BUILD), exclude=["csp.json"])],
            destination_bucket=self.bucket,
            distribution=self.distribution,
            distribution_paths=["/index.html", "/app-config.js", "/dicomshare-viewer.js"],
            memory_limit=512,
        )
        acknowledge(self, {
            rule: "CDK's BucketDeployment function, run once per deployment to copy the viewer's files into "
            "its bucket; it handles no patient data."
            for rule in (
                "AwsSolutions-L1", "HIPAA.Security-LambdaConcurrency", "HIPAA.Security-LambdaDLQ",
                "HIPAA.Security-LambdaInsideVPC", "HIPAA.Security-IAMNoInlinePolicy",
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
                *(f"AwsSolutions-IAM5[Action::s3:{action}*]" for action in ("Abort", "DeleteObject", "GetBucket",
                                                                           "GetObject", "List")),
                "AwsSolutions-IAM5[Resource::*]",
                "AwsSolutions-IAM5[Resource::<ViewerBucketC34045E1.Arn>/*]",
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-<AWS::Region>/*]",
            )
        })

        cdk.CfnOutput(self, "ShareOrigin", value=f"https://{self.distribution.distribution_domain_name}")
        cdk.CfnOutput(self, "SharePageUrl", value=f"https://{self.distribution.distribution_domain_name}/{STAGE_NAME}/view")
