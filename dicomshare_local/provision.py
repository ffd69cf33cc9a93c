"""Create dicomshare's resources on the moto server, from the definitions the CDK stacks use.

The table comes from :data:`dicomshare.index.TABLE`; queue settings, S3 event filters and
timeouts from :mod:`dicomshare_aws.resources`. Physical names are fixed here (CloudFormation
generates them on AWS) and reach the handlers through the same environment variables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import boto3

from dicomshare import index, settings as settings_module
from dicomshare.settings import Settings
from dicomshare_aws import resources

PREFIX = "dicomshare-local"


@dataclass(frozen=True)
class Resources:
    region: str
    ingest_bucket: str
    deid_bucket: str
    quarantine_bucket: str
    table_name: str
    stream_arn: str
    ingest_queue_url: str
    ingest_dlq_url: str
    preview_queue_url: str
    preview_dlq_url: str
    counts_dlq_url: str
    events_queue_url: str
    secret_arn: str
    event_bus_name: str
    share_origin_parameter: str

    def lambda_environment(self, settings: Settings) -> dict[str, str]:
        """The environment every Lambda gets from the CDK app, with local values."""
        return {
            settings_module.CONFIG_ENV: settings.to_json(),
            settings_module.INGEST_BUCKET_ENV: self.ingest_bucket,
            settings_module.DEID_BUCKET_ENV: self.deid_bucket,
            settings_module.QUARANTINE_BUCKET_ENV: self.quarantine_bucket,
            settings_module.TABLE_NAME_ENV: self.table_name,
            settings_module.DEID_SECRET_ARN_ENV: self.secret_arn,
            settings_module.EVENT_BUS_NAME_ENV: self.event_bus_name,
            settings_module.SHARE_ORIGIN_PARAMETER_ENV: self.share_origin_parameter,
            "POWERTOOLS_METRICS_NAMESPACE": "dicomshare",
        }


def provision(session: boto3.Session, endpoint_url: str, settings: Settings, deid_secret: str,
              prefix: str = PREFIX) -> Resources:
    """Create every resource the handlers use, named ``<prefix>-...``, and return their names.

    moto keeps its state per process: two systems in one process need different prefixes.
    """
    def client(service: str):
        return session.client(service, endpoint_url=endpoint_url)

    s3, sqs, kms = client("s3"), client("sqs"), client("kms")
    region = session.region_name

    keys = {name: kms.create_key(Description=f"{prefix} {name}")["KeyMetadata"]["Arn"] for name in (
        "ingest", "deid", "quarantine", "table", "queues", "secret")}
    for arn in keys.values():
        kms.enable_key_rotation(KeyId=arn)

    buckets = {name: f"{prefix}-{name}" for name in ("ingest", "deid", "quarantine")}
    for name, bucket in buckets.items():
        _create_bucket(s3, bucket, region, keys[name])

    def queue(name: str, consumer_timeout: int | None = None) -> tuple[str, str]:
        dlq_url = sqs.create_queue(QueueName=f"{prefix}-{name}-dlq", Attributes={
            "KmsMasterKeyId": keys["queues"], "MessageRetentionPeriod": str(14 * 24 * 3600)})["QueueUrl"]
        if consumer_timeout is None:
            return dlq_url, dlq_url
        dlq_arn = _queue_arn(sqs, dlq_url)
        url = sqs.create_queue(QueueName=f"{prefix}-{name}", Attributes={
            "KmsMasterKeyId": keys["queues"],
            "VisibilityTimeout": str(resources.visibility_timeout(consumer_timeout)),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": resources.MAX_RECEIVE_COUNT}),
        })["QueueUrl"]
        return url, dlq_url

    ingest_url, ingest_dlq = queue("ingest", resources.INGEST_TIMEOUT_SECONDS)
    preview_url, preview_dlq = queue("preview", resources.PREVIEW_TIMEOUT_SECONDS)
    counts_dlq, _ = queue("counts")
    events_url = sqs.create_queue(QueueName=f"{prefix}-events")["QueueUrl"]

    s3.put_bucket_notification_configuration(
        Bucket=buckets["ingest"],
        NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": _queue_arn(sqs, ingest_url), "Events": list(resources.INGEST_EVENTS)}]},
    )
    s3.put_bucket_notification_configuration(
        Bucket=buckets["deid"],
        NotificationConfiguration={"QueueConfigurations": [{
            "QueueArn": _queue_arn(sqs, preview_url),
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [
                {"Name": "prefix", "Value": resources.PREVIEW_FILTER["prefix"]},
                {"Name": "suffix", "Value": resources.PREVIEW_FILTER["suffix"]},
            ]}},
        }]},
    )

    table_name, stream_arn = _create_table(client("dynamodb"), f"{prefix}-index", keys["table"])

    secret_arn = client("secretsmanager").create_secret(
        Name=f"{prefix}/deid-secret", SecretString=deid_secret, KmsKeyId=keys["secret"])["ARN"]

    events = client("events")
    bus = f"{prefix}-bus"
    events.create_event_bus(Name=bus)
    events.put_rule(Name=f"{prefix}-all", EventBusName=bus,
                    EventPattern=json.dumps({"source": [resources.EVENT_SOURCE]}))
    events.put_targets(Rule=f"{prefix}-all", EventBusName=bus,
                       Targets=[{"Id": "events-queue", "Arn": _queue_arn(sqs, events_url)}])

    return Resources(
        region=region,
        ingest_bucket=buckets["ingest"],
        deid_bucket=buckets["deid"],
        quarantine_bucket=buckets["quarantine"],
        table_name=table_name,
        stream_arn=stream_arn,
        ingest_queue_url=ingest_url,
        ingest_dlq_url=ingest_dlq,
        preview_queue_url=preview_url,
        preview_dlq_url=preview_dlq,
        counts_dlq_url=counts_dlq,
        events_queue_url=events_url,
        secret_arn=secret_arn,
        event_bus_name=bus,
        share_origin_parameter=resources.share_origin_parameter(prefix),
    )


def _create_bucket(s3, bucket: str, region: str, key_arn: str) -> None:
    config = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **config)
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn},
        "BucketKeyEnabled": True}]})


def _queue_arn(sqs, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _create_table(dynamodb, name: str, key_arn: str) -> tuple[str, str]:
    table = index.TABLE
    key_names = {table["partition_key"], table["sort_key"]}
    for gsi in table["global_secondary_indexes"]:
        key_names |= {gsi["partition_key"], gsi["sort_key"]}
    description = dynamodb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in sorted(key_names)],
        KeySchema=[{"AttributeName": table["partition_key"], "KeyType": "HASH"},
                   {"AttributeName": table["sort_key"], "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[{
            "IndexName": gsi["name"],
            "KeySchema": [{"AttributeName": gsi["partition_key"], "KeyType": "HASH"},
                          {"AttributeName": gsi["sort_key"], "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"},
        } for gsi in table["global_secondary_indexes"]],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": table["stream"]},
        SSESpecification={"Enabled": True, "SSEType": "KMS", "KMSMasterKeyId": key_arn},
    )["TableDescription"]
    dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification={
        "Enabled": True, "AttributeName": table["ttl_attribute"]})
    dynamodb.update_continuous_backups(TableName=name, PointInTimeRecoverySpecification={
        "PointInTimeRecoveryEnabled": True})
    return name, description["LatestStreamArn"]
