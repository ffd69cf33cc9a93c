"""Ingest function: SQS batches of S3 event notifications, one outcome per object.

The batch (partial batch responses, objects not started before the timeout, a log line and
metrics per object) is :mod:`dicomshare_aws.ingest_batch`; where each object ends,
:mod:`dicomshare_aws.ingest_object`. Logs carry the SQS message id as correlation id and
the key's HMAC (keyed with the deployment secret), never the key or a DICOM value.
"""

import os
from functools import cache, partial

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities import parameters

from dicomshare import settings as config
from dicomshare_aws.ingest_batch import ingest_batch
from dicomshare_aws.ingest_object import Destinations, ingest_object

logger = Logger(service="ingest")
metrics = Metrics()


@cache
def _clients():
    return boto3.client("s3"), boto3.client("dynamodb"), boto3.client("events")


@cache
def _sqs():
    return boto3.client("sqs")


def _secret() -> bytes:
    return parameters.get_secret(os.environ[config.DEID_SECRET_ARN_ENV], max_age=300).encode()


@metrics.log_metrics
@logger.inject_lambda_context(log_event=False)
def handler(event, context):
    s3, dynamodb, events = _clients()
    ingest = partial(ingest_object, s3, dynamodb, destinations=Destinations.from_environment(os.environ),
                     settings=config.from_environment(), secret=_secret, events=events)
    return ingest_batch(event, context, ingest=ingest, secret=_secret, sqs=_sqs, logger=logger, metrics=metrics)
