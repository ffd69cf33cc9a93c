"""Share API: the REST API (IAM-authorized admin routes limited to the named admin roles,
public share-token routes), its WAF web ACL (AWS managed rule groups, per-client-IP rate
limits on the public paths; the same rules guard the share origin, :mod:`stacks.edge`),
access logs, throttling and tracing, and
the api function: reads the index, writes only share/token/audit items, presigns GETs of
de-identified objects.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from dicomshare import settings as config
from dicomshare import shares
from dicomshare_aws import resources
from stacks.acknowledge import acknowledge, object_wildcard
from stacks.python_function import PythonFunction, allow_cloudwatch_logs, encrypted_log_group, log_retention
from stacks.storage import StorageStack, leading_keys, use_table_key

API_MEMORY_MB = 512
"""JSON in, JSON out, plus an occasional Key Object Selection document (highdicom, imported
lazily): 512 MB keeps cold starts short. To be replaced by bench/ measurements."""

STAGE_NAME = "v1"
THROTTLE_RATE = 50
"""Requests per second, steady state, for the whole stage."""
THROTTLE_BURST = 100
PUBLIC_THROTTLE_RATE = 10
"""Requests per second on each public (share-token) route."""
PUBLIC_THROTTLE_BURST = 20
REDEEM_LIMIT_PER_5_MINUTES = 100
"""WAF: redemptions one client IP may attempt in 5 minutes before it is blocked."""
PUBLIC_LIMIT_PER_5_MINUTES = 300
"""WAF: requests to the page, its script and redemption one client IP may make in 5 minutes."""
SHARE_PAGES_LIMIT_PER_5_MINUTES = 3000
"""WAF: requests to the share pages (``/share/*``: instance URLs, viewer document, Key Object
Selection) one client IP may make in 5 minutes: 10 a second, as a download or the viewer
walks a 100,000-instance study's 1,000 pages of 100."""

VIEWER_FILES_LIMIT_PER_5_MINUTES = 3000
"""WAF (CloudFront): requests for the viewer's files one client IP may make in 5 minutes."""

ORIGIN_VERIFY_HEADER = "X-Origin-Verify"
"""Header the share origin (CloudFront) adds to every request it forwards to the stage, with
a secret value. Those requests come from CloudFront's addresses, many clinicians each, and
the share origin's web ACL has limited them per client IP already: the stage's web ACL
skips its per-IP limits for them, and keeps them for every other caller."""

SHARE_ITEM_KEYS = ("SHARE#*", "TOKEN#*")
"""Partition keys of the items the API may write: shares, their tokens and audit records."""


class ShareApiStack(cdk.Stack):
    def __init__(self, scope: Construct, id: str, *, storage: StorageStack, bus: events.IEventBus,
                 share_origin_parameter: str, removal: cdk.RemovalPolicy, **kwargs) -> None:
        super().__init__(scope, id, **kwargs)
        settings = storage.settings
        # Partners who sign in themselves read their receipts; a role only the hosted gateway
        # assumes (a partner without a principal) reaches nothing of this API.
        receipt_readers = {p.id: storage.partner_roles[p.id] for p in settings.partners
                           if p.principal and p.id in storage.partner_roles}

        self.logs_key = kms.Key(self, "ApiLogsKey", description="dicomshare API access and function logs",
                                enable_key_rotation=True, removal_policy=removal)
        allow_cloudwatch_logs(self.logs_key)

        self.handler = PythonFunction(
            self, "ApiFunction", name="api", settings=settings,
            environment={
                config.TABLE_NAME_ENV: storage.table.table_name,
                config.DEID_BUCKET_ENV: storage.deid_bucket.bucket_name,
                config.EVENT_BUS_NAME_ENV: bus.event_bus_name,
                config.SHARE_ORIGIN_PARAMETER_ENV: share_origin_parameter,
            },
            memory_size=API_MEMORY_MB, timeout_seconds=resources.API_TIMEOUT_SECONDS,
            reserved_concurrency=settings.reserved_concurrency.get("api"), logs_key=self.logs_key, removal=removal,
            invoked_by="API Gateway's synchronous Lambda proxy integration",
        )
        self.handler.add_to_role_policy(*api_permissions(storage, bus), iam.PolicyStatement(
            sid="ReadShareOrigin", actions=["ssm:GetParameter"],
            resources=[self.format_arn(service="ssm", resource="parameter",
                                       resource_name=share_origin_parameter.lstrip("/"))]))
        acknowledge(self.handler.role.node.find_child("DefaultPolicy"), {
            object_wildcard(storage.exported_arn("DeidentifiedBucketArn"), "studies/*"): "Presigns GETs of the "
            "de-identified instances of any shared study and reads their metadata objects for the viewer "
            "document; which ones a caller gets is decided per share.",
            object_wildcard(storage.exported_arn("DeidentifiedBucketArn"), "previews/*"): "Presigns GETs of the "
            "previews (PNG) of any shared study's instances, under previews/ only.",
            object_wildcard(storage.exported_arn("TableArn"), "index/*"): "Queries both of the table's global "
            "secondary indexes (patient-studies, listing).",
        })

        public_method_options = {
            f"{path}/{method}": apigateway.MethodDeploymentOptions(
                throttling_rate_limit=PUBLIC_THROTTLE_RATE, throttling_burst_limit=PUBLIC_THROTTLE_BURST)
            for method, path in sorted(resources.PUBLIC_ROUTES)
        }
        integration = apigateway.LambdaIntegration(self.handler.function, proxy=True)
        self.api = apigateway.RestApi(
            self, "RestApi",
            description=f"dicomshare {settings.environment}: shares and the clinician share page",
            endpoint_types=[apigateway.EndpointType.REGIONAL],
            # The function answers base64 bodies (gzip-compressed JSON, the Key Object
            # Selection document); API Gateway decodes them only for binary media types, and
            # picks by the request's first Accept value: */* decodes whatever a browser sends.
            binary_media_types=["*/*"],
            # API Gateway's logging role is one per account and region, shared by every
            # environment deployed there: it is always retained, so that destroying dev
            # never leaves prod's API without its logs.
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=cdk.RemovalPolicy.RETAIN,
            default_integration=integration,
            policy=resource_policy(settings, [role.role_arn for _, role in sorted(receipt_readers.items())]),
            default_method_options=apigateway.MethodOptions(authorization_type=apigateway.AuthorizationType.IAM),
            deploy_options=apigateway.StageOptions(
                stage_name=STAGE_NAME,
                access_log_destination=apigateway.LogGroupLogDestination(encrypted_log_group(
                    self, "AccessLogs", key=self.logs_key, settings=settings, removal=removal)),
                # Standard fields log the resource template (/view), never the request's
                # path or query string, so no share token reaches the access log.
                access_log_format=apigateway.AccessLogFormat.json_with_standard_fields(
                    caller=True, http_method=True, ip=True, protocol=True, request_time=True,
                    resource_path=True, response_length=True, status=True, user=True),
                # Execution logs at ERROR level and no data trace: INFO would log query strings.
                logging_level=apigateway.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,
                metrics_enabled=True,
                tracing_enabled=True,
                throttling_rate_limit=THROTTLE_RATE,
                throttling_burst_limit=THROTTLE_BURST,
                method_options=public_method_options,
            ),
        )
        self.api.root.add_proxy(any_method=True)
        for method, path in sorted(resources.PUBLIC_ROUTES):
            public = self.api.root.resource_for_path(path).add_method(
                method, integration, authorization_type=apigateway.AuthorizationType.NONE)
            acknowledge(public, {
                rule: "Public by design: the share token in the request is the credential, verified (hash "
                "lookup, expiry, revocation, PIN) by the function; WAF rate-limits every public path per client IP."
                for rule in ("AwsSolutions-APIG4", "AwsSolutions-COG4")
            })
        acknowledge(self.api, {
            "AwsSolutions-COG4": "Admin routes use AWS_IAM authorization (SigV4 by the hospital's IAM "
            "principals), not a Cognito user pool.",
            "AwsSolutions-APIG2": "The function validates every request (pydantic models) and answers 4xx JSON "
            "with a reason; API Gateway's validation would answer in its own format.",
            "HIPAA.Security-APIGWCacheEnabledAndEncrypted": "No cache, on purpose: responses depend on the caller's "
            "token or identity and carry presigned URLs that must never be served to anyone else.",
            "HIPAA.Security-APIGWSSLEnabled": "The stage's only backend is a Lambda proxy integration, reached over "
            "AWS's own signed invoke path; a client certificate authenticates HTTP backends only.",
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]":
                "The account-level role API Gateway uses to write execution and access logs; this AWS-managed "
                "policy is the one AWS documents for it.",
        })

        origin_key = kms.Key(self, "OriginVerifyKey", description="dicomshare: the share origin's secret header",
                             enable_key_rotation=True, removal_policy=removal)
        self.origin_verify = secretsmanager.Secret(
            self, "OriginVerifySecret",
            description=f"dicomshare: value of the {ORIGIN_VERIFY_HEADER} header CloudFront sends to the API",
            encryption_key=origin_key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=48, exclude_punctuation=True, include_space=False),
            removal_policy=removal,
        )
        rotation = ("CloudFormation puts the value into the distribution and this web ACL when they deploy, so "
                    "it is rotated by a new value then deploying this stack and the web stack; a mismatch "
                    "meanwhile only subjects CloudFront's requests to the per-IP limits, never refuses them.")
        acknowledge(self.origin_verify, {"AwsSolutions-SMG4": rotation,
                                         "HIPAA.Security-SecretsManagerRotationEnabled": rotation})
        self.web_acl = web_acl(self, "WebAcl", name=f"dicomshare-{settings.environment}", waf_scope="REGIONAL",
                               trusted_header=(ORIGIN_VERIFY_HEADER, self.origin_verify.secret_value.unsafe_unwrap()))
        wafv2.CfnWebACLAssociation(self, "WebAclAssociation",
                                   resource_arn=self.api.deployment_stage.stage_arn,
                                   web_acl_arn=self.web_acl.attr_arn)
        web_acl_logging(self, self.web_acl, log_group=f"aws-waf-logs-dicomshare-{settings.environment}",
                        key=self.logs_key, settings=settings, removal=removal)
        self.allow_partners_receipts(receipt_readers)

        cdk.CfnOutput(self, "ApiUrl", value=self.api.url)
        cdk.CfnOutput(self, "SharePageUrl", value=f"{self.api.url}view")

    def allow_partners_receipts(self, roles: dict[str, iam.IRole]) -> None:
        """Each of these partner roles may call ``GET /receipts`` (and nothing else of this
        API); the function then shows it that partner's receipts only."""
        for partner_id, role in sorted(roles.items()):
            policy = iam.Policy(self, f"PartnerReceipts-{partner_id}", roles=[role], statements=[iam.PolicyStatement(
                actions=["execute-api:Invoke"],
                resources=[self.api.arn_for_execute_api(method, path, STAGE_NAME)
                           for method, path in sorted(resources.PARTNER_ROUTES)],
            )])
            acknowledge(policy, {
                "HIPAA.Security-IAMNoInlinePolicy": "One statement for one partner role (GET /receipts of this "
                "API); a managed policy would be attached to nothing else.",
            })


def resource_policy(settings: config.Settings, partner_roles: list[str]) -> iam.PolicyDocument:
    """Who may invoke what: anyone the public routes; only sessions of the configured admin
    roles (``Settings.admins``) anything else, but for the partners' upload roles
    (``partner_roles``, ARNs), which are not denied here: their own IAM policy allows them
    ``GET /receipts`` only (:meth:`ShareApiStack.allow_partners_receipts`), and the function
    shows them their own receipts only.

    For callers of the API's own account, API Gateway allows a request when *either* the
    caller's IAM policy or this resource policy allows it, so an allow for the admins is
    not enough: the deny makes every other signed caller (any principal of the account with
    ``execute-api:Invoke``) fail. Anonymous requests carry no ``aws:PrincipalArn`` and are
    not denied here; the admin routes' AWS_IAM authorization refuses them, the public
    routes take them.
    """
    public = [f"execute-api:/*/{method}{path}" for method, path in sorted(resources.PUBLIC_ROUTES)]
    statements = [iam.PolicyStatement(
        sid="PublicShareRoutes", principals=[iam.AnyPrincipal()], actions=["execute-api:Invoke"], resources=public)]
    not_admin: dict = {"Null": {"aws:PrincipalArn": "false"}}
    if settings.admins:
        statements.append(iam.PolicyStatement(
            sid="NamedAdmins", principals=[iam.ArnPrincipal(arn) for arn in settings.admins],
            actions=["execute-api:Invoke"], resources=["execute-api:/*"]))
    if settings.admins or partner_roles:
        not_admin["ArnNotEquals"] = {"aws:PrincipalArn": [*settings.admins, *partner_roles]}
    statements.append(iam.PolicyStatement(
        sid="NoOtherSignedCallers", effect=iam.Effect.DENY, principals=[iam.AnyPrincipal()],
        actions=["execute-api:Invoke"], resources=["execute-api:/*"], conditions=not_admin))
    return iam.PolicyDocument(statements=statements)


def api_permissions(storage: StorageStack, bus: events.IEventBus) -> list[iam.PolicyStatement]:
    """Read the index; write only share, token and audit items; presign GETs; emit events.

    ``dynamodb:LeadingKeys`` restricts writes by partition key. It also holds inside
    ``TransactWriteItems``, whose items are each authorized by their own action (there is
    no separate IAM action for the transaction).
    """
    return [
        iam.PolicyStatement(
            sid="ReadIndex",
            actions=["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"],
            resources=[storage.imported_arns["TableArn"], f"{storage.imported_arns['TableArn']}/index/*"],
        ),
        iam.PolicyStatement(
            sid="WriteSharesTokensAudit",
            actions=["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem"],
            resources=[storage.imported_arns["TableArn"]],
            conditions=leading_keys(SHARE_ITEM_KEYS),
        ),
        use_table_key(storage),
        iam.PolicyStatement(
            sid="PresignDeidentifiedObjects",
            actions=["s3:GetObject"],
            resources=[f"{storage.imported_arns['DeidentifiedBucketArn']}/{prefix}*" for prefix in ("studies/", "previews/")],
        ),
        iam.PolicyStatement(
            sid="DecryptDeidentifiedObjects",
            actions=["kms:Decrypt"],
            resources=[storage.deid_key.key_arn],
        ),
        iam.PolicyStatement(sid="PublishEvents", actions=["events:PutEvents"], resources=[bus.event_bus_arn]),
    ]


MANAGED_RULE_GROUPS = (
    "AWSManagedRulesAmazonIpReputationList",
    "AWSManagedRulesKnownBadInputsRuleSet",
    "AWSManagedRulesCommonRuleSet",
)
"""AWS managed rule groups, evaluated first: addresses known for bots and attacks, request
patterns of known exploits (Log4j, ...), and the core OWASP-style protections."""

PUBLIC_PATHS_REGEX = r"/(redeem|view|client-zip\.js|download-worker\.js)/?$"
SHARE_PAGES_REGEX = r"/share/(instances|dicomjson|manifest)/?$"
REDEEM_PATH_REGEX = r"/redeem/?$"
API_PATHS_REGEX = rf"^/{STAGE_NAME}(/|$)"
"""The share API's paths on the share origin; every other path there is a viewer file."""


def web_acl(scope: Construct, id: str, *, name: str, waf_scope: str,
            trusted_header: tuple[str, str] | None = None) -> wafv2.CfnWebACL:
    """Web ACL: AWS managed rule groups, then per-client-IP rate limits on every public
    path (so one client flooding the page or redemption is blocked alone, instead of using
    up the stage's throttle for every clinician) and a stricter one on redemption.

    ``waf_scope`` ``REGIONAL`` guards the API stage; ``CLOUDFRONT`` guards the share origin
    (:mod:`stacks.edge`), where one more limit covers the viewer's files (every path outside
    the stage). Requests carrying ``trusted_header`` (name, exact value) skip the per-IP
    limits (:data:`ORIGIN_VERIFY_HEADER`). Paths are matched after URL-decoding and
    lower-casing (``/v1/%52edeem`` is ``/v1/redeem``); both see the stage in the path, so
    the match is on its end.
    """
    def visibility(metric: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
        return wafv2.CfnWebACL.VisibilityConfigProperty(
            cloud_watch_metrics_enabled=True, metric_name=f"{name}-{metric}", sampled_requests_enabled=True)

    def path_matches(pattern: str) -> wafv2.CfnWebACL.StatementProperty:
        return wafv2.CfnWebACL.StatementProperty(regex_match_statement=wafv2.CfnWebACL.RegexMatchStatementProperty(
            field_to_match=wafv2.CfnWebACL.FieldToMatchProperty(uri_path={}),
            regex_string=pattern,
            text_transformations=[
                wafv2.CfnWebACL.TextTransformationProperty(priority=0, type="URL_DECODE"),
                wafv2.CfnWebACL.TextTransformationProperty(priority=1, type="LOWERCASE"),
            ],
        ))

    def untrusted(statement: wafv2.CfnWebACL.StatementProperty) -> wafv2.CfnWebACL.StatementProperty:
        if trusted_header is None:
            return statement
        header, value = trusted_header
        trusted = wafv2.CfnWebACL.StatementProperty(byte_match_statement=wafv2.CfnWebACL.ByteMatchStatementProperty(
            field_to_match=wafv2.CfnWebACL.FieldToMatchProperty(single_header={"Name": header.lower()}),
            positional_constraint="EXACTLY", search_string=value,
            text_transformations=[wafv2.CfnWebACL.TextTransformationProperty(priority=0, type="NONE")]))
        return wafv2.CfnWebACL.StatementProperty(and_statement=wafv2.CfnWebACL.AndStatementProperty(statements=[
            statement, wafv2.CfnWebACL.StatementProperty(not_statement=wafv2.CfnWebACL.NotStatementProperty(statement=trusted))]))

    managed = [wafv2.CfnWebACL.RuleProperty(
        name=group,
        priority=priority,
        override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
        statement=wafv2.CfnWebACL.StatementProperty(managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
            vendor_name="AWS", name=group)),
        visibility_config=visibility(group),
    ) for priority, group in enumerate(MANAGED_RULE_GROUPS)]
    limits = [
        ("public-rate-limit", path_matches(PUBLIC_PATHS_REGEX), PUBLIC_LIMIT_PER_5_MINUTES),
        ("share-pages-rate-limit", path_matches(SHARE_PAGES_REGEX), SHARE_PAGES_LIMIT_PER_5_MINUTES),
        ("redeem-rate-limit", path_matches(REDEEM_PATH_REGEX), REDEEM_LIMIT_PER_5_MINUTES),
    ]
    if waf_scope == "CLOUDFRONT":
        limits.append(("viewer-files-rate-limit", wafv2.CfnWebACL.StatementProperty(
            not_statement=wafv2.CfnWebACL.NotStatementProperty(statement=path_matches(API_PATHS_REGEX))),
            VIEWER_FILES_LIMIT_PER_5_MINUTES))
    rate_rules = [wafv2.CfnWebACL.RuleProperty(
        name=rule,
        priority=len(managed) + n,
        action=wafv2.CfnWebACL.RuleActionProperty(block={}),
        statement=wafv2.CfnWebACL.StatementProperty(rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
            limit=limit, aggregate_key_type="IP", evaluation_window_sec=300, scope_down_statement=untrusted(scope_down))),
        visibility_config=visibility(rule),
    ) for n, (rule, scope_down, limit) in enumerate(limits)]
    return wafv2.CfnWebACL(
        scope, id,
        scope=waf_scope,
        default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
        visibility_config=visibility("api" if waf_scope == "REGIONAL" else "share-origin"),
        rules=[*managed, *rate_rules],
    )


def web_acl_logging(scope: Construct, acl: wafv2.CfnWebACL, *, log_group: str, key: kms.IKey,
                    settings: config.Settings, removal: cdk.RemovalPolicy) -> None:
    """WAF's logs of ``acl`` in an encrypted log group of the ACL's region (WAF requires
    its name to start with ``aws-waf-logs-``). Whatever may carry a share token or PIN is
    redacted: the Authorization and PIN headers, path, query; so is the share origin's
    secret header."""
    stack = cdk.Stack.of(scope)
    waf_logs = logs.LogGroup(
        scope, f"{acl.node.id}Logs",
        log_group_name=log_group,
        encryption_key=key,
        retention=log_retention(settings.retention["log_days"]),
        removal_policy=removal,
    )
    wafv2.CfnLoggingConfiguration(
        scope, f"{acl.node.id}Logging",
        resource_arn=acl.attr_arn,
        log_destination_configs=[stack.format_arn(
            service="logs", resource="log-group", resource_name=waf_logs.log_group_name,
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)],
        redacted_fields=[
            wafv2.CfnLoggingConfiguration.FieldToMatchProperty(uri_path={}),
            wafv2.CfnLoggingConfiguration.FieldToMatchProperty(query_string={}),
            *(wafv2.CfnLoggingConfiguration.FieldToMatchProperty(single_header={"Name": header.lower()})
              for header in ("Authorization", shares.PIN_HEADER, ORIGIN_VERIFY_HEADER)),
        ],
    )
