"""The CDK app: synthesized once (bundling skipped) with cdk-nag's AwsSolutions and
HIPAA.Security packs; assertions on the templates, the nag report and cfn-lint.

``test_ingest_bundle_fits_lambda_limit`` really bundles the ingest function (pip needs
PyPI, or its cache).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk  # noqa: E402
import pytest  # noqa: E402
from aws_cdk import aws_lambda as lambda_  # noqa: E402
from aws_cdk.assertions import Match, Template  # noqa: E402
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks  # noqa: E402

from dicomshare import index, shares  # noqa: E402
from dicomshare.settings import ConfigError, GatewayService, Partner, from_document  # noqa: E402
from dicomshare_aws import resources  # noqa: E402
from stacks.dicomshare_app import build  # noqa: E402
from stacks.pip_bundling import LAMBDA_PYTHON_VERSION, PROJECT_ROOT, function_code, lambda_python  # noqa: E402

CDK_CONTEXT = json.loads((PROJECT_ROOT / "cdk.json").read_text())["context"]
PARTNER_ACCOUNT = "111122223333"
PARTNER_ROLE_ARN = "arn:aws:iam::444455556666:role/pacs-uploader"
PARTNER_EXTERNAL_ID = "dicomshare-demo-partner-5f1c9a"
ADMIN_ROLE_ARN = "arn:aws:iam::123456789012:role/ops/dicomshare-admin"
LAMBDA_UNZIPPED_LIMIT = 250 * 1024**2


def context(**overrides) -> dict:
    """cdk.json's context, with template-only synthesis (no stack is bundled)."""
    return {**CDK_CONTEXT, "aws:cdk:bundling-stacks": [], **overrides}


def partner_document() -> dict:
    """cdk.json's dev document, with two partners that have principals (so roles exist)."""
    document = json.loads(json.dumps(CDK_CONTEXT["dicomshare"]))
    document["partners"] = [
        {"id": "demo-partner", "principal": PARTNER_ACCOUNT, "external_id": PARTNER_EXTERNAL_ID},
        {"id": "pacs-b", "principal": PARTNER_ROLE_ARN, "options": ["rtnLongModifDatesOpt"]},
    ]
    document["admins"] = [ADMIN_ROLE_ARN]
    return document


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    """One synthesis with both nag packs; the templates are written even if nag fails."""
    return synthesize(tmp_path_factory.mktemp("cdk.out"), partner_document())


def synthesize(outdir: Path, document: dict):
    """Synthesize the app for ``document`` with both nag packs: ``(outdir, stacks, app,
    nag_error)``; the templates are written even if nag fails."""
    app = cdk.App(context=context(dicomshare=document), outdir=str(outdir))
    stacks = build(app)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), HIPAASecurityChecks(app))
    try:
        app.synth()
        nag_error = None
    except RuntimeError as error:
        nag_error = str(error)
    return outdir, stacks, app, nag_error


def template(synthesized, stack_name: str) -> Template:
    outdir = synthesized[0]
    return Template.from_json(json.loads((outdir / f"{stack_name}.template.json").read_text()))


@pytest.fixture(scope="module")
def storage(synthesized):
    return template(synthesized, "dicomshare-dev-storage")


@pytest.fixture(scope="module")
def ingest(synthesized):
    return template(synthesized, "dicomshare-dev-ingest")


@pytest.fixture(scope="module")
def share_api(synthesized):
    return template(synthesized, "dicomshare-dev-share-api")


def render(value) -> str:
    """An IAM resource as text: imports by export name, attributes as <Id.Attr>."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        return value["Fn::Join"][0].join(render(v) for v in value["Fn::Join"][1])
    if "Fn::ImportValue" in value:
        return f"import:{value['Fn::ImportValue']}"
    if "Fn::GetAtt" in value:
        return "<{}.{}>".format(*value["Fn::GetAtt"])
    if "Ref" in value:
        return f"<{value['Ref']}>"
    return json.dumps(value)


def role_statements(t: Template, role_prefix: str) -> list[dict]:
    """Every statement of the policies attached to the role whose logical id starts with ``role_prefix``."""
    statements = []
    for policy in t.find_resources("AWS::IAM::Policy").values():
        roles = [r["Ref"] for r in policy["Properties"].get("Roles", []) if "Ref" in r]
        if any(r.startswith(role_prefix) for r in roles):
            for s in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
                res = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
                statements.append({**s, "Action": actions, "Resource": [render(r) for r in res]})
    assert statements, f"no policy for {role_prefix}"
    return statements


def granted(statements: list[dict], action: str) -> list[str]:
    """Resources ``action`` is allowed on."""
    return [r for s in statements if s["Effect"] == "Allow" and action in s["Action"] for r in s["Resource"]]


def functions(t: Template) -> dict[str, dict]:
    """The dicomshare functions (not CDK's own custom-resource handlers)."""
    return {k: v for k, v in t.find_resources("AWS::Lambda::Function").items()
            if v["Properties"]["Handler"].startswith("lambdas.")}


# Configuration and stacks


def test_cdk_json_documents_are_valid_configurations():
    dev = from_document(CDK_CONTEXT["dicomshare"])
    prod = from_document(CDK_CONTEXT["dicomshare:prod"])
    assert (dev.environment, prod.environment) == ("dev", "prod")
    assert [p.id for p in dev.partners] == ["demo-partner"]


def test_stack_names_carry_the_environment(synthesized):
    stacks = synthesized[1]
    assert [s.stack_name for s in (stacks.storage, stacks.ingest, stacks.share_api, stacks.edge, stacks.web)] == [
        "dicomshare-dev-storage", "dicomshare-dev-ingest", "dicomshare-dev-share-api", "dicomshare-dev-edge",
        "dicomshare-dev-web"]


def test_prod_selects_its_document_and_retains_data():
    app = cdk.App(context=context(dicomshare_env="prod"))
    stacks = build(app)
    assert stacks.storage.stack_name == "dicomshare-prod-storage"
    for construct in (stacks.storage.ingest_bucket, stacks.storage.deid_bucket, stacks.storage.table,
                      stacks.storage.deid_key, stacks.storage.deid_secret):
        assert construct.node.default_child.cfn_options.deletion_policy == cdk.CfnDeletionPolicy.RETAIN
    assert stacks.storage.table.node.default_child.deletion_protection_enabled is True


def test_configuration_must_fit_in_the_lambda_environment():
    document = partner_document()
    document["partners"] = [{"id": f"partner-{i}", "principal": PARTNER_ROLE_ARN} for i in range(40)]
    with pytest.raises(ConfigError, match="4 KB"):
        build(cdk.App(context=context(dicomshare=document)))


def test_dev_is_destroyed_with_its_stacks(synthesized):
    storage_stack = synthesized[1].storage
    assert storage_stack.ingest_bucket.node.default_child.cfn_options.deletion_policy == cdk.CfnDeletionPolicy.DELETE


@pytest.mark.parametrize("resource_type, name_property", [
    ("AWS::S3::Bucket", "BucketName"), ("AWS::DynamoDB::Table", "TableName"),
    ("AWS::SQS::Queue", "QueueName"), ("AWS::Lambda::Function", "FunctionName"),
    ("AWS::IAM::Role", "RoleName"), ("AWS::SecretsManager::Secret", "Name"),
])
def test_physical_names_are_generated(synthesized, resource_type, name_property):
    """Except the partners' roles, whose names the API recognises (tested below)."""
    for name in ("dicomshare-dev-storage", "dicomshare-dev-ingest", "dicomshare-dev-share-api"):
        for logical_id, resource in template(synthesized, name).find_resources(resource_type).items():
            assert name_property not in resource["Properties"] or logical_id.startswith("PartnerRole")


def test_template_tests_skip_bundling(synthesized):
    """With ``aws:cdk:bundling-stacks`` = [] the asset is the unbundled source directory."""
    manifest = json.loads((synthesized[0] / "dicomshare-dev-ingest.assets.json").read_text())
    paths = {Path(f["source"]["path"]).name for f in manifest["files"].values()}
    assert {"ingest", "preview", "counts"} <= paths


# Storage


def data_buckets(storage: Template) -> dict[str, dict]:
    return {k: v for k, v in storage.find_resources("AWS::S3::Bucket").items() if not k.startswith("AccessLogs")}


def test_data_buckets_are_kms_encrypted_private_versioned_and_logged(storage):
    buckets = data_buckets(storage)
    assert {re.sub(r"[0-9A-F]{8}$", "", k) for k in buckets} == {"IngestBucket", "DeidentifiedBucket", "QuarantineBucket"}
    keys = set()
    for bucket in buckets.values():
        p = bucket["Properties"]
        rule = p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
        keys.add(rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]["Fn::GetAtt"][0])
        assert p["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
        assert p["VersioningConfiguration"] == {"Status": "Enabled"}
        assert p["LoggingConfiguration"]["DestinationBucketName"]["Ref"].startswith("AccessLogsBucket")
    assert len(keys) == 3, "each bucket has its own key"


def test_every_bucket_denies_plain_http(storage):
    policies = storage.find_resources("AWS::S3::BucketPolicy")
    assert len(policies) == 4
    for policy in policies.values():
        assert {"Effect": "Deny", "Action": "s3:*", "Principal": {"AWS": "*"},
                "Condition": {"Bool": {"aws:SecureTransport": "false"}}}.items() <= {
            k: v for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny" for k, v in s.items()
        }.items()


def test_keys_rotate(synthesized):
    for name in ("dicomshare-dev-storage", "dicomshare-dev-ingest", "dicomshare-dev-share-api"):
        for key in template(synthesized, name).find_resources("AWS::KMS::Key").values():
            assert key["Properties"]["EnableKeyRotation"] is True


def lifecycle(storage: Template, prefix: str) -> list[dict]:
    (bucket,) = [v for k, v in storage.find_resources("AWS::S3::Bucket").items() if k.startswith(prefix)]
    return bucket["Properties"]["LifecycleConfiguration"]["Rules"]


def test_lifecycle_rules_follow_the_retention_settings(storage):
    retention = from_document(partner_document()).retention
    assert {"Id": "expire-lingering-uploads", "ExpirationInDays": retention["ingest_linger_days"],
            "Status": "Enabled"} in lifecycle(storage, "IngestBucket")
    assert {"Id": "expire-quarantined", "ExpirationInDays": retention["quarantine_days"],
            "Status": "Enabled"} in lifecycle(storage, "QuarantineBucket")
    for prefix in ("IngestBucket", "DeidentifiedBucket", "QuarantineBucket", "AccessLogsBucket"):
        (old_versions,) = [r for r in lifecycle(storage, prefix) if r["Id"] == "expire-old-versions"]
        assert old_versions["NoncurrentVersionExpiration"] == {"NoncurrentDays": retention["noncurrent_version_days"]}
        assert old_versions["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert not [r for r in lifecycle(storage, "DeidentifiedBucket") if "ExpirationInDays" in r]


def test_deidentified_bucket_allows_cross_origin_gets_from_the_share_origin_only(synthesized, storage, share_api):
    assert not [b for b in storage.find_resources("AWS::S3::Bucket").values() if "CorsConfiguration" in b["Properties"]]
    assert not share_api.find_resources("Custom::AWS")
    web = template(synthesized, "dicomshare-dev-web")
    [cors] = [c for c in web.find_resources("Custom::AWS").values() if "putBucketCors" in render(c["Properties"]["Create"])]
    call = json.loads(render(cors["Properties"]["Create"]))
    assert (call["service"], call["action"]) == ("S3", "putBucketCors")
    assert call["parameters"]["Bucket"] == "import:dicomshare-dev-storage:ExportsOutputRefDeidentifiedBucketD0355DFD3FFFE1EF"
    (rule,) = call["parameters"]["CORSConfiguration"]["CORSRules"]
    assert rule["AllowedMethods"] == ["GET", "HEAD"]
    [distribution] = web.find_resources("AWS::CloudFront::Distribution")
    assert rule["AllowedOrigins"] == [f"https://<{distribution}.DomainName>"]
    assert render(cors["Properties"]["Update"]) == render(cors["Properties"]["Create"])


def test_table_matches_the_index_model(storage):
    storage.has_resource_properties("AWS::DynamoDB::Table", {
        "KeySchema": [{"AttributeName": index.PK, "KeyType": "HASH"}, {"AttributeName": index.SK, "KeyType": "RANGE"}],
        "BillingMode": "PAY_PER_REQUEST",
        "SSESpecification": {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": Match.any_value()},
        "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        "TimeToLiveSpecification": {"AttributeName": index.TTL_ATTRIBUTE, "Enabled": True},
        "StreamSpecification": {"StreamViewType": index.TABLE["stream"]},
        "GlobalSecondaryIndexes": [
            {"IndexName": gsi["name"], "Projection": {"ProjectionType": "ALL"}, "KeySchema": [
                {"AttributeName": gsi["partition_key"], "KeyType": "HASH"},
                {"AttributeName": gsi["sort_key"], "KeyType": "RANGE"}]}
            for gsi in index.TABLE["global_secondary_indexes"]
        ],
    })


def test_secret_is_64_hex_digits_under_its_own_key(storage):
    storage.has_resource_properties("AWS::SecretsManager::Secret", {
        "KmsKeyId": Match.any_value(),
        "GenerateSecretString": {"PasswordLength": 64, "ExcludeUppercase": True, "ExcludePunctuation": True,
                                 "ExcludeCharacters": "ghijklmnopqrstuvwxyz", "IncludeSpace": False,
                                 "RequireEachIncludedType": False},
    })


# Partner roles


def test_each_partner_with_a_principal_gets_an_upload_role(storage):
    roles = {k: v for k, v in storage.find_resources("AWS::IAM::Role").items() if k.startswith("PartnerRole")}
    assert len(roles) == 2
    principals = {k[len("PartnerRole"):-8]: json.dumps(r["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"])
                  for k, r in roles.items()}
    assert f":iam::{PARTNER_ACCOUNT}:root" in principals["demopartner"]
    assert principals["pacsb"] == json.dumps({"AWS": PARTNER_ROLE_ARN})
    outputs = storage.find_outputs("*")
    assert {"PartnerRoleArndemopartner", "PartnerRoleArnpacsb"} <= set(outputs)


def test_partner_trusted_by_account_needs_its_external_id(storage):
    roles = {k: v for k, v in storage.find_resources("AWS::IAM::Role").items() if k.startswith("PartnerRole")}
    trust = {k[len("PartnerRole"):-8]: r["Properties"]["AssumeRolePolicyDocument"]["Statement"][0] for k, r in roles.items()}
    assert trust["demopartner"]["Condition"] == {"StringEquals": {"sts:ExternalId": PARTNER_EXTERNAL_ID}}
    assert "Condition" not in trust["pacsb"]
    with pytest.raises(ConfigError, match="external_id"):
        from_document({**partner_document(), "partners": [{"id": "acct", "principal": PARTNER_ACCOUNT}]})
    for bad in ("*", "arn:aws:iam::444455556666:user/x", "12345"):
        with pytest.raises(ConfigError, match="principal"):
            from_document({**partner_document(), "partners": [{"id": "acct", "principal": bad}]})


def allowed(statements: list[dict], action: str, resource: str, request: dict[str, str]) -> bool:
    """IAM's evaluation of one identity policy, offline: an explicit deny wins, else any
    allow. Condition operators as the IAM reference defines them for a key missing from
    the request: ``StringEquals`` and ``ArnEquals`` (here without wildcards) false,
    ``StringNotEquals`` and ``StringEqualsIfExists`` true, ``Null`` by presence. A
    multivalued key (a list in ``request``, e.g. ``dynamodb:LeadingKeys``) under
    ``ForAllValues:`` holds when every value in the request matches."""
    def condition_holds(operator: str, key: str, values) -> bool:
        values = [render(v) for v in (values if isinstance(values, list) else [values])]
        present = key in request
        if operator == "Null":
            return (values == ["true"]) != present
        if operator in ("StringEquals", "ArnEquals"):
            return present and request[key] in values
        if operator == "StringNotEquals":
            return not present or request[key] not in values
        if operator == "StringEqualsIfExists":
            return not present or request[key] in values
        if operator == "ForAllValues:StringEquals":
            return all(v in values for v in request.get(key, []))
        if operator == "ForAllValues:StringLike":
            return all(any(fnmatch.fnmatchcase(v, p) for p in values) for v in request.get(key, []))
        raise AssertionError(f"operator {operator} not modelled")

    def matches(statement: dict) -> bool:
        return (action in statement["Action"]
                and any(re.fullmatch(re.escape(r).replace(r"\*", ".*"), resource) for r in statement["Resource"])
                and all(condition_holds(op, key, value) for op, keys in statement.get("Condition", {}).items()
                        for key, value in keys.items()))

    applicable = [s for s in statements if matches(s)]
    return not any(s["Effect"] == "Deny" for s in applicable) and any(s["Effect"] == "Allow" for s in applicable)


def test_partner_role_uploads_single_and_multipart_only_with_the_ingest_key(storage):
    statements = role_statements(storage, "PartnerRoledemopartner")
    actions = {a for s in statements for a in s["Action"]}
    assert actions == {"s3:PutObject", "s3:AbortMultipartUpload", "kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt"}
    (bucket,) = {r.split(">")[0] + ">" for s in statements for r in s["Resource"] if "IngestBucket" in r}
    (key_arn,) = {r for s in statements for r in s["Resource"] if "IngestKey" in r}
    own, other = f"{bucket}/demo-partner/2026/CT 1.dcm", f"{bucket}/pacs-b/x.dcm"
    sse = "s3:x-amz-server-side-encryption"
    ours = {sse: "aws:kms", f"{sse}-aws-kms-key-id": key_arn}
    # aws s3 cp --sse aws:kms --sse-kms-key-id <IngestKeyArn>: PutObject, or for files over
    # 8 MB CreateMultipartUpload (authorized as s3:PutObject, with the headers), UploadPart
    # and CompleteMultipartUpload (s3:PutObject, no encryption header).
    assert allowed(statements, "s3:PutObject", own, ours)
    assert allowed(statements, "s3:PutObject", own, {})
    assert allowed(statements, "s3:AbortMultipartUpload", own, {})
    assert not allowed(statements, "s3:PutObject", other, ours)
    assert not allowed(statements, "s3:PutObject", own, {sse: "AES256"})
    assert not allowed(statements, "s3:PutObject", own, {sse: "aws:kms:dsse", f"{sse}-aws-kms-key-id": key_arn})
    assert not allowed(statements, "s3:PutObject", own, {sse: "aws:kms", f"{sse}-aws-kms-key-id": "arn:aws:kms:x:1:key/other"})
    assert not allowed(statements, "s3:GetObject", own, {}) and not allowed(statements, "s3:DeleteObject", own, {})
    (kms,) = [s for s in statements if "kms:Encrypt" in s["Action"]]
    assert re.fullmatch(r"<IngestKey\w+\.Arn>", kms["Resource"][0])


def test_ingest_bucket_encrypts_uploads_by_default_with_the_ingest_key(storage):
    (bucket,) = [b for k, b in storage.find_resources("AWS::S3::Bucket").items() if k.startswith("IngestBucket")]
    (rule,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    default = rule["ServerSideEncryptionByDefault"]
    assert default["SSEAlgorithm"] == "aws:kms" and default["KMSMasterKeyID"]["Fn::GetAtt"][0].startswith("IngestKey")


def test_partner_roles_have_derived_names_and_may_read_their_receipts_only(storage, share_api):
    roles = {k: v["Properties"] for k, v in storage.find_resources("AWS::IAM::Role").items() if k.startswith("PartnerRole")}
    names = {k[len("PartnerRole"):-8]: render(r["RoleName"]) for k, r in roles.items()}
    settings = from_document(partner_document())
    for partner in settings.partners:
        assert names[partner.id.replace("-", "")] == partner.role_name("dev", "<AWS::Region>")
    policies = [p["Properties"] for k, p in share_api.find_resources("AWS::IAM::Policy").items()
                if k.startswith("PartnerReceipts")]
    assert len(policies) == 2
    for policy in policies:
        (statement,) = policy["PolicyDocument"]["Statement"]
        assert statement["Action"] == "execute-api:Invoke"
        assert render(statement["Resource"]).endswith(f"/{share_api_stage()}/GET/receipts")


def share_api_stage() -> str:
    from stacks.share_api import STAGE_NAME

    return STAGE_NAME


# Ingest pipeline


def test_work_queues_redrive_to_encrypted_dead_letter_queues(ingest):
    queues = ingest.find_resources("AWS::SQS::Queue")
    for prefix, timeout in (("IngestQueue", resources.INGEST_TIMEOUT_SECONDS),
                            ("PreviewQueue", resources.PREVIEW_TIMEOUT_SECONDS)):
        (queue,) = [v["Properties"] for k, v in queues.items() if k.startswith(prefix)]
        assert queue["VisibilityTimeout"] == resources.visibility_timeout(timeout)
        assert queue["RedrivePolicy"]["maxReceiveCount"] == resources.MAX_RECEIVE_COUNT
        assert queue["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0].startswith(prefix.replace("Queue", "DeadLetterQueue"))
    for queue in queues.values():
        assert queue["Properties"]["KmsMasterKeyId"]["Fn::GetAtt"][0].startswith("PipelineKey")


def test_s3_events_reach_the_queues(ingest):
    notifications = [v["Properties"] for v in ingest.find_resources("Custom::S3BucketNotifications").values()]
    by_bucket = {json.dumps(n["BucketName"]): n["NotificationConfiguration"]["QueueConfigurations"] for n in notifications}
    (ingest_config,) = [c for b, c in by_bucket.items() if "IngestBucketArn" in b]
    assert [(c["Events"], c["QueueArn"]["Fn::GetAtt"][0][:11]) for c in ingest_config] == [
        (list(resources.INGEST_EVENTS), "IngestQueue")]
    (preview_config,) = [c for b, c in by_bucket.items() if "DeidentifiedBucketArn" in b]
    assert preview_config[0]["QueueArn"]["Fn::GetAtt"][0].startswith("PreviewQueue")
    assert preview_config[0]["Filter"]["Key"]["FilterRules"] == [
        {"Name": "suffix", "Value": resources.PREVIEW_FILTER["suffix"]},
        {"Name": "prefix", "Value": resources.PREVIEW_FILTER["prefix"]}]


def test_functions_run_on_arm64_python312_traced_without_reserved_concurrency_by_default(synthesized):
    expected_config = from_document(partner_document()).to_json()
    found = {}
    for name in ("dicomshare-dev-ingest", "dicomshare-dev-share-api"):
        for fn in functions(template(synthesized, name)).values():
            p = fn["Properties"]
            found[p["Handler"]] = p
            assert p["Architectures"] == ["arm64"] and p["Runtime"] == "python3.12"
            assert p["TracingConfig"] == {"Mode": "Active"}
            assert "ReservedConcurrentExecutions" not in p
            env = p["Environment"]["Variables"]
            assert env["DICOMSHARE_CONFIG"] == expected_config
            assert env["POWERTOOLS_METRICS_NAMESPACE"] == "dicomshare"
            assert "LogGroup" in p["LoggingConfig"]
    assert sorted(found) == [f"lambdas.{f}.handler.handler" for f in ("api", "counts", "ingest", "preview", "reconcile")]
    assert found["lambdas.ingest.handler.handler"]["Timeout"] == resources.INGEST_TIMEOUT_SECONDS
    assert "DEID_SECRET_ARN" in found["lambdas.ingest.handler.handler"]["Environment"]["Variables"]
    for other in ("api", "counts", "preview"):
        assert "DEID_SECRET_ARN" not in found[f"lambdas.{other}.handler.handler"]["Environment"]["Variables"]


def test_log_groups_are_encrypted_with_retention(synthesized):
    for name in ("dicomshare-dev-ingest", "dicomshare-dev-share-api"):
        for group in template(synthesized, name).find_resources("AWS::Logs::LogGroup").values():
            assert group["Properties"]["RetentionInDays"] == 365
            assert "KmsKeyId" in group["Properties"]


def test_event_sources_report_batch_item_failures(ingest):
    mappings = [m["Properties"] for m in ingest.find_resources("AWS::Lambda::EventSourceMapping").values()]
    sqs = [m for m in mappings if "StartingPosition" not in m]
    assert len(sqs) == 2
    for m in sqs:
        assert m["BatchSize"] == resources.SQS_BATCH_SIZE
        assert m["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert m["ScalingConfig"]["MaximumConcurrency"] >= 2
    (stream,) = [m for m in mappings if "StartingPosition" in m]
    assert stream["BatchSize"] == resources.STREAM_BATCH_SIZE
    assert stream["BisectBatchOnFunctionError"] is True and stream["MaximumRetryAttempts"] >= 1
    assert stream["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert stream["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][0].startswith("CountsDeadLetterQueue")
    (only_new_instances,) = stream["FilterCriteria"]["Filters"]
    assert json.loads(only_new_instances["Pattern"]) == {
        "eventName": ["INSERT"], "dynamodb": {"NewImage": {
            index.PK: {"S": [{"prefix": "INSTANCES#"}]}, index.SK: {"S": [{"prefix": "INSTANCE#"}]}}}}


def test_alarms_watch_dead_letters_and_backlogs(ingest):
    alarms = [a["Properties"] for a in ingest.find_resources("AWS::CloudWatch::Alarm").values()]
    def watched(dimension: dict) -> str:
        """The logical id of the queue or function an alarm's dimension names, without its hash."""
        value = dimension["Value"]
        return (value["Fn::GetAtt"][0] if "Fn::GetAtt" in value else value["Ref"])[:-8]

    metrics = sorted((a["MetricName"], watched(a["Dimensions"][0])) for a in alarms)
    assert metrics == [
        ("ApproximateAgeOfOldestMessage", "IngestQueue"), ("ApproximateAgeOfOldestMessage", "PreviewQueue"),
        ("ApproximateNumberOfMessagesVisible", "CountsDeadLetterQueue"),
        ("ApproximateNumberOfMessagesVisible", "IngestDeadLetterQueue"),
        ("ApproximateNumberOfMessagesVisible", "PreviewDeadLetterQueue"),
        ("Errors", "ReconcileFunction"), ("IteratorAge", "CountsFunction"),
    ]
    (iterator_age,) = [a for a in alarms if a["MetricName"] == "IteratorAge"]
    assert (iterator_age["Namespace"], iterator_age["Statistic"], iterator_age["Threshold"]) == (
        "AWS/Lambda", "Maximum", resources.ITERATOR_AGE_ALARM_SECONDS * 1000)
    for alarm in alarms:
        assert alarm["AlarmActions"][0]["Ref"].startswith("AlarmTopic")
    ingest.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})


# Least privilege


def test_ingest_reads_uploads_and_writes_outputs_only(ingest):
    statements = role_statements(ingest, "IngestFunctionRole")
    assert sorted(granted(statements, "s3:GetObject")) == [
        "import:dicomshare-dev-storage-DeidentifiedBucketArn/studies/*",
        "import:dicomshare-dev-storage-IngestBucketArn/*"]
    for action in ("s3:DeleteObject", "s3:DeleteObjectVersion"):
        assert granted(statements, action) == ["import:dicomshare-dev-storage-IngestBucketArn/*"]
    assert sorted(granted(statements, "s3:PutObject")) == [
        "import:dicomshare-dev-storage-DeidentifiedBucketArn/studies/*",
        "import:dicomshare-dev-storage-QuarantineBucketArn/*"]
    assert granted(statements, "dynamodb:PutItem") == ["import:dicomshare-dev-storage-TableArn"]
    (write,) = [s for s in statements if "dynamodb:PutItem" in s["Action"]]
    assert sorted(write["Action"]) == ["dynamodb:PutItem", "dynamodb:UpdateItem"]
    assert write["Condition"]["ForAllValues:StringLike"] == {
        "dynamodb:LeadingKeys": ["INSTANCES#*", "OWNER#*", "QUARANTINE#*", "RECEIPT#*"]}
    attributes = write["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"]
    assert {"counted", "instance_count", "gsi1pk", "share_id", "ttl"}.isdisjoint(attributes)
    assert {"sop_instance_uid", "reason", "claimed_at"} <= set(attributes)
    assert write["Condition"]["StringEqualsIfExists"] == {"dynamodb:ReturnValues": "NONE"}
    (read,) = [s for s in statements if "dynamodb:GetItem" in s["Action"]]
    assert (read["Action"], read["Condition"]) == (
        ["dynamodb:GetItem"], {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["OWNER#*", "RECEIPT#*"]}})
    assert "STUDY#" not in json.dumps([write["Condition"], read["Condition"]])
    assert not [a for s in statements for a in s["Action"]
                if a.startswith("dynamodb:") and a not in ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem")]
    assert len(granted(statements, "secretsmanager:GetSecretValue")) == 1
    assert not [a for s in statements for a in s["Action"] if a.endswith("*")]


def test_ingest_cannot_write_or_read_study_and_series_items(ingest):
    """The study's partition holds what only counts and reconcile write (issue #13): ingest's
    policy, evaluated offline, allows its own items and nothing under ``STUDY#``."""
    statements = role_statements(ingest, "IngestFunctionRole")
    table = "import:dicomshare-dev-storage-TableArn"
    study, series, sop = "2.25.1", "2.25.2", "2.25.3"

    def put(key: dict, attributes) -> dict:
        return {"dynamodb:LeadingKeys": [key[index.PK]], "dynamodb:Attributes": list(attributes)}

    owned = [(index.instance_key(study, series, sop), index.INSTANCE_ATTRIBUTES),
             (index.study_owner_key(study), index.OWNER_ATTRIBUTES),
             (index.quarantine_key("o"), index.QUARANTINE_ATTRIBUTES), (index.receipt_key("o"), index.RECEIPT_ATTRIBUTES)]
    for key, attributes in owned:
        for action in ("dynamodb:PutItem", "dynamodb:UpdateItem"):
            assert allowed(statements, action, table, put(key, attributes)), key
    for key in (index.study_key(study), index.series_key(study, series), {index.PK: f"STUDY#{study}", index.SK: "X"}):
        for action in ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem"):
            assert not allowed(statements, action, table, put(key, ("pk", "sk", "partner"))), (action, key)
            assert not allowed(statements, action, table, put(key, ("pk", "sk"))), (action, key)
    assert allowed(statements, "dynamodb:GetItem", table, {"dynamodb:LeadingKeys": [index.study_owner_key(study)[index.PK]]})
    assert not allowed(statements, "dynamodb:GetItem", table,
                       {"dynamodb:LeadingKeys": [index.instance_key(study, series, sop)[index.PK]]})


def test_preview_reads_instances_and_writes_previews_only(ingest):
    statements = role_statements(ingest, "PreviewFunctionRole")
    assert sorted(granted(statements, "s3:GetObject")) == [  # previews: HEAD, so each is rendered once
        "import:dicomshare-dev-storage-DeidentifiedBucketArn/previews/*",
        "import:dicomshare-dev-storage-DeidentifiedBucketArn/studies/*.dcm"]  # never the metadata objects
    assert granted(statements, "s3:PutObject") == ["import:dicomshare-dev-storage-DeidentifiedBucketArn/previews/*"]
    assert granted(statements, "s3:ListBucket") == ["import:dicomshare-dev-storage-DeidentifiedBucketArn"]
    assert not [a for s in statements for a in s["Action"] if a.startswith(("dynamodb:", "secretsmanager:"))]


def test_counts_updates_the_index_and_touches_no_object(ingest):
    statements = role_statements(ingest, "CountsFunctionRole")
    for action in ("dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:BatchWriteItem"):
        assert granted(statements, action) == ["import:dicomshare-dev-storage-TableArn"]
    assert not granted(statements, "dynamodb:DeleteItem") and not granted(statements, "dynamodb:Scan")
    table_statements = [s for s in statements if any(a.startswith("dynamodb:") and a != "dynamodb:ListStreams"
                                                     and not a.startswith(("dynamodb:GetRecords", "dynamodb:GetShard",
                                                                           "dynamodb:DescribeStream"))
                                                     for a in s["Action"])]
    assert table_statements
    for statement in table_statements:
        assert statement["Condition"]["ForAllValues:StringLike"] == {
            "dynamodb:LeadingKeys": ["STUDY#*", "COUNTED#*", "RECONCILE"]}
    (write,) = [s for s in statements if "dynamodb:UpdateItem" in s["Action"]]
    attributes = write["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"]
    assert {"flagged_at", "instance_count", "series_count", "gsi1pk"} <= set(attributes)
    assert {"metadata_bytes", "sop_class_uid", "share_id", "reason", "revoked_at", "ttl"}.isdisjoint(attributes)
    assert not [a for s in statements for a in s["Action"] if a.startswith(("s3:", "secretsmanager:"))]


def test_reconcile_runs_on_a_schedule_and_only_recounts_the_index(ingest):
    (reconcile,) = [f for f in functions(ingest).values() if f["Properties"]["Handler"].startswith("lambdas.reconcile.")]
    assert reconcile["Properties"]["Timeout"] == resources.RECONCILE_TIMEOUT_SECONDS
    assert set(reconcile["Properties"]["Environment"]["Variables"]) >= {"TABLE_NAME"}
    assert "EVENT_BUS_NAME" not in reconcile["Properties"]["Environment"]["Variables"]
    (rule,) = ingest.find_resources("AWS::Events::Rule").values()
    assert rule["Properties"]["ScheduleExpression"] == f"rate({resources.RECONCILE_SCHEDULE_MINUTES} minutes)"
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"]["Fn::GetAtt"][0].startswith("ReconcileFunction")
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 0}
    ingest.has_resource_properties("AWS::Lambda::Permission", {
        "Principal": "events.amazonaws.com", "Action": "lambda:InvokeFunction"})
    statements = role_statements(ingest, "ReconcileFunctionRole")
    for action in ("dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem"):
        assert granted(statements, action) == ["import:dicomshare-dev-storage-TableArn"]
    assert not [a for s in statements for a in s["Action"]
                if a.startswith(("s3:", "secretsmanager:", "events:")) or a in ("dynamodb:Scan", "dynamodb:DeleteItem")]
    for statement in statements:
        if any(a.startswith("dynamodb:") for a in statement["Action"]):
            assert statement["Condition"]["ForAllValues:StringLike"] == {"dynamodb:LeadingKeys": (
                ["STUDY#*", "COUNTED#*", "RECONCILE", "INSTANCES#*"] if "dynamodb:Query" in statement["Action"]
                else ["STUDY#*", "COUNTED#*", "RECONCILE"])}


def test_api_reads_the_index_and_writes_only_share_items(share_api):
    statements = role_statements(share_api, "ApiFunctionRole")
    for action in ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem"):
        (write,) = [s for s in statements if action in s["Action"]]
        assert write["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["SHARE#*", "TOKEN#*"]}}
    assert sorted(granted(statements, "dynamodb:Query")) == [
        "import:dicomshare-dev-storage-TableArn", "import:dicomshare-dev-storage-TableArn/index/*"]
    assert sorted(granted(statements, "s3:GetObject")) == [
        "import:dicomshare-dev-storage-DeidentifiedBucketArn/previews/*",
        "import:dicomshare-dev-storage-DeidentifiedBucketArn/studies/*"]
    assert not [a for s in statements for a in s["Action"]
                if a in ("s3:PutObject", "s3:DeleteObject", "secretsmanager:GetSecretValue")]
    deid_key_actions = {a for s in statements for a in s["Action"] if any("DeidentifiedKey" in r for r in s["Resource"])}
    assert deid_key_actions == {"kms:Decrypt"}


def test_only_ingest_touches_uploads_quarantine_and_the_secret(ingest, share_api):
    for t, role in ((ingest, "PreviewFunctionRole"), (ingest, "CountsFunctionRole"), (share_api, "ApiFunctionRole")):
        statements = role_statements(t, role)
        resources_ = [r for s in statements for r in s["Resource"]]
        assert not [r for r in resources_ if "IngestBucket" in r or "QuarantineBucket" in r or "Secret" in r], role
        assert not [a for s in statements for a in s["Action"] if a.startswith("secretsmanager:")], role


# Share API


def test_admin_routes_need_iam_and_share_routes_are_public(share_api):
    methods = [m["Properties"] for m in share_api.find_resources("AWS::ApiGateway::Method").values()]
    public = sorted((m["HttpMethod"], m["ResourceId"]["Ref"]) for m in methods if m["AuthorizationType"] == "NONE")
    assert sorted((method, ref[:-8]) for method, ref in public) == sorted(
        (method, "RestApi" + re.sub(r"[^A-Za-z0-9]", "", path)) for method, path in resources.PUBLIC_ROUTES)
    assert {m["AuthorizationType"] for m in methods if m["HttpMethod"] == "ANY"} == {"AWS_IAM"}
    assert all(m["Integration"]["Type"] == "AWS_PROXY" for m in methods)


def test_resource_policy_lets_only_named_admins_reach_admin_routes(share_api):
    (api,) = share_api.find_resources("AWS::ApiGateway::RestApi").values()
    statements = {s["Sid"]: s for s in api["Properties"]["Policy"]["Statement"]}
    assert set(statements) == {"PublicShareRoutes", "NamedAdmins", "NoOtherSignedCallers"}
    public = statements["PublicShareRoutes"]
    assert (public["Effect"], public["Principal"]) == ("Allow", {"AWS": "*"})
    assert sorted(public["Resource"]) == sorted(f"execute-api:/*/{m}{p}" for m, p in resources.PUBLIC_ROUTES)
    admins = statements["NamedAdmins"]
    assert (admins["Effect"], admins["Principal"], admins["Resource"]) == (
        "Allow", {"AWS": ADMIN_ROLE_ARN}, "execute-api:/*")
    deny = statements["NoOtherSignedCallers"]
    assert (deny["Effect"], deny["Principal"], deny["Resource"]) == ("Deny", {"AWS": "*"}, "execute-api:/*")
    (admin, *partner_roles) = deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
    assert deny["Condition"]["Null"] == {"aws:PrincipalArn": "false"} and admin == ADMIN_ROLE_ARN
    assert sorted(render(role).split("PartnerRole")[1][:11] for role in partner_roles) == ["demopartner", "pacsb1838AD"], \
        "the partner roles are left to their own policy (GET /receipts only), not denied here"
    for statement in statements.values():
        assert statement["Action"] == "execute-api:Invoke"


def test_admins_must_be_role_arns():
    for bad in ("123456789012", "arn:aws:iam::123456789012:user/alice", "*", "arn:aws:iam::*:role/x"):
        with pytest.raises(ConfigError, match=r"admins\[0\]"):
            from_document({**CDK_CONTEXT["dicomshare"], "admins": [bad]})


def test_api_returns_base64_bodies_as_binary(share_api):
    share_api.has_resource_properties("AWS::ApiGateway::RestApi", {"BinaryMediaTypes": ["*/*"]})


def test_stage_is_traced_throttled_and_logged_without_tokens(share_api):
    share_api.has_resource_properties("AWS::ApiGateway::Stage", {
        "TracingEnabled": True,
        "AccessLogSetting": {"DestinationArn": Match.any_value(), "Format": Match.string_like_regexp("resourcePath")},
        "MethodSettings": Match.array_with([Match.object_like({
            "HttpMethod": "POST", "ResourcePath": "/~1redeem", "ThrottlingRateLimit": Match.any_value()})]),
    })
    (stage,) = share_api.find_resources("AWS::ApiGateway::Stage").values()
    assert "$context.path" not in stage["Properties"]["AccessLogSetting"]["Format"]
    assert {s["LoggingLevel"] for s in stage["Properties"]["MethodSettings"] if "LoggingLevel" in s} == {"ERROR"}
    assert not any(s["DataTraceEnabled"] for s in stage["Properties"]["MethodSettings"])


@pytest.fixture(scope="module")
def edge(synthesized):
    return template(synthesized, "dicomshare-dev-edge")


@pytest.mark.parametrize("stack_name, waf_scope", [
    ("dicomshare-dev-share-api", "REGIONAL"), ("dicomshare-dev-edge", "CLOUDFRONT")])
def test_waf_runs_managed_rules_and_rate_limits_every_public_path_per_ip(synthesized, stack_name, waf_scope):
    t = template(synthesized, stack_name)
    (acl,) = t.find_resources("AWS::WAFv2::WebACL").values()
    assert acl["Properties"]["Scope"] == waf_scope
    rules = {r["Name"]: r for r in acl["Properties"]["Rules"]}
    for group in ("AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet",
                  "AWSManagedRulesAmazonIpReputationList"):
        assert rules[group]["Statement"]["ManagedRuleGroupStatement"] == {"VendorName": "AWS", "Name": group}
        assert rules[group]["OverrideAction"] == {"None": {}}
    covered = set()
    for name, paths in (("public-rate-limit", ["redeem", "view", "client-zip.js", "download-worker.js"]),
                        ("share-pages-rate-limit", ["share/instances", "share/dicomjson", "share/manifest"]),
                        ("redeem-rate-limit", ["redeem"])):
        rule = rules[name]
        rate = rule["Statement"]["RateBasedStatement"]
        assert rule["Action"] == {"Block": {}} and rate["AggregateKeyType"] == "IP"
        scope_down = rate["ScopeDownStatement"]
        if waf_scope == "REGIONAL":
            path, not_trusted = scope_down["AndStatement"]["Statements"]
            trusted = not_trusted["NotStatement"]["Statement"]["ByteMatchStatement"]
            assert trusted["FieldToMatch"] == {"SingleHeader": {"Name": "x-origin-verify"}}
            assert (trusted["PositionalConstraint"], trusted["TextTransformations"]) == (
                "EXACTLY", [{"Priority": 0, "Type": "NONE"}])
            scope_down = path
        match = scope_down["RegexMatchStatement"]
        assert match["FieldToMatch"] == {"UriPath": {}}
        assert [t["Type"] for t in sorted(match["TextTransformations"], key=lambda t: t["Priority"])] == [
            "URL_DECODE", "LOWERCASE"]
        for method, path in resources.PUBLIC_ROUTES:
            matched = re.search(match["RegexString"], f"/v1{path}") is not None
            assert matched == (path.strip("/") in paths), (name, path)
            covered |= {path} if matched else set()
        assert re.search(match["RegexString"], "/v1/shares") is None
    assert covered == {path for _, path in resources.PUBLIC_ROUTES}, "every public path is rate-limited per IP"
    assert rules["redeem-rate-limit"]["Statement"]["RateBasedStatement"]["Limit"] < rules["public-rate-limit"][
        "Statement"]["RateBasedStatement"]["Limit"]
    assert len({r["Priority"] for r in rules.values()}) == len(rules)
    assert max(rules[g]["Priority"] for g in rules if g.startswith("AWSManaged")) < rules["public-rate-limit"]["Priority"]
    (logs,) = t.find_resources("AWS::Logs::LogGroup", {"Properties": {
        "LogGroupName": Match.string_like_regexp("^aws-waf-logs-")}}).values()
    assert "KmsKeyId" in logs["Properties"]
    t.has_resource_properties("AWS::WAFv2::LoggingConfiguration", {
        "RedactedFields": [{"UriPath": {}}, {"QueryString": {}}, {"SingleHeader": {"Name": "authorization"}},
                           {"SingleHeader": {"Name": shares.PIN_HEADER.lower()}},
                           {"SingleHeader": {"Name": "x-origin-verify"}}]})


def test_api_stage_is_guarded_by_the_regional_web_acl(share_api):
    share_api.has_resource_properties("AWS::WAFv2::WebACLAssociation", {
        "ResourceArn": Match.any_value(), "WebACLArn": {"Fn::GetAtt": [Match.string_like_regexp("WebAcl"), "Arn"]}})


def test_only_requests_from_the_share_origin_skip_the_stage_per_ip_limits(synthesized, share_api):
    """CloudFront forwards clinicians' requests from its own addresses, already limited per
    client IP by the share origin's ACL: they carry the secret header, nothing else can."""
    (acl,) = share_api.find_resources("AWS::WAFv2::WebACL").values()
    [secret] = share_api.find_resources("AWS::SecretsManager::Secret")
    values = set()
    for rule in acl["Properties"]["Rules"]:
        if "RateBasedStatement" in rule["Statement"]:
            _, exempt = rule["Statement"]["RateBasedStatement"]["ScopeDownStatement"]["AndStatement"]["Statements"]
            values.add(render(exempt["NotStatement"]["Statement"]["ByteMatchStatement"]["SearchString"]))
    assert values == {f"{{{{resolve:secretsmanager:<{secret}>:SecretString:::}}}}"}
    web = template(synthesized, "dicomshare-dev-web")
    [distribution] = web.find_resources("AWS::CloudFront::Distribution").values()
    [api_origin] = [o for o in distribution["Properties"]["DistributionConfig"]["Origins"] if "CustomOriginConfig" in o]
    [header] = api_origin["OriginCustomHeaders"]
    assert header["HeaderName"] == "X-Origin-Verify"
    assert re.fullmatch(rf"\{{\{{resolve:secretsmanager:import:dicomshare-dev-share-api:ExportsOutputRef{secret}\w+"
                        r":SecretString:::\}\}", render(header["HeaderValue"])), render(header["HeaderValue"])
    (edge_acl,) = template(synthesized, "dicomshare-dev-edge").find_resources("AWS::WAFv2::WebACL").values()
    assert "X-Origin-Verify".lower() not in json.dumps(edge_acl).lower()


def test_share_origin_web_acl_also_limits_viewer_files_per_ip(edge):
    (acl,) = edge.find_resources("AWS::WAFv2::WebACL").values()
    rule = {r["Name"]: r for r in acl["Properties"]["Rules"]}["viewer-files-rate-limit"]
    rate = rule["Statement"]["RateBasedStatement"]
    assert rule["Action"] == {"Block": {}} and rate["AggregateKeyType"] == "IP"
    match = rate["ScopeDownStatement"]["NotStatement"]["Statement"]["RegexMatchStatement"]
    assert match["FieldToMatch"] == {"UriPath": {}}
    viewer_files = ["/", "/index.html", "/viewer/dicomjson", "/app-config.js", "/dicomshare-viewer.js", "/v1.js"]
    assert not [path for path in viewer_files if re.search(match["RegexString"], path)]
    assert all(re.search(match["RegexString"], f"/v1{path}") for _, path in resources.PUBLIC_ROUTES)


def test_share_origin_web_acl_lives_in_us_east_1_and_guards_the_distribution(synthesized, edge):
    stacks = synthesized[1]
    assert stacks.edge.region == "us-east-1"
    assert cdk.Token.is_unresolved(stacks.web.region), "the rest of the app stays region-agnostic"
    assert stacks.edge in stacks.web.dependencies
    [acl] = edge.find_resources("AWS::WAFv2::WebACL")
    [parameter] = edge.find_resources("AWS::SSM::Parameter").values()
    assert parameter["Properties"]["Value"] == {"Fn::GetAtt": [acl, "Arn"]}
    name = parameter["Properties"]["Name"]
    assert name == stacks.edge.web_acl_parameter

    web = template(synthesized, "dicomshare-dev-web")
    [(reader_id, reader)] = [(k, c) for k, c in web.find_resources("Custom::AWS").items()
                             if "getParameter" in render(c["Properties"]["Create"])]
    call = json.loads(render(reader["Properties"]["Create"]))
    assert (call["service"], call["region"], call["parameters"]) == ("SSM", "us-east-1", {"Name": name})
    [distribution] = web.find_resources("AWS::CloudFront::Distribution").values()
    assert distribution["Properties"]["DistributionConfig"]["WebACLId"] == {
        "Fn::GetAtt": [reader_id, "Parameter.Value"]}
    reads = [s for p in web.find_resources("AWS::IAM::Policy").values()
             for s in p["Properties"]["PolicyDocument"]["Statement"] if "ssm:GetParameter" in s["Action"]]
    assert [render(s["Resource"]) for s in reads] == [
        f"arn:<AWS::Partition>:ssm:us-east-1:<AWS::AccountId>:parameter{name}"]


def test_share_links_use_the_origin_the_web_stack_writes_and_the_api_may_read_only_that(synthesized, share_api):
    name = resources.share_origin_parameter("dicomshare-dev")
    web = template(synthesized, "dicomshare-dev-web")
    [distribution] = web.find_resources("AWS::CloudFront::Distribution")
    web.has_resource_properties("AWS::SSM::Parameter", {
        "Name": name, "Type": "String", "Value": {"Fn::Join": ["", ["https://", {"Fn::GetAtt": [distribution, "DomainName"]}]]}})
    [api] = functions(share_api).values()
    assert api["Properties"]["Environment"]["Variables"]["SHARE_ORIGIN_PARAMETER"] == name
    statements = role_statements(share_api, "ApiFunction")
    assert [a for s in statements for a in s["Action"] if a.startswith("ssm:")] == ["ssm:GetParameter"]
    assert granted(statements, "ssm:GetParameter") == [
        f"arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:parameter{name}"]


SHARE_DOMAIN = {"name": "share.example.org",
                "certificate_arn": "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"}


@pytest.fixture(scope="module")
def with_share_domain(tmp_path_factory):
    """A synthesis with a custom domain for the share origin, both nag packs on."""
    outdir, _, _, nag_error = synthesize(tmp_path_factory.mktemp("cdk.out.domain"),
                                         {**partner_document(), "share_domain": SHARE_DOMAIN})
    return outdir, nag_error


def test_share_domain_names_the_links_and_the_cors_rule_and_needs_tls_1_2(with_share_domain):
    outdir, nag_error = with_share_domain
    assert nag_error is None, nag_error
    web = Template.from_json(json.loads((outdir / "dicomshare-dev-web.template.json").read_text()))
    [(distribution_id, distribution)] = web.find_resources("AWS::CloudFront::Distribution").items()
    config = distribution["Properties"]["DistributionConfig"]
    assert config["Aliases"] == ["share.example.org"]
    assert config["ViewerCertificate"] == {"AcmCertificateArn": SHARE_DOMAIN["certificate_arn"],
                                           "MinimumProtocolVersion": "TLSv1.2_2021", "SslSupportMethod": "sni-only"}
    web.has_resource_properties("AWS::SSM::Parameter", {
        "Name": resources.share_origin_parameter("dicomshare-dev"), "Value": "https://share.example.org"})
    [cors] = [c for c in web.find_resources("Custom::AWS").values() if "putBucketCors" in render(c["Properties"]["Create"])]
    (rule,) = json.loads(render(cors["Properties"]["Create"]))["parameters"]["CORSConfiguration"]["CORSRules"]
    assert rule["AllowedOrigins"] == ["https://share.example.org", f"https://<{distribution_id}.DomainName>"]
    result = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable",
                             str(outdir / "dicomshare-dev-web.template.json")], capture_output=True, text=True)
    assert not re.findall(r".*:E\d{4}:.*", result.stdout), result.stdout


@pytest.mark.parametrize("share_domain, field", [
    ({**SHARE_DOMAIN, "name": "Share.Example.org"}, "name"),
    ({**SHARE_DOMAIN, "name": "https://share.example.org"}, "name"),
    ({**SHARE_DOMAIN, "name": "localhost"}, "name"),
    ({**SHARE_DOMAIN, "certificate_arn": SHARE_DOMAIN["certificate_arn"].replace("us-east-1", "eu-west-1")},
     "certificate_arn"),
    ({"name": "share.example.org"}, "certificate_arn"),
])
def test_share_domain_is_validated(share_domain, field):
    with pytest.raises(ConfigError, match=f"share_domain.{field}"):
        from_document({**partner_document(), "share_domain": share_domain})


def test_share_domain_survives_the_lambda_environment():
    settings = from_document({**partner_document(), "share_domain": SHARE_DOMAIN})
    assert from_document(json.loads(settings.to_json())) == settings
    assert (settings.share_domain.name, from_document(partner_document()).share_domain) == ("share.example.org", None)


def test_outputs_name_what_an_engineer_needs(storage, share_api):
    assert {"IngestBucketName", "IngestKeyArn", "DeidentifiedBucketName", "QuarantineBucketName",
            "TableName"} <= set(storage.find_outputs("*"))
    assert "ApiUrl" in share_api.find_outputs("*")


# Checks


def test_cdk_nag_reports_no_unacknowledged_finding(synthesized):
    assert synthesized[3] is None, synthesized[3]
    report = json.loads((synthesized[0] / "policy-validation-report.json").read_text())
    assert report["pluginReports"] == []


def test_every_acknowledgement_gives_a_specific_reason(synthesized):
    app = synthesized[2]
    acknowledged = {}
    for construct in app.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == "aws:cdk:acknowledged-rules":
                acknowledged.update({f"{construct.node.path} {rule}": reason for rule, reason in entry.data.items()})
    assert len(acknowledged) > 20
    for where, reason in acknowledged.items():
        assert len(reason) >= 60, where


def test_share_origin_serves_the_viewer_privately_and_routes_the_api(synthesized):
    web = template(synthesized, "dicomshare-dev-web")
    [distribution] = web.find_resources("AWS::CloudFront::Distribution").values()
    config = distribution["Properties"]["DistributionConfig"]
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "redirect-to-https"
    assert [b["PathPattern"] for b in config["CacheBehaviors"]] == ["/v1/view", "/v1/*"]
    assert all("OriginAccessControlId" in o for o in config["Origins"] if "S3OriginConfig" in o)
    web.resource_count_is("AWS::CloudFront::OriginAccessControl", 1)
    [bucket] = web.find_resources("AWS::S3::Bucket").values()
    assert bucket["Properties"]["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] is True
    policies = {k: p["Properties"]["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"]
                for k, p in web.find_resources("AWS::CloudFront::ResponseHeadersPolicy").items()}
    assert all(p["ReferrerPolicy"]["ReferrerPolicy"] == "no-referrer" and p["StrictTransportSecurity"]
               and p["ContentTypeOptions"] for p in policies.values())

    def csp(behavior: dict) -> str:
        return render(policies[behavior["ResponseHeadersPolicyId"]["Ref"]]["ContentSecurityPolicy"]["ContentSecurityPolicy"])

    hashes = json.loads((PROJECT_ROOT / "web" / "build" / "viewer" / "csp.json").read_text())
    viewer = csp(config["DefaultCacheBehavior"])
    assert all(f"'sha256-{h}'" in viewer for h in hashes["script_sha256"] + hashes["style_sha256"])
    assert "'unsafe-eval'" not in viewer and "'unsafe-inline'" not in viewer
    page, api = config["CacheBehaviors"]
    assert "ContentSecurityPolicy" not in policies[api["ResponseHeadersPolicyId"]["Ref"]]
    assert api["TargetOriginId"] != config["DefaultCacheBehavior"]["TargetOriginId"]


def test_share_origin_serves_the_share_page_from_the_bucket_with_its_own_policy(synthesized):
    """``/v1/view`` is view.html from the viewer bucket, with the CSP the api function sends
    (the same function computes it), the object origin being the de-identified bucket's."""
    from lambdas.api import page as share_page
    from stacks.web import SHARE_PAGE_KEY

    web = template(synthesized, "dicomshare-dev-web")
    [distribution] = web.find_resources("AWS::CloudFront::Distribution").values()
    config = distribution["Properties"]["DistributionConfig"]
    [page] = [b for b in config["CacheBehaviors"] if b["PathPattern"] == "/v1/view"]
    assert page["TargetOriginId"] == config["DefaultCacheBehavior"]["TargetOriginId"]
    assert page["ViewerProtocolPolicy"] == "redirect-to-https"
    [association] = page["FunctionAssociations"]
    function = web.find_resources("AWS::CloudFront::Function")[association["FunctionARN"]["Fn::GetAtt"][0]]
    assert f"'/{SHARE_PAGE_KEY}'" in function["Properties"]["FunctionCode"]
    policy = web.find_resources("AWS::CloudFront::ResponseHeadersPolicy")[page["ResponseHeadersPolicyId"]["Ref"]]
    page_csp = render(policy["Properties"]["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"][
        "ContentSecurityPolicy"]["ContentSecurityPolicy"])
    object_origin = "https://<DeidentifiedBucket>.s3.<AWS::Region>.<AWS::URLSuffix>"
    expected = share_page.content_security_policy(share_page.VIEW_HTML.read_text(encoding="utf-8"), object_origin)
    assert re.sub(r'\{"Fn::Select".*?\}\]\}\]\}', "<DeidentifiedBucket>", page_csp) == expected
    assert "'sha256-" in expected and "'unsafe-inline'" not in expected
    [deployment] = web.find_resources("Custom::CDKBucketDeployment").values()
    assert len(deployment["Properties"]["SourceObjectKeys"]) == 2
    assert "/v1/view" in deployment["Properties"]["DistributionPaths"]


def test_cfn_lint_finds_no_error(synthesized):
    templates = sorted(str(p) for p in synthesized[0].glob("*.template.json"))
    assert len(templates) == 5, "storage, ingest, share API, edge and web"
    result = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable", *templates],
                            capture_output=True, text=True)
    errors = [line for line in result.stdout.splitlines() if re.search(r":E\d{4}:", line)]
    assert not errors, "\n".join(errors)
    assert result.returncode & 2 == 0, result.stdout + result.stderr


def test_reserved_concurrency_is_configuration():
    document = {**partner_document(), "reserved_concurrency": {"ingest": 8, "counts": 2, "api": None}}
    app = cdk.App(context=context(dicomshare=document))
    stacks = build(app)
    by_handler = {}
    for stack in (stacks.ingest, stacks.share_api):
        for fn in functions(Template.from_stack(stack)).values():
            by_handler[fn["Properties"]["Handler"].split(".")[1]] = fn["Properties"].get("ReservedConcurrentExecutions")
    assert by_handler == {"ingest": 8, "preview": None, "counts": 2, "reconcile": None, "api": None}
    mappings = Template.from_stack(stacks.ingest).find_resources("AWS::Lambda::EventSourceMapping").values()
    assert sorted(m["Properties"]["ScalingConfig"]["MaximumConcurrency"] for m in mappings
                  if "ScalingConfig" in m["Properties"]) == [8, 10]
    for bad in ({"ingest": 1}, {"lambda": 3}, {"counts": 0}, {"api": "5"}):
        with pytest.raises(ConfigError, match="reserved_concurrency"):
            from_document({**partner_document(), "reserved_concurrency": bad})


# Bundling


def test_ingest_bundle_fits_lambda_limit(tmp_path):
    """Bundles the ingest function for real (pip for arm64/cp312; needs PyPI or pip's cache)."""
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "BundleCheck")
    lambda_.Function(stack, "Ingest", runtime=lambda_.Runtime.PYTHON_3_12, architecture=lambda_.Architecture.ARM_64,
                     handler="lambdas.ingest.handler.handler", code=function_code("ingest"))
    app.synth()
    (asset,) = tmp_path.glob("asset.*")
    size = sum(p.stat().st_size for p in asset.rglob("*") if p.is_file())
    print(f"ingest bundle, unzipped: {size / 1024**2:.1f} MiB")
    assert size < LAMBDA_UNZIPPED_LIMIT
    assert {"dicomshare", "dicomshare_aws", "lambdas", "pydicom", "aws_lambda_powertools"} <= {p.name for p in asset.iterdir()}
    assert (asset / "dicomshare" / "data").is_dir()
    assert not (asset / "dicomshare_local").exists() and not (asset / "boto3").exists()
    assert list(asset.glob("pydicom-3.0.2.dist-info")), "the pinned version"
    assert_bytecode_for_the_runtime(asset)


def assert_bytecode_for_the_runtime(asset: Path) -> None:
    """Every module imported at a cold start has bytecode of the runtime's version, marked
    "unchecked hash" (CDK zips with a fixed mtime, so timestamp checks would fail in Lambda)."""
    magic = bytes.fromhex(subprocess.run(
        [lambda_python(), "-c", "import importlib.util; print(importlib.util.MAGIC_NUMBER.hex())"],
        capture_output=True, text=True, check=True).stdout.strip())
    for module in ("lambdas/ingest/handler.py", "dicomshare/deidentify/__init__.py", "pydicom/dataset.py",
                   "aws_lambda_powertools/logging/logger.py"):
        source = asset / module
        cached = source.parent / "__pycache__" / f"{source.stem}.cpython-{LAMBDA_PYTHON_VERSION.replace('.', '')}.pyc"
        header = cached.read_bytes()[:16]
        assert header[:4] == magic, module
        assert int.from_bytes(header[4:8], "little") == 0b01, f"{module}: hash-based, unchecked"
    assert not [p for p in asset.rglob("*.pyc") if f"cpython-{LAMBDA_PYTHON_VERSION.replace('.', '')}" not in p.name]


# Hosted DICOM gateway (optional)

GATEWAY_IMAGE = f"{PARTNER_ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/dicomshare-gateway:0.1.0"


def test_hosted_gateway_is_off_by_default(synthesized):
    assert synthesized[1].gateway is None
    assert not list(synthesized[0].glob("*gateway*.template.json"))


@pytest.fixture(scope="module")
def with_gateway(tmp_path_factory):
    """A synthesis with the hosted gateway enabled, both nag packs on."""
    outdir = tmp_path_factory.mktemp("cdk.out.gateway")
    document = partner_document()
    document["partners"].append({"id": "clinic-c"})
    document["gateway"] = {"enabled": True, "image": GATEWAY_IMAGE, "allowed_cidrs": ["10.1.0.0/16"],
                           "calling_ae_titles": {"demo-partner": ["DEMO_PACS"], "pacs-b": ["PACS_B", "CT_B"],
                                                 "clinic-c": ["CLINIC_C"]}}
    _, _, _, nag_error = synthesize(outdir, document)
    return outdir, nag_error


def test_hosted_gateway_is_nag_and_cfn_lint_clean(with_gateway):
    outdir, nag_error = with_gateway
    assert nag_error is None, nag_error
    templates = sorted(str(p) for p in outdir.glob("*.template.json"))
    assert len(templates) == 6, "storage, ingest, share API, edge, web and the gateway"
    result = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable", *templates],
                            capture_output=True, text=True)
    errors = [line for line in result.stdout.splitlines() if re.search(r":E\d{4}:", line)]
    assert not errors, "\n".join(errors)


GATEWAY_PARTNERS = ("clinic-c", "demo-partner", "pacs-b")
OWN_ACCOUNT = "arn:<AWS::Partition>:iam::<AWS::AccountId>"
"""The deploying account, as :func:`render` shows ARNs built from its pseudo parameters."""


def gateway_template(with_gateway, stack: str) -> Template:
    return Template.from_json(json.loads((with_gateway[0] / f"dicomshare-dev-{stack}.template.json").read_text()))


def partner_role_arn(partner: str) -> str:
    return f"{OWN_ACCOUNT}:role/{Partner(id=partner).role_name('dev', '<AWS::Region>')}"


TASK_ROLE_ARN = f"{OWN_ACCOUNT}:role/{GatewayService.task_role_name('dev', '<AWS::Region>')}"


def trust_statements(storage: Template, partner: str) -> list[dict]:
    (role,) = [r for k, r in storage.find_resources("AWS::IAM::Role").items()
               if k.startswith(f"PartnerRole{partner.replace('-', '')}")]
    return [{**s, "Action": [s["Action"]], "Resource": [render(s["Principal"]["AWS"])]}
            for s in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]]


def may_assume(identity: list[dict], caller: str, role_arn: str, trust: list[dict], request: dict[str, str]) -> bool:
    """Whether ``caller`` (a role ARN) may assume a role of its own account: its identity
    policy must allow ``sts:AssumeRole`` on the role, and the role's trust policy must name
    the caller's account (any principal of it, subject to conditions) or the caller itself.
    The trust statements' principals stand in for resources in :func:`allowed`."""
    request = {"aws:PrincipalArn": caller, **request}
    account = caller.split(":role/")[0] + ":root"
    return (allowed(identity, "sts:AssumeRole", role_arn, {})
            and (allowed(trust, "sts:AssumeRole", account, request) or allowed(trust, "sts:AssumeRole", caller, request)))


def test_hosted_gateway_task_role_writes_nothing_and_assumes_only_its_partners_roles(with_gateway):
    t = gateway_template(with_gateway, "gateway")
    statements = role_statements(t, "TaskRole")
    actions = {a for s in statements for a in s["Action"]}
    assert not [a for a in actions if a.startswith(("s3:", "kms:")) or "*" in a], actions
    assert actions == {"sts:AssumeRole", "elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"}
    partner_role_arns = [partner_role_arn(p) for p in GATEWAY_PARTNERS]
    assert sorted(granted(statements, "sts:AssumeRole")) == sorted(partner_role_arns)
    (role,) = [r["Properties"] for k, r in t.find_resources("AWS::IAM::Role").items() if k.startswith("TaskRole")]
    assert f"{OWN_ACCOUNT}:role/{render(role['RoleName'])}" == TASK_ROLE_ARN
    (task,) = t.find_resources("AWS::ECS::TaskDefinition").values()
    assert task["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0].startswith("TaskRole")
    (container,) = task["Properties"]["ContainerDefinitions"]
    (variable,) = [v for v in container["Environment"] if v["Name"] == "DICOMSHARE_GATEWAY_CONFIG"]
    document = json.loads(render(variable["Value"]))
    assert [(p["id"], p["role_arn"]) for p in document["partners"]] == list(zip(GATEWAY_PARTNERS, partner_role_arns))
    assert not [p for p in document["partners"] if p.get("external_id")], "the gateway's trust needs none"
    services = [render(e["Properties"]["ServiceName"]) for e in t.find_resources("AWS::EC2::VPCEndpoint").values()]
    assert "com.amazonaws.<AWS::Region>.sts" in services, "the isolated subnets reach STS through an endpoint"


def test_partner_roles_trust_the_hosted_gateway_task_role_by_arn_and_partner_accounts_by_external_id(with_gateway):
    storage = gateway_template(with_gateway, "storage")
    for partner in GATEWAY_PARTNERS:
        (gateway,) = [s for s in trust_statements(storage, partner) if s["Resource"] == [f"{OWN_ACCOUNT}:root"]]
        ((operator, conditions),) = gateway["Condition"].items()
        assert operator == "ArnEquals" and list(conditions) == ["aws:PrincipalArn"]
        assert render(conditions["aws:PrincipalArn"]) == TASK_ROLE_ARN
    assert len(trust_statements(storage, "clinic-c")) == 1, "a partner without a principal: only the gateway"
    (own,) = [s for s in trust_statements(storage, "demo-partner") if PARTNER_ACCOUNT in s["Resource"][0]]
    assert own["Condition"] == {"StringEquals": {"sts:ExternalId": PARTNER_EXTERNAL_ID}}


def test_a_role_only_the_gateway_assumes_reaches_nothing_of_the_share_api(with_gateway):
    share_api = gateway_template(with_gateway, "share-api")
    readers = sorted(k[len("PartnerReceipts"):-8]
                     for k in share_api.find_resources("AWS::IAM::Policy") if k.startswith("PartnerReceipts"))
    assert readers == ["demopartner", "pacsb"], "clinic-c has no principal: no GET /receipts"
    (api,) = share_api.find_resources("AWS::ApiGateway::RestApi").values()
    (deny,) = [s for s in api["Properties"]["Policy"]["Statement"] if s["Effect"] == "Deny"]
    spared = json.dumps(deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"])
    assert "PartnerRoledemopartner" in spared and "PartnerRoleclinicc" not in spared


def test_a_gateway_task_assuming_one_partners_role_cannot_write_under_anothers_prefix(with_gateway):
    """The offline IAM model, end to end: the task role, the partner roles' trust, and each
    partner role's upload statements."""
    gateway, storage = gateway_template(with_gateway, "gateway"), gateway_template(with_gateway, "storage")
    task = role_statements(gateway, "TaskRole")
    ingest_bucket = "arn:aws:s3:::dicomshare-dev-ingest"
    for partner in GATEWAY_PARTNERS:
        assert may_assume(task, TASK_ROLE_ARN, partner_role_arn(partner), trust_statements(storage, partner), {})
        assert not allowed(task, "s3:PutObject", f"{ingest_bucket}/{partner}/gateway/x.dcm", {})
    other_role = f"{OWN_ACCOUNT}:role/dicomshare-dev-ingest-IngestFunctionRole"
    assert not may_assume(task + [{"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": ["*"]}], other_role,
                          partner_role_arn("demo-partner"), trust_statements(storage, "demo-partner"), {}), \
        "another role of the account, even one allowed to assume anything, is not trusted"
    assert not may_assume(task, TASK_ROLE_ARN, f"{OWN_ACCOUNT}:role/dicomshare-admin", [], {})
    partner_account = f"arn:aws:iam::{PARTNER_ACCOUNT}:role/uploader"
    anything = [{"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": ["*"]}]
    trust_a = [{**s, "Resource": [r.replace("<AWS::Partition>", "aws") for r in s["Resource"]]}
               for s in trust_statements(storage, "demo-partner")]
    assert may_assume(anything, partner_account, partner_role_arn("demo-partner"), trust_a,
                      {"sts:ExternalId": PARTNER_EXTERNAL_ID})
    assert not may_assume(anything, partner_account, partner_role_arn("demo-partner"), trust_a, {}), \
        "the partner's account still presents its ExternalId"

    sessions = {p: role_statements(storage, f"PartnerRole{p.replace('-', '')}") for p in GATEWAY_PARTNERS}
    for partner, statements in sessions.items():
        (bucket,) = {r.split(">")[0] + ">" for s in statements for r in s["Resource"] if "IngestBucket" in r}
        assert allowed(statements, "s3:PutObject", f"{bucket}/{partner}/gateway/{'0' * 32}.dcm", {})
        for other in set(GATEWAY_PARTNERS) - {partner}:
            assert not allowed(statements, "s3:PutObject", f"{bucket}/{other}/gateway/{'0' * 32}.dcm", {})
            assert not allowed(statements, "s3:AbortMultipartUpload", f"{bucket}/{other}/gateway/x.dcm", {})


def test_hosted_gateway_listens_only_to_the_vpn(with_gateway):
    t = gateway_template(with_gateway, "gateway")
    ingress = [rule for group in t.find_resources("AWS::EC2::SecurityGroup").values()
               for rule in group["Properties"].get("SecurityGroupIngress", [])]
    ingress += [r["Properties"] for r in t.find_resources("AWS::EC2::SecurityGroupIngress").values()]
    assert {r["CidrIp"] for r in ingress if "CidrIp" in r} == {"10.1.0.0/16", "10.80.0.0/16"}
    assert {r["FromPort"] for r in ingress if "CidrIp" in r} == {11112}
    t.has_resource_properties("AWS::ElasticLoadBalancingV2::LoadBalancer", {"Scheme": "internal", "Type": "network"})
    t.has_resource_properties("AWS::EFS::FileSystem", {"Encrypted": True, "KmsKeyId": Match.any_value()})
    assert not t.find_resources("AWS::EC2::InternetGateway") and not t.find_resources("AWS::EC2::NatGateway")
    (task,) = t.find_resources("AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    document = json.loads(json.dumps(container["Environment"][0]["Value"]))
    assert container["Environment"][0]["Name"] == "DICOMSHARE_GATEWAY_CONFIG" and document
    assert container["ReadonlyRootFilesystem"] is True
