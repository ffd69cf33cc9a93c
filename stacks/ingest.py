"""Ingest: S3 events -> SQS (+ DLQ) -> the ingest function (validate, de-identify, index or
quarantine); de-identified instances -> SQS -> the preview function; the index table's
stream -> the counts function; the event bus; alarms on dead letters and backlogs.

Least privilege: each function's role names the exact actions on the exact resources its
handler uses (see the ``*_permissions`` functions), nothing from the ``grant*`` helpers.
"""

from __future__ import annotations

import re

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from dicomshare import index
from dicomshare import settings as config
from dicomshare_aws import resources
from stacks.acknowledge import acknowledge, object_wildcard
from stacks.python_function import PythonFunction, allow_cloudwatch_logs
from stacks.storage import StorageStack, leading_keys, use_table_key

# Memory sizes: starting points, to be replaced by the measurements of bench/ (see
# docs/deployment.md, "Function sizing"). Lambda gives CPU in proportion to memory
# (1 vCPU at 1769 MB).
INGEST_MEMORY_MB = 1024
"""Measured (docs/ingest.md, bench): the handler holds at most ~8 MiB of an object (smaller
objects whole, larger ones as header + first 5 MiB part; the rest is copied server-side),
so memory is not the limit; 1024 MB buys ~0.6 vCPU for the CPU-bound header work
(282 ms p50 per CT slice on the local system)."""
PREVIEW_MEMORY_MB = 2048
"""Decodes one frame (JPEG 2000 / JPEG-LS / JPEG) into numpy: up to a few hundred MB for
large multi-frame instances, and decoding wants the CPU of ~1.2 vCPU."""
COUNTS_MEMORY_MB = 256
"""Sums up to 100 stream records into a handful of DynamoDB updates: I/O-bound, small."""
RECONCILE_MEMORY_MB = 512
"""Recounts whole studies: keeps the sort keys of every instance of one study (about
15 MB for 100,000 instances) while streaming the rest of each item through."""

INGEST_MAX_CONCURRENCY = 20
"""The ingest SQS event source's maximum concurrency when the configuration reserves none
for the function; with a reservation, the reservation (so Lambda never throttles messages
back to the queue and on to the DLQ)."""
PREVIEW_MAX_CONCURRENCY = 10

MESSAGE_RETENTION = cdk.Duration.days(14)
INGEST_BACKLOG_ALARM_SECONDS = 900
PREVIEW_BACKLOG_ALARM_SECONDS = 3600


class IngestStack(cdk.Stack):
    def __init__(self, scope: Construct, id: str, *, storage: StorageStack, removal: cdk.RemovalPolicy, **kwargs) -> None:
        super().__init__(scope, id, **kwargs)
        settings = storage.settings

        self.pipeline_key = kms.Key(
            self, "PipelineKey",
            description="dicomshare queues, alarm topic and function logs",
            enable_key_rotation=True,
            removal_policy=removal,
        )
        allow_cloudwatch_logs(self.pipeline_key)
        self.pipeline_key.grant(iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*")

        self.bus = events.EventBus(self, "EventBus")

        self.alarm_topic = sns.Topic(self, "AlarmTopic", master_key=self.pipeline_key, enforce_ssl=True)
        cdk.CfnOutput(self, "AlarmTopicArn", value=self.alarm_topic.topic_arn,
                      description="Subscribe an operator to dead-letter and backlog alarms")

        self.ingest_dlq = self.dead_letter_queue("IngestDeadLetterQueue")
        self.ingest_queue = self.work_queue("IngestQueue", resources.INGEST_TIMEOUT_SECONDS, self.ingest_dlq)
        self.preview_dlq = self.dead_letter_queue("PreviewDeadLetterQueue")
        self.preview_queue = self.work_queue("PreviewQueue", resources.PREVIEW_TIMEOUT_SECONDS, self.preview_dlq)
        self.counts_dlq = self.dead_letter_queue("CountsDeadLetterQueue")
        acknowledge(self.counts_dlq, {
            "AwsSolutions-SQS3": "This queue is itself a dead-letter destination: the on-failure destination "
            "of the table stream event source (records the counts function could not process).",
        })

        # The buckets are referenced by ARN, not as constructs: S3 notifications are then
        # configured from this stack, so the storage stack never depends on these queues.
        ingest_bucket = s3.Bucket.from_bucket_arn(self, "IngestBucketRef", storage.imported_arns["IngestBucketArn"])
        for event in resources.INGEST_EVENTS:
            ingest_bucket.add_event_notification(s3_event_type(event), s3n.SqsDestination(self.ingest_queue))
        deid_bucket = s3.Bucket.from_bucket_arn(self, "DeidentifiedBucketRef", storage.imported_arns["DeidentifiedBucketArn"])
        deid_bucket.add_event_notification(
            s3.EventType.OBJECT_CREATED,
            s3n.SqsDestination(self.preview_queue),
            s3.NotificationKeyFilter(**resources.PREVIEW_FILTER),
        )

        self.ingest = PythonFunction(
            self, "IngestFunction", name="ingest", settings=settings,
            environment={
                config.INGEST_BUCKET_ENV: storage.ingest_bucket.bucket_name,
                config.DEID_BUCKET_ENV: storage.deid_bucket.bucket_name,
                config.QUARANTINE_BUCKET_ENV: storage.quarantine_bucket.bucket_name,
                config.TABLE_NAME_ENV: storage.table.table_name,
                config.DEID_SECRET_ARN_ENV: storage.deid_secret.secret_arn,
                config.EVENT_BUS_NAME_ENV: self.bus.event_bus_name,
            },
            memory_size=INGEST_MEMORY_MB, timeout_seconds=resources.INGEST_TIMEOUT_SECONDS,
            reserved_concurrency=settings.reserved_concurrency.get("ingest"), logs_key=self.pipeline_key, removal=removal,
            invoked_by="SQS event source mapping, failed messages redrive to the ingest DLQ",
        )
        self.ingest.add_to_role_policy(*ingest_permissions(storage, self.bus))
        acknowledge(self.ingest.role.node.find_child("DefaultPolicy"), {
            object_wildcard(storage.exported_arn("IngestBucketArn"), "*"): "Reads and removes any upload: "
            "partners choose their object keys under their own prefixes.",
            object_wildcard(storage.exported_arn("DeidentifiedBucketArn"), "studies/*"): "Writes de-identified "
            "instances (.dcm) and their metadata objects (.json), keyed by their new UIDs, under studies/ only, "
            "and reads an instance back when another upload claims its SOP Instance UID.",
            object_wildcard(storage.exported_arn("QuarantineBucketArn"), "*"): "Writes refused files under "
            "<partner>/<object id>, for any partner.",
        })
        self.ingest.function.add_event_source(event_sources.SqsEventSource(
            self.ingest_queue,
            batch_size=resources.SQS_BATCH_SIZE,
            report_batch_item_failures=True,
            max_concurrency=settings.reserved_concurrency.get("ingest", INGEST_MAX_CONCURRENCY),
        ))

        self.preview = PythonFunction(
            self, "PreviewFunction", name="preview", settings=settings,
            environment={config.DEID_BUCKET_ENV: storage.deid_bucket.bucket_name},
            memory_size=PREVIEW_MEMORY_MB, timeout_seconds=resources.PREVIEW_TIMEOUT_SECONDS,
            reserved_concurrency=settings.reserved_concurrency.get("preview"), logs_key=self.pipeline_key, removal=removal,
            invoked_by="SQS event source mapping, failed messages redrive to the preview DLQ",
        )
        self.preview.add_to_role_policy(*preview_permissions(storage))
        acknowledge(self.preview.role.node.find_child("DefaultPolicy"), {
            object_wildcard(storage.exported_arn("DeidentifiedBucketArn"), "studies/*.dcm"): "Reads the "
            "de-identified instance named in each S3 event, any of them (DICOM objects only, not their metadata).",
            object_wildcard(storage.exported_arn("DeidentifiedBucketArn"), "previews/*"): "Writes the preview "
            "of each instance it reads, under previews/ only.",
        })
        self.preview.function.add_event_source(event_sources.SqsEventSource(
            self.preview_queue,
            batch_size=resources.SQS_BATCH_SIZE,
            report_batch_item_failures=True,
            max_concurrency=settings.reserved_concurrency.get("preview", PREVIEW_MAX_CONCURRENCY),
        ))

        self.counts = PythonFunction(
            self, "CountsFunction", name="counts", settings=settings,
            environment={
                config.TABLE_NAME_ENV: storage.table.table_name,
                config.EVENT_BUS_NAME_ENV: self.bus.event_bus_name,
            },
            memory_size=COUNTS_MEMORY_MB, timeout_seconds=resources.COUNTS_TIMEOUT_SECONDS,
            reserved_concurrency=settings.reserved_concurrency.get("counts"), logs_key=self.pipeline_key, removal=removal,
            invoked_by="DynamoDB stream event source mapping, failed batches go to its on-failure SQS destination",
        )
        self.counts.add_to_role_policy(*counts_permissions(storage, self.bus))
        self.counts.function.add_event_source(event_sources.DynamoEventSource(
            storage.table,
            starting_position=lambda_.StartingPosition.TRIM_HORIZON,
            batch_size=resources.STREAM_BATCH_SIZE,
            bisect_batch_on_error=True,
            retry_attempts=resources.STREAM_RETRY_ATTEMPTS,
            report_batch_item_failures=True,
            on_failure=event_sources.SqsDlq(self.counts_dlq),
            filters=[lambda_.FilterCriteria.filter(resources.NEW_INSTANCES_FILTER)],
        ))
        acknowledge(self.counts.role.node.find_child("DefaultPolicy"), {
            f"AwsSolutions-IAM5[Action::{action}]": "Added by CDK's grant for the on-failure destination: "
            "sending to the counts DLQ, encrypted with the pipeline key (this key only)."
            for action in ("kms:GenerateDataKey*", "kms:ReEncrypt*")
        })

        self.reconcile = PythonFunction(
            self, "ReconcileFunction", name="reconcile", settings=settings,
            environment={config.TABLE_NAME_ENV: storage.table.table_name},
            memory_size=RECONCILE_MEMORY_MB, timeout_seconds=resources.RECONCILE_TIMEOUT_SECONDS,
            reserved_concurrency=settings.reserved_concurrency.get("reconcile"), logs_key=self.pipeline_key,
            removal=removal, invoked_by="an EventBridge schedule",
            asynchronous_failures="Invoked asynchronously by an EventBridge schedule, with no retry: a failed run "
            "leaves its studies' reconcile flags in the table, and the next scheduled run takes them up; its "
            "errors raise the ReconcileErrors alarm. A DLQ would hold only copies of the schedule's empty event.",
        )
        self.reconcile.add_to_role_policy(*reconcile_permissions(storage))
        events.Rule(
            self, "ReconcileSchedule",
            description="Recount the studies the counts function flagged (dicomshare_aws.reconcile)",
            schedule=events.Schedule.rate(cdk.Duration.minutes(resources.RECONCILE_SCHEDULE_MINUTES)),
            targets=[targets.LambdaFunction(self.reconcile.function, retry_attempts=0)],
        )
        self.alarm("ReconcileErrors", self.reconcile.function.metric_errors(
            period=cdk.Duration.minutes(resources.RECONCILE_SCHEDULE_MINUTES), statistic="Sum"), threshold=1,
            description="The reconcile function failed: flagged studies keep possibly wrong counts until a run succeeds")
        self.alarm("CountsIteratorAge", self.counts.function.metric(
            "IteratorAge", period=cdk.Duration.minutes(1), statistic="Maximum"),
            threshold=resources.ITERATOR_AGE_ALARM_SECONDS * 1000,
            description="The counts function is an hour behind the table's stream (throttled, failing or "
            "disabled); records older than 24 hours expire uncounted: see docs/ingest.md, 'Reconciliation'")

        for dlq in (self.ingest_dlq, self.preview_dlq, self.counts_dlq):
            self.alarm(f"{dlq.node.id}Depth", dlq.metric_approximate_number_of_messages_visible(
                period=cdk.Duration.minutes(1), statistic="Maximum"), threshold=1,
                description="Messages in a dead-letter queue: objects or records that were not processed")
        for queue, backlog_seconds in ((self.ingest_queue, INGEST_BACKLOG_ALARM_SECONDS),
                                       (self.preview_queue, PREVIEW_BACKLOG_ALARM_SECONDS)):
            self.alarm(f"{queue.node.id}Age", queue.metric_approximate_age_of_oldest_message(
                period=cdk.Duration.minutes(1), statistic="Maximum"), threshold=backlog_seconds,
                description="The oldest message has waited too long: the function is failing or throttled")

        acknowledge_notifications_handler(self)

        cdk.CfnOutput(self, "EventBusName", value=self.bus.event_bus_name)
        cdk.CfnOutput(self, "IngestDeadLetterQueueUrl", value=self.ingest_dlq.queue_url)

    def dead_letter_queue(self, id: str) -> sqs.Queue:
        return sqs.Queue(
            self, id,
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.pipeline_key,
            enforce_ssl=True,
            retention_period=MESSAGE_RETENTION,
        )

    def work_queue(self, id: str, function_timeout_seconds: int, dlq: sqs.Queue) -> sqs.Queue:
        return sqs.Queue(
            self, id,
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.pipeline_key,
            enforce_ssl=True,
            visibility_timeout=cdk.Duration.seconds(resources.visibility_timeout(function_timeout_seconds)),
            retention_period=MESSAGE_RETENTION,
            dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=resources.MAX_RECEIVE_COUNT),
        )

    def alarm(self, id: str, metric: cloudwatch.Metric, *, threshold: float, description: str) -> None:
        alarm = cloudwatch.Alarm(
            self, id,
            metric=metric,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.alarm_topic))


def acknowledge_notifications_handler(stack: cdk.Stack) -> None:
    """CDK's own function that configures bucket notifications (a CloudFormation custom resource)."""
    handler = next(c for c in stack.node.children if c.node.id.startswith("BucketNotificationsHandler"))
    acknowledge(handler, {
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]":
            "CDK's bucket-notifications custom resource, run only during deployment; its role is defined by CDK.",
    })
    for bucket in ("IngestBucketRef", "DeidentifiedBucketRef"):
        acknowledge(stack.node.find_child(bucket), {
            "HIPAA.Security-IAMNoInlinePolicy": "CDK's bucket-notifications custom resource policy, as CDK "
            "defines it; it runs only during deployment.",
        })


def s3_event_type(name: str) -> s3.EventType:
    """``s3:ObjectCreated:*`` -> ``EventType.OBJECT_CREATED`` (S3's names to CDK's)."""
    words = re.findall(r"[A-Z][a-z]*", name.removeprefix("s3:").replace(":*", ""))
    return s3.EventType["_".join(w.upper() for w in words)]


def objects(storage: StorageStack, exported_arn: str, pattern: str) -> str:
    """``<bucket ARN>/<pattern>`` for a bucket of the storage stack."""
    return f"{storage.imported_arns[exported_arn]}/{pattern}"


def item_conditions(writes: dict) -> dict:
    """IAM conditions limiting DynamoDB writes to items whose partition key matches one of
    ``writes["leading_keys"]`` and to the attributes in ``writes["attributes"]``, returning
    nothing (``dynamodb:LeadingKeys``, ``dynamodb:Attributes``, ``dynamodb:ReturnValues``).
    They hold inside ``TransactWriteItems`` too: each item is authorized by its own action."""
    return {
        **leading_keys(writes["leading_keys"]),
        "ForAllValues:StringEquals": {"dynamodb:Attributes": list(writes["attributes"])},
        "StringEqualsIfExists": {"dynamodb:ReturnValues": "NONE"},
    }


def ingest_permissions(storage: StorageStack, bus: events.IEventBus) -> list[iam.PolicyStatement]:
    """Read and remove uploads; write de-identified instances and quarantined files; index them
    (instance items, study ownership items, quarantine records, receipts:
    ``index.INGEST_WRITES``); read a study's owner (claims, and the patient of a file without
    Patient ID) and a receipt already stored (a redelivered object's).

    An upload is removed by deleting exactly the version that was processed
    (``DeleteObjectVersion``), so a newer upload to the same key stays in place. A stored
    instance is read back only when another upload claims its SOP Instance UID, to tell a
    repeat from a conflict (``dicomshare_aws.s3_deidentify``).
    """
    return [
        iam.PolicyStatement(
            sid="ReadAndRemoveUploads",
            actions=["s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectTagging", "s3:DeleteObject",
                     "s3:DeleteObjectVersion"],
            resources=[objects(storage, "IngestBucketArn", "*")],
        ),
        iam.PolicyStatement(
            sid="StoreDeidentifiedInstances",
            actions=["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"],
            resources=[objects(storage, "DeidentifiedBucketArn", "studies/*")],
        ),
        iam.PolicyStatement(
            sid="WriteQuarantine",
            actions=["s3:PutObject", "s3:PutObjectTagging", "s3:AbortMultipartUpload"],
            resources=[objects(storage, "QuarantineBucketArn", "*")],
        ),
        iam.PolicyStatement(
            sid="DecryptUploads",
            actions=["kms:Decrypt"],
            resources=[storage.ingest_key.key_arn],
        ),
        iam.PolicyStatement(
            sid="EncryptOutputs",
            actions=["kms:GenerateDataKey", "kms:Decrypt"],
            resources=[storage.deid_key.key_arn, storage.quarantine_key.key_arn],
        ),
        iam.PolicyStatement(
            sid="IndexInstancesOwnersQuarantineAndReceipts",
            actions=["dynamodb:PutItem", "dynamodb:UpdateItem"],
            resources=[storage.imported_arns["TableArn"]],
            conditions=item_conditions(index.INGEST_WRITES),
        ),
        iam.PolicyStatement(
            sid="ReadStudyOwnersAndStoredReceipts",
            actions=["dynamodb:GetItem"],
            resources=[storage.imported_arns["TableArn"]],
            conditions=leading_keys(index.INGEST_READS),
        ),
        use_table_key(storage),
        iam.PolicyStatement(
            sid="ReadDeidentificationSecret",
            actions=["secretsmanager:GetSecretValue"],
            resources=[storage.deid_secret.secret_arn],
        ),
        iam.PolicyStatement(
            sid="DecryptDeidentificationSecret",
            actions=["kms:Decrypt"],
            resources=[storage.secret_key.key_arn],
        ),
        iam.PolicyStatement(sid="PublishEvents", actions=["events:PutEvents"], resources=[bus.event_bus_arn]),
    ]


def preview_permissions(storage: StorageStack) -> list[iam.PolicyStatement]:
    """Read de-identified instances (ranged GETs; ``.dcm`` only, the event filter's suffix),
    write their previews once (HEAD first: s3:GetObject on previews/, and s3:ListBucket so
    that a missing preview is a 404)."""
    return [
        iam.PolicyStatement(
            sid="ReadDeidentifiedInstances",
            actions=["s3:GetObject"],
            resources=[objects(storage, "DeidentifiedBucketArn", "studies/*" + resources.PREVIEW_FILTER["suffix"])],
        ),
        iam.PolicyStatement(
            sid="ListForMissingPreviews",
            actions=["s3:ListBucket"],
            resources=[storage.imported_arns["DeidentifiedBucketArn"]],
        ),
        iam.PolicyStatement(
            sid="WritePreviews",
            actions=["s3:GetObject", "s3:PutObject"],
            resources=[objects(storage, "DeidentifiedBucketArn", "previews/*")],
        ),
        iam.PolicyStatement(
            sid="UseDeidentifiedKey",
            actions=["kms:Decrypt", "kms:GenerateDataKey"],
            resources=[storage.deid_key.key_arn],
        ),
    ]


def counts_permissions(storage: StorageStack, bus: events.IEventBus) -> list[iam.PolicyStatement]:
    """Update study and series counts, put counted marks (transactions of them), put and
    delete reconcile flags (``BatchWriteItem``): ``index.COUNTS_WRITES``.

    DynamoDB has no IAM action for ``TransactWriteItems``: each item of a transaction is
    authorized by its own action (``UpdateItem``, ``ConditionCheckItem`` ...).
    """
    return [
        iam.PolicyStatement(
            sid="ReadStudies",
            actions=["dynamodb:GetItem", "dynamodb:BatchGetItem"],
            resources=[storage.imported_arns["TableArn"]],
            conditions=leading_keys(index.COUNTS_WRITES["leading_keys"]),
        ),
        iam.PolicyStatement(
            sid="UpdateCounts",
            actions=["dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:BatchWriteItem",
                     "dynamodb:ConditionCheckItem"],
            resources=[storage.imported_arns["TableArn"]],
            conditions=item_conditions(index.COUNTS_WRITES),
        ),
        use_table_key(storage),
        iam.PolicyStatement(sid="PublishEvents", actions=["events:PutEvents"], resources=[bus.event_bus_arn]),
    ]


def reconcile_permissions(storage: StorageStack) -> list[iam.PolicyStatement]:
    """Query studies' items, their instance items, marks and reconcile flags
    (``index.RECONCILE_READS``); put marks and delete flags (``BatchWriteItem``); set study
    and series counts (transactions of ``UpdateItem``)."""
    return [
        iam.PolicyStatement(
            sid="ReadStudies",
            actions=["dynamodb:Query"],
            resources=[storage.imported_arns["TableArn"]],
            conditions=leading_keys(index.RECONCILE_READS),
        ),
        iam.PolicyStatement(
            sid="RecountStudies",
            actions=["dynamodb:BatchWriteItem", "dynamodb:UpdateItem"],
            resources=[storage.imported_arns["TableArn"]],
            conditions=item_conditions(index.COUNTS_WRITES),
        ),
        use_table_key(storage),
    ]
