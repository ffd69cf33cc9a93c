#!/usr/bin/env python3
"""CDK entry point: ``npx aws-cdk@^2.1148 deploy --all`` (see docs/deployment.md).

``python app.py`` (``make synth``) works too: ``cdk.json``'s context is the default here,
and whatever the CDK CLI passes (``-c dicomshare_env=prod``, bundling selection) wins.
"""

import json
import os
from pathlib import Path

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

from stacks.dicomshare_app import build

app = cdk.App(
    context=json.loads(Path(__file__).with_name("cdk.json").read_text())["context"],
    outdir=os.environ.get("CDK_OUTDIR", "cdk.out"),
)
build(app)
cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), HIPAASecurityChecks(app))
app.synth()
