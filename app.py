#!/usr/bin/env python3
"""CDK entry point: ``npx aws-cdk@^2.1148 deploy --all`` (see docs/deployment.md)."""

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

from stacks.dicomshare_app import build

app = cdk.App()
build(app)
cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app), HIPAASecurityChecks(app))
app.synth()
