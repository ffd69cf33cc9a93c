"""Reconcile function, run on a schedule: recount the studies the counts function flagged
(a batch that failed, timed out or was killed) from their instance items, and repair
their counts and counted marks (:mod:`dicomshare_aws.reconcile`).

Studies are started only while more than :data:`DEADLINE_MARGIN_SECONDS` remain; the
flags of the rest stay for the next run.
"""

import os
import time
from functools import cache

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from dicomshare import settings as config
from dicomshare_aws.reconcile import reconcile_flagged

logger = Logger(service="reconcile")
metrics = Metrics()
DEADLINE_MARGIN_SECONDS = 120
"""A 100,000-instance study takes about a minute to recount (reads of ~220 MB)."""


@cache
def _client():
    return boto3.client("dynamodb")


@metrics.log_metrics
@logger.inject_lambda_context(log_event=False)
def handler(event, context):
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - DEADLINE_MARGIN_SECONDS
    reconciled = repaired = 0
    for result in reconcile_flagged(_client(), os.environ[config.TABLE_NAME_ENV], deadline=deadline):
        reconciled += 1
        repaired += result.repaired
        logger.info("study reconciled", extra={"study_uid": result.study_uid, "instances": result.instances,
                                               "repaired": result.repaired, "marks_added": result.marks_added,
                                               "repairs": result.repairs})
    metrics.add_metric(name="StudiesReconciled", unit=MetricUnit.Count, value=reconciled)
    metrics.add_metric(name="StudiesRepaired", unit=MetricUnit.Count, value=repaired)
    return {"reconciled": reconciled, "repaired": repaired}
