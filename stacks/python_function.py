"""One dicomshare Lambda function: arm64, Python 3.12, Docker-free bundle, X-Ray tracing,
Powertools structured logging and metrics, a KMS-encrypted log group with retention.
"""

from __future__ import annotations

from typing import Mapping

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from dicomshare.settings import CONFIG_ENV, Settings
from stacks.acknowledge import acknowledge
from stacks.pip_bundling import function_code

RUNTIME = lambda_.Runtime.PYTHON_3_12
METRICS_NAMESPACE = "dicomshare"

RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)
"""The values CloudWatch Logs accepts, in the order of ``logs.RetentionDays``."""


def log_retention(days: int) -> logs.RetentionDays:
    """The shortest CloudWatch Logs retention that keeps logs at least ``days`` days."""
    for allowed, retention in zip(RETENTION_DAYS, logs.RetentionDays):
        if allowed >= days:
            return retention
    return logs.RetentionDays.INFINITE


def encrypted_log_group(scope: Construct, id: str, *, key: kms.IKey, settings: Settings, removal: cdk.RemovalPolicy) -> logs.LogGroup:
    """A log group encrypted with ``key`` (whose policy must let CloudWatch Logs use it)."""
    return logs.LogGroup(
        scope, id,
        encryption_key=key,
        retention=log_retention(settings.retention["log_days"]),
        removal_policy=removal,
    )


def allow_cloudwatch_logs(key: kms.Key) -> None:
    """Key policy statement CloudWatch Logs needs to encrypt log groups of this account."""
    stack = cdk.Stack.of(key)
    key.add_to_resource_policy(iam.PolicyStatement(
        principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
        actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
        resources=["*"],
        conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn": f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:*"}},
    ))


class PythonFunction(Construct):
    """A handler ``lambdas.<name>.handler.handler`` packaged with its pinned requirements."""

    def __init__(
        self, scope: Construct, id: str, *,
        name: str,
        settings: Settings,
        environment: Mapping[str, str],
        memory_size: int,
        timeout_seconds: int,
        reserved_concurrency: int | None,
        logs_key: kms.IKey,
        removal: cdk.RemovalPolicy,
        invoked_by: str,
        asynchronous_failures: str | None = None,
    ) -> None:
        super().__init__(scope, id)
        self.log_group = encrypted_log_group(self, "Logs", key=logs_key, settings=settings, removal=removal)
        # Its own role, writing only to its own log group (instead of the AWS-managed
        # AWSLambdaBasicExecutionRole, which may write to every log group of the account).
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description=f"dicomshare {settings.environment}: {name} function")
        self.role.add_to_policy(iam.PolicyStatement(
            sid="WriteOwnLogs", actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[self.log_group.log_group_arn]))
        self.function = lambda_.Function(
            self, "Function",
            runtime=RUNTIME,
            architecture=lambda_.Architecture.ARM_64,
            handler=f"lambdas.{name}.handler.handler",
            code=function_code(name),
            memory_size=memory_size,
            timeout=cdk.Duration.seconds(timeout_seconds),
            reserved_concurrent_executions=reserved_concurrency,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            role=self.role,
            environment={
                CONFIG_ENV: settings.to_json(),
                "POWERTOOLS_SERVICE_NAME": name,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": "INFO",
                **environment,
            },
        )
        acknowledge(self.function, {
            "AwsSolutions-L1": "Pinned to python3.12, the version the bundle's binary wheels (numpy, pylibjpeg, "
            "pyjpegls) are resolved for (stacks/pip_bundling.py); moving on is a deliberate, tested change.",
            "HIPAA.Security-LambdaDLQ": asynchronous_failures or f"Never invoked asynchronously: {invoked_by}. "
            "A function DLQ applies only to asynchronous invocations.",
            "HIPAA.Security-LambdaInsideVPC": "Reaches only AWS regional APIs (S3, DynamoDB, SQS, Secrets Manager, "
            "EventBridge, KMS) over TLS with IAM authorization; there is no private resource to reach in a VPC.",
        })
        if reserved_concurrency is None:
            acknowledge(self.function, {
                "HIPAA.Security-LambdaConcurrency": "Reserved concurrency is configuration (reserved_concurrency "
                "in the document, unset by default): reserving it in a new account, whose concurrency quota may "
                "be 10, makes the deployment fail (docs/deployment.md, 'Function sizing').",
            })
        acknowledge(self.role.node.find_child("DefaultPolicy"), {
            "HIPAA.Security-IAMNoInlinePolicy": "The policy belongs to this one function role (its grants, "
            "listed statement by statement); a managed policy would be attached to nothing else.",
            "AwsSolutions-IAM5[Resource::*]": "X-Ray's PutTraceSegments and PutTelemetryRecords (active tracing) "
            "have no resource-level permissions"
            + (" nor has DynamoDB's ListStreams (stream event source)" if "stream" in invoked_by else "") + ".",
        })

    def add_to_role_policy(self, *statements: iam.PolicyStatement) -> None:
        for statement in statements:
            self.function.add_to_role_policy(statement)
