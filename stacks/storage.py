"""Storage: the three buckets (ingest, de-identified, quarantine) and their access-log
bucket, the index table, the de-identification secret, and the partners' upload roles.

Every data store is encrypted with its own customer-managed KMS key (rotated yearly), so
that a grant on one never opens another and the SQS queues fed by S3 events (in the ingest
stack, under their own key) never depend back on this stack.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from dicomshare import index
from dicomshare.settings import Partner, Settings
from stacks.acknowledge import acknowledge

REPLICATION_REASON = (
    "Cross-region replication is the hospital's data-residency decision, outside this app; versioning "
    "protects against deletion and overwrite within the region."
)

HEX_EXCLUDED = "ghijklmnopqrstuvwxyz"
"""With upper case and punctuation excluded, the generated secret is 64 hex digits."""


class StorageStack(cdk.Stack):
    def __init__(self, scope: Construct, id: str, *, settings: Settings, removal: cdk.RemovalPolicy, **kwargs) -> None:
        super().__init__(scope, id, **kwargs)
        self.settings = settings
        self.removal = removal
        retention = settings.retention

        self.access_logs_bucket = s3.Bucket(
            self, "AccessLogsBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-access-logs", expiration=cdk.Duration.days(retention["log_days"])),
                noncurrent_versions_rule(retention["noncurrent_version_days"]),
            ],
            removal_policy=removal,
        )
        acknowledge(self.access_logs_bucket, {
            "HIPAA.Security-S3DefaultEncryptionKMS": "S3 server access logging delivers only to buckets encrypted "
            "with SSE-S3, not SSE-KMS.",
            "HIPAA.Security-S3BucketReplicationEnabled": REPLICATION_REASON,
        })

        self.ingest_key = self.data_key("IngestKey", "dicomshare ingest bucket (partner uploads)")
        self.deid_key = self.data_key("DeidentifiedKey", "dicomshare de-identified bucket")
        self.quarantine_key = self.data_key("QuarantineKey", "dicomshare quarantine bucket")
        self.table_key = self.data_key("TableKey", "dicomshare index table")
        self.secret_key = self.data_key("SecretKey", "dicomshare de-identification secret")

        self.ingest_bucket = self.data_bucket(
            "IngestBucket", self.ingest_key, "ingest/",
            s3.LifecycleRule(id="expire-lingering-uploads", expiration=cdk.Duration.days(retention["ingest_linger_days"])),
        )
        # CORS for the share page's origin is set by the share API stack, which knows it
        # (stacks/share_api.py, page_origin_cors): the API is created after this stack.
        self.deid_bucket = self.data_bucket("DeidentifiedBucket", self.deid_key, "deidentified/")
        self.quarantine_bucket = self.data_bucket(
            "QuarantineBucket", self.quarantine_key, "quarantine/",
            s3.LifecycleRule(id="expire-quarantined", expiration=cdk.Duration.days(retention["quarantine_days"])),
        )

        self.table = dynamodb.Table(
            self, "Table",
            partition_key=dynamodb.Attribute(name=index.TABLE["partition_key"], type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=index.TABLE["sort_key"], type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=self.table_key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(point_in_time_recovery_enabled=True),
            time_to_live_attribute=index.TABLE["ttl_attribute"],
            stream=dynamodb.StreamViewType[index.TABLE["stream"]],
            deletion_protection=removal == cdk.RemovalPolicy.RETAIN,
            removal_policy=removal,
        )
        for gsi in index.TABLE["global_secondary_indexes"]:
            self.table.add_global_secondary_index(
                index_name=gsi["name"],
                partition_key=dynamodb.Attribute(name=gsi["partition_key"], type=dynamodb.AttributeType.STRING),
                sort_key=dynamodb.Attribute(name=gsi["sort_key"], type=dynamodb.AttributeType.STRING),
                projection_type=dynamodb.ProjectionType.ALL,
            )

        self.deid_secret = secretsmanager.Secret(
            self, "DeidentificationSecret",
            description="dicomshare: key of the keyed hashes that derive pseudonyms and new UIDs (64 hex digits)",
            encryption_key=self.secret_key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64,
                exclude_uppercase=True,
                exclude_punctuation=True,
                exclude_characters=HEX_EXCLUDED,
                include_space=False,
                require_each_included_type=False,
            ),
            removal_policy=removal,
        )
        rotation_reason = (
            "The secret keys the pseudonyms and de-identified UIDs: rotating it would give the same patient "
            "a new pseudonym and the same study new UIDs, breaking priors and duplicate detection. Only the "
            "ingest function can read it."
        )
        acknowledge(self.deid_secret, {
            "AwsSolutions-SMG4": rotation_reason,
            "HIPAA.Security-SecretsManagerRotationEnabled": rotation_reason,
        })
        acknowledge(self.table, {
            "HIPAA.Security-DynamoDBInBackupPlan": "Point-in-time recovery (35 days of continuous backups) is "
            "on; an AWS Backup plan is an account-level choice of the hospital, outside this app.",
        })

        # ARNs the other stacks grant wildcards under (``<bucket>/studies/*``), exported under
        # names that say what they are: cdk-nag's findings on those grants, and so their
        # acknowledgements, read "dicomshare-dev-storage-DeidentifiedBucketArn/studies/*".
        self.imported_arns = {
            name: self.export_value(arn, name=self.exported_arn(name))
            for name, arn in (
                ("IngestBucketArn", self.ingest_bucket.bucket_arn),
                ("DeidentifiedBucketArn", self.deid_bucket.bucket_arn),
                ("QuarantineBucketArn", self.quarantine_bucket.bucket_arn),
                ("TableArn", self.table.table_arn),
            )
        }

        gateway_partners = set(settings.gateway.calling_ae_titles) if settings.gateway else set()
        self.partner_roles = {p.id: self.partner_role(p, hosted_gateway=p.id in gateway_partners)
                              for p in settings.partners if p.principal or p.id in gateway_partners}

        cdk.CfnOutput(self, "IngestBucketName", value=self.ingest_bucket.bucket_name)
        cdk.CfnOutput(self, "IngestKeyArn", value=self.ingest_key.key_arn,
                      description="Partners upload with --sse aws:kms --sse-kms-key-id <this ARN>")
        cdk.CfnOutput(self, "DeidentifiedBucketName", value=self.deid_bucket.bucket_name)
        cdk.CfnOutput(self, "QuarantineBucketName", value=self.quarantine_bucket.bucket_name)
        cdk.CfnOutput(self, "TableName", value=self.table.table_name)

    def exported_arn(self, name: str) -> str:
        """Export name of one of the ARNs in :attr:`imported_arns`."""
        return f"{self.stack_name}-{name}"

    def data_key(self, id: str, description: str) -> kms.Key:
        return kms.Key(
            self, id,
            description=description,
            enable_key_rotation=True,
            removal_policy=self.removal,
            pending_window=cdk.Duration.days(30 if self.removal == cdk.RemovalPolicy.RETAIN else 7),
        )

    def data_bucket(self, id: str, key: kms.Key, log_prefix: str, *rules: s3.LifecycleRule) -> s3.Bucket:
        bucket = s3.Bucket(
            self, id,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=key,
            bucket_key_enabled=True,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            server_access_logs_bucket=self.access_logs_bucket,
            server_access_logs_prefix=log_prefix,
            lifecycle_rules=[
                *rules,
                noncurrent_versions_rule(self.settings.retention["noncurrent_version_days"]),
            ],
            removal_policy=self.removal,
        )
        acknowledge(bucket, {"HIPAA.Security-S3BucketReplicationEnabled": REPLICATION_REASON})
        return bucket

    def partner_role(self, partner: Partner, hosted_gateway: bool) -> iam.Role:
        """The role ``partner`` assumes to upload under its prefix (:func:`partner_upload_statements`);
        trusted with the partner's ``sts:ExternalId`` when one is configured (always for an account).
        With ``hosted_gateway``, the hosted gateway's task role may assume it too
        (:meth:`hosted_gateway_principal`); a partner with no principal of its own then gets
        a role that only the gateway assumes.

        Its name is derived (:meth:`dicomshare.settings.Partner.role_name`), not generated:
        the API recognises the partner by it in the caller's signed identity and lets the
        role read that partner's receipts only (its ``execute-api:Invoke`` on
        ``GET /receipts`` is granted by the share API stack)."""
        gateway = self.hosted_gateway_principal() if hosted_gateway else None
        principal = (
            gateway if not partner.principal
            else iam.AccountPrincipal(partner.principal) if partner.principal.isdigit()
            else iam.ArnPrincipal(partner.principal)
        )
        role = iam.Role(
            self, f"PartnerRole-{partner.id}",
            assumed_by=principal,
            external_ids=[partner.external_id] if partner.principal and partner.external_id else None,
            role_name=partner.role_name(self.settings.environment, self.region),
            description=f"dicomshare {self.settings.environment}: upload role of partner {partner.id}",
            max_session_duration=cdk.Duration.hours(12),
        )
        if partner.principal and gateway:
            role.assume_role_policy.add_statements(iam.PolicyStatement(actions=["sts:AssumeRole"], principals=[gateway]))
        for statement in partner_upload_statements(
                [self.ingest_bucket.arn_for_objects(f"{partner.prefix}*")], self.ingest_key.key_arn, self.region):
            role.add_to_policy(statement)
        bucket_id = self.get_logical_id(self.ingest_bucket.node.default_child)
        acknowledge(role.node.find_child("DefaultPolicy"), {
            f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{partner.prefix}*]": "The partner may write any "
            "object under its own prefix (its own file layout), and nothing outside it.",
            "HIPAA.Security-IAMNoInlinePolicy": "The policy belongs to this one partner role; a managed policy "
            "would be attached to nothing else.",
        })
        cdk.CfnOutput(self, f"PartnerRoleArn{partner.id.replace('-', '')}", value=role.role_arn,
                      description=f"Upload role of partner {partner.id}")
        return role


    def hosted_gateway_principal(self) -> iam.IPrincipal:
        """The hosted gateway's task role (stacks/gateway_service.py), which that stack
        creates later under a name fixed in advance
        (:meth:`dicomshare.settings.GatewayService.task_role_name`). Trusted as this account
        with ``aws:PrincipalArn`` equal to that role's ARN, not as the role ARN itself: IAM
        refuses a trust policy naming a role that does not exist yet, and would pin a named
        role to its unique id, so a replaced task role would lose its trust. No
        ``sts:ExternalId``: the principal is one role of this account, not a third party's
        account that acts for several customers (docs/gateway.md)."""
        task_role = role_arn(self, self.settings.gateway.task_role_name(self.settings.environment, self.region))
        return iam.AccountPrincipal(self.account).with_conditions({"ArnEquals": {"aws:PrincipalArn": task_role}})


def leading_keys(patterns) -> dict:
    """IAM condition limiting DynamoDB requests to items whose partition key matches one of
    ``patterns`` (``dynamodb:LeadingKeys``)."""
    return {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": list(patterns)}}


def use_table_key(storage: StorageStack) -> iam.PolicyStatement:
    """What every function that reads or writes the index needs of the table's KMS key."""
    return iam.PolicyStatement(
        sid="UseTableKey",
        actions=["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
        resources=[storage.table_key.key_arn],
    )


def role_arn(stack: cdk.Stack, name: str) -> str:
    """ARN of the role named ``name`` (no path) in ``stack``'s account."""
    return stack.format_arn(service="iam", region="", resource="role", resource_name=name)


def partner_upload_statements(objects: list[str], key_arn: str, region: str) -> list[iam.PolicyStatement]:
    """``PutObject`` (single and multipart) under ``objects`` (a partner's prefix, or the
    hosted gateway's partners' prefixes), encrypted with the ingest key.

    Encryption is enforced by the bucket's default (SSE-KMS with the ingest key), not by
    requiring the encryption headers: ``UploadPart`` requests carry no such header (the
    upload's encryption was fixed by ``CreateMultipartUpload``), so a condition requiring
    them would deny every part of a multipart upload (``aws s3 cp`` of files over 8 MB).
    The denies only hit a request that *sends* a header (``Null`` = ``false``) with another
    value: SSE-S3, DSSE or another key. Without the headers the object gets the default.
    """
    return [
        iam.PolicyStatement(
            sid="UploadUnderOwnPrefix",
            actions=["s3:PutObject", "s3:AbortMultipartUpload"],
            resources=objects,
        ),
        iam.PolicyStatement(
            sid="DenyOtherEncryption",
            effect=iam.Effect.DENY,
            actions=["s3:PutObject"],
            resources=objects,
            conditions={"Null": {"s3:x-amz-server-side-encryption": "false"},
                        "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}},
        ),
        iam.PolicyStatement(
            sid="DenyOtherKeys",
            effect=iam.Effect.DENY,
            actions=["s3:PutObject"],
            resources=objects,
            conditions={"Null": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "false"},
                        "StringNotEquals": {"s3:x-amz-server-side-encryption-aws-kms-key-id": key_arn}},
        ),
        iam.PolicyStatement(
            sid="UseIngestKeyThroughS3",
            actions=["kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt"],
            resources=[key_arn],
            conditions={"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
        ),
    ]


def noncurrent_versions_rule(days: int) -> s3.LifecycleRule:
    return s3.LifecycleRule(
        id="expire-old-versions",
        noncurrent_version_expiration=cdk.Duration.days(days),
        expired_object_delete_marker=True,
        abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
    )
