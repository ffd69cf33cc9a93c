"""The share origin: one CloudFront distribution serving the viewer (OHIF, built by
``make viewer``) and the share page (``/v1/view``) from a private bucket through origin
access control, and routing the rest of the share API (``/v1/*``: ``/redeem``, the
``/share/*`` pages, ``client-zip.js``) to API Gateway, so page, viewer and API share one
origin. Response-headers policies set the viewer's and the page's
Content-Security-Policy (script and style hashes from the build, the page's from
:func:`lambdas.api.page.content_security_policy`), HSTS, nosniff and
``Referrer-Policy: no-referrer``; the edge stack's WAF web ACL guards every path.

The share API stack is deployed first and cannot reference the distribution (a cycle), so
this stack writes what depends on the distribution's address: the share origin, in the
SSM parameter the API function reads to build share links, and the de-identified bucket's
CORS rule, which names that origin only.
"""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from aws_cdk import aws_ssm as ssm
from aws_cdk import custom_resources as cr
from constructs import Construct

from dicomshare_aws import resources
from lambdas.api import page as share_page
from stacks.acknowledge import acknowledge
from stacks.edge import EDGE_REGION, EdgeStack
from stacks.share_api import ORIGIN_VERIFY_HEADER, STAGE_NAME, ShareApiStack
from stacks.storage import StorageStack

VIEWER_BUILD = Path(__file__).resolve().parent.parent / "web" / "build" / "viewer"

SPA_ROUTES = """function handler(event) {
  var request = event.request;
  if (!/\\.[A-Za-z0-9]+$/.test(request.uri)) { request.uri = '/index.html'; }
  return request;
}"""
"""Viewer routes (``/viewer/dicomjson``, …) are the single-page app's ``index.html``."""

SHARE_PAGE_KEY = "share-page.html"
"""The share page (``lambdas/api/view.html``) in the viewer bucket."""
SHARE_PAGE_ROUTE = f"""function handler(event) {{
  event.request.uri = '/{SHARE_PAGE_KEY}';
  return event.request;
}}"""
"""``/v1/view`` is the share page's file: the page the api function serves, from the bucket."""


class WebStack(cdk.Stack):
    def __init__(self, scope: Construct, id: str, *, storage: StorageStack, share_api: ShareApiStack,
                 edge: EdgeStack, share_origin_parameter: str, removal: cdk.RemovalPolicy, **kwargs) -> None:
        super().__init__(scope, id, **kwargs)
        self.add_stack_dependency(edge, "reads the edge stack's web ACL ARN from its SSM parameter")
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

        def headers(id: str, comment: str, policy: str | None = None) -> cloudfront.ResponseHeadersPolicy:
            return cloudfront.ResponseHeadersPolicy(
                self, id, comment=comment,
                security_headers_behavior=cloudfront.ResponseSecurityHeadersBehavior(
                    strict_transport_security=cloudfront.ResponseHeadersStrictTransportSecurity(
                        access_control_max_age=cdk.Duration.days(365), include_subdomains=True, override=True),
                    content_type_options=cloudfront.ResponseHeadersContentTypeOptions(override=True),
                    referrer_policy=cloudfront.ResponseHeadersReferrerPolicy(
                        referrer_policy=cloudfront.HeadersReferrerPolicy.NO_REFERRER, override=True),
                    frame_options=cloudfront.ResponseHeadersFrameOptions(
                        frame_option=cloudfront.HeadersFrameOption.DENY, override=True),
                    content_security_policy=cloudfront.ResponseHeadersContentSecurityPolicy(
                        content_security_policy=policy, override=True) if policy else None,
                ),
            )

        viewer_headers = headers(
            "ViewerHeaders", "dicomshare viewer: CSP with build-time script and style hashes, HSTS, nosniff, no-referrer",
            resources.viewer_content_security_policy(hashes, object_origin))
        page_html = share_page.VIEW_HTML.read_text(encoding="utf-8")
        page_headers = headers(
            "PageHeaders", "dicomshare share page: CSP with its script and style hashes, HSTS, nosniff, no-referrer",
            share_page.content_security_policy(page_html, object_origin))
        api_headers = headers("ApiHeaders", "dicomshare share API: HSTS, nosniff, no-referrer")
        viewer_files = origins.S3BucketOrigin.with_origin_access_control(self.bucket)

        api_domain = f"{share_api.api.rest_api_id}.execute-api.{self.region}.{self.url_suffix}"
        domain = storage.settings.share_domain
        self.distribution = cloudfront.Distribution(
            self, "Distribution",
            comment="dicomshare share origin: viewer (S3) and share API",
            default_behavior=cloudfront.BehaviorOptions(
                origin=viewer_files,
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                response_headers_policy=viewer_headers,
                function_associations=[cloudfront.FunctionAssociation(
                    function=cloudfront.Function(self, "SpaRoutes", code=cloudfront.FunctionCode.from_inline(SPA_ROUTES),
                                                 runtime=cloudfront.FunctionRuntime.JS_2_0),
                    event_type=cloudfront.FunctionEventType.VIEWER_REQUEST)],
            ),
            additional_behaviors={f"/{STAGE_NAME}/view": cloudfront.BehaviorOptions(
                origin=viewer_files,
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                response_headers_policy=page_headers,
                function_associations=[cloudfront.FunctionAssociation(
                    function=cloudfront.Function(self, "SharePageRoute", code=cloudfront.FunctionCode.from_inline(
                        SHARE_PAGE_ROUTE), runtime=cloudfront.FunctionRuntime.JS_2_0),
                    event_type=cloudfront.FunctionEventType.VIEWER_REQUEST)],
            ), f"/{STAGE_NAME}/*": cloudfront.BehaviorOptions(
                origin=origins.HttpOrigin(api_domain, protocol_policy=cloudfront.OriginProtocolPolicy.HTTPS_ONLY,
                                          custom_headers={ORIGIN_VERIFY_HEADER:
                                                          share_api.origin_verify.secret_value.unsafe_unwrap()}),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
                cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
                origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
                response_headers_policy=api_headers,
            )},
            default_root_object="index.html",
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
            price_class=cloudfront.PriceClass.PRICE_CLASS_100,
            web_acl_id=edge_web_acl_arn(self, edge.web_acl_parameter),
            domain_names=[domain.name] if domain else None,
            certificate=acm.Certificate.from_certificate_arn(self, "Certificate", domain.certificate_arn)
            if domain else None,
            minimum_protocol_version=cloudfront.SecurityPolicyProtocol.TLS_V1_2_2021 if domain else None,
        )
        acknowledge(self.distribution, {
            "AwsSolutions-CFR1": "Clinicians open shares from anywhere (second opinions across borders).",
            "AwsSolutions-CFR3": "Access logs: the API stage logs every API request (never the token); viewer "
            "files are public program code.",
            **({} if domain else {"AwsSolutions-CFR4": "The default *.cloudfront.net certificate (no share_domain "
                                   "configured); with share_domain, its certificate and TLS 1.2 minimum."}),
        })

        s3deploy.BucketDeployment(
            self, "ViewerFiles",
            sources=[s3deploy.Source.asset(str(VIEWER_BUILD), exclude=["csp.json"]),
                     s3deploy.Source.data(SHARE_PAGE_KEY, page_html)],
            destination_bucket=self.bucket,
            distribution=self.distribution,
            distribution_paths=["/index.html", "/app-config.js", "/dicomshare-viewer.js", f"/{STAGE_NAME}/view"],
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

        distribution_origin = f"https://{self.distribution.distribution_domain_name}"
        share_origin = f"https://{domain.name}" if domain else distribution_origin
        ssm.StringParameter(self, "ShareOriginParameter", parameter_name=share_origin_parameter,
                            string_value=share_origin,
                            description="Where dicomshare's share links point (read by the API function)")
        page_origin_cors(self, storage, *((share_origin, distribution_origin) if domain else (share_origin,)))
        acknowledge_custom_resource_function(self)

        cdk.CfnOutput(self, "ShareOrigin", value=share_origin)
        cdk.CfnOutput(self, "DistributionDomainName", value=self.distribution.distribution_domain_name)
        cdk.CfnOutput(self, "SharePageUrl", value=f"{share_origin}/{STAGE_NAME}/view")


AWS_CUSTOM_RESOURCE_FUNCTION = "AWS679f53fac002430cb0da5b7982bd2287"
"""Construct id of the singleton function behind every ``AwsCustomResource`` of a stack."""
DEPLOY_TIME = ("CDK's AwsCustomResource function, run by CloudFormation only while this stack deploys, to make "
               "one SDK call; it handles no data and no request.")


def edge_web_acl_arn(stack: cdk.Stack, parameter: str) -> str:
    """The edge stack's web ACL ARN, read from its SSM parameter in us-east-1 while this
    stack deploys (one ``GetParameter`` call; the ARN is stable: the ACL has a generated
    name and a fixed scope, so CloudFormation never replaces it)."""
    call = cr.AwsSdkCall(
        service="SSM", action="getParameter", parameters={"Name": parameter}, region=EDGE_REGION,
        physical_resource_id=cr.PhysicalResourceId.of(parameter), output_paths=["Parameter.Value"],
    )
    reader = cr.AwsCustomResource(
        stack, "EdgeWebAclArn",
        on_create=call, on_update=call,
        policy=cr.AwsCustomResourcePolicy.from_statements([iam.PolicyStatement(
            actions=["ssm:GetParameter"],
            resources=[stack.format_arn(service="ssm", region=EDGE_REGION, resource="parameter",
                                        resource_name=parameter.lstrip("/"))])]),
        install_latest_aws_sdk=False,
    )
    acknowledge(reader, {"HIPAA.Security-IAMNoInlinePolicy": "The custom resource's own policy: ssm:GetParameter "
                         "on the edge stack's one parameter, attached to CDK's deploy-time function alone."})
    return reader.get_response_field("Parameter.Value")


def page_origin_cors(stack: cdk.Stack, storage: StorageStack, *origins: str) -> cr.AwsCustomResource:
    """CORS on the de-identified bucket for the share origin's names only (``GET``/``HEAD``,
    which the page's in-browser ZIP download and the viewer need). The bucket is in the
    storage stack and the distribution, whose domain makes the origin, is created after it,
    so this stack sets the rule with one ``PutBucketCors`` call when it is deployed."""
    call = cr.AwsSdkCall(
        service="S3",
        action="putBucketCors",
        parameters={"Bucket": storage.deid_bucket.bucket_name, "CORSConfiguration": resources.page_cors(*origins)},
        physical_resource_id=cr.PhysicalResourceId.of("deidentified-bucket-cors"),
    )
    cors = cr.AwsCustomResource(
        stack, "DeidentifiedBucketCors",
        on_create=call, on_update=call,
        policy=cr.AwsCustomResourcePolicy.from_statements([iam.PolicyStatement(
            actions=["s3:PutBucketCORS"], resources=[storage.imported_arns["DeidentifiedBucketArn"]])]),
        install_latest_aws_sdk=False,
    )
    acknowledge(cors, {"HIPAA.Security-IAMNoInlinePolicy": "The custom resource's own policy: s3:PutBucketCORS "
                       "on the de-identified bucket only, attached to CDK's deploy-time function alone."})
    return cors


def acknowledge_custom_resource_function(stack: cdk.Stack) -> None:
    """The findings on the function CDK runs for the stack's ``AwsCustomResource`` calls."""
    acknowledge(stack.node.find_child(AWS_CUSTOM_RESOURCE_FUNCTION), {
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]":
            DEPLOY_TIME + " Its role (CloudWatch Logs only) is defined by CDK.",
        "HIPAA.Security-LambdaConcurrency": DEPLOY_TIME + " Invoked once per deployment.",
        "HIPAA.Security-LambdaDLQ": DEPLOY_TIME + " CloudFormation reports a failure and rolls back.",
        "HIPAA.Security-LambdaInsideVPC": DEPLOY_TIME + " It reaches only the S3 and SSM APIs.",
    })
