"""The hosted DICOM gateway (optional): ``dicomshare gateway`` on ECS Fargate behind an
internal Network Load Balancer, for partners that reach AWS over a VPN.

Off unless the configuration document has ``"gateway": {"enabled": true, ...}``
(:class:`dicomshare.settings.GatewayService`). Its own VPC has isolated subnets only (no
internet route): S3 through a gateway endpoint, ECR, CloudWatch Logs through interface
endpoints (and STS's, to assume the partner roles). The spool is an encrypted EFS file
system, so a replaced task resumes it. The task role writes nothing to S3 itself: it may
only assume its partners' upload roles (:mod:`stacks.storage`), and the gateway uploads
each partner's instances with that partner's role; which partner an instance belongs to is
decided by its calling AE title (and the security group admits only the partners' VPN
ranges). The partners' VPN (Site-to-Site VPN or Transit Gateway attachment to this VPC)
is the hospital's network decision and not created here: docs/gateway.md.
"""

from __future__ import annotations

import re

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_efs as efs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from dicomshare.settings import GatewayService
from stacks.acknowledge import acknowledge
from stacks.python_function import allow_cloudwatch_logs, encrypted_log_group
from stacks.storage import StorageStack, role_arn

SPOOL_PATH = "/var/spool/dicomshare-gateway"
GATEWAY_CPU = 512
GATEWAY_MEMORY_MB = 1024
MIN_FREE_BYTES = 1024**3
"""EFS grows without a limit; the check still guards against a failing mount."""


def gateway_document(service: GatewayService, storage: StorageStack) -> dict:
    """The gateway's configuration file (dicomshare_gateway.config), as the container gets it."""
    return {
        "version": 1, "ae_title": service.ae_title, "bind_address": "0.0.0.0", "port": service.port,
        "spool_dir": f"{SPOOL_PATH}/spool", "min_free_bytes": MIN_FREE_BYTES,
        "upload_id_secret_file": f"{SPOOL_PATH}/upload-id-secret",
        "upload": {"bucket": storage.ingest_bucket.bucket_name, "region": storage.region,
                   "sse_kms_key_id": storage.ingest_key.key_arn},
        "partners": [{"id": partner, "calling_ae_titles": list(titles), "role_arn": arn}
                     for (partner, titles), arn in zip(sorted(service.calling_ae_titles.items()),
                                                       partner_role_arns(storage, service))],
    }


def partner_role_arns(storage: StorageStack, service: GatewayService) -> list[str]:
    """The upload roles of the gateway's partners, in partner id order: their names are
    derived (:meth:`dicomshare.settings.Partner.role_name`), so no export is needed."""
    settings = storage.settings
    return [role_arn(storage, settings.partner(partner).role_name(settings.environment, storage.region))
            for partner in sorted(service.calling_ae_titles)]


class GatewayServiceStack(cdk.Stack):
    def __init__(self, scope: Construct, id: str, *, storage: StorageStack, service: GatewayService,
                 removal: cdk.RemovalPolicy, **kwargs) -> None:
        super().__init__(scope, id, **kwargs)
        settings = storage.settings
        self.key = kms.Key(self, "GatewayKey", description="dicomshare gateway spool (EFS), logs and flow logs",
                           enable_key_rotation=True, removal_policy=removal)
        allow_cloudwatch_logs(self.key)

        self.vpc = ec2.Vpc(
            self, "Vpc", ip_addresses=ec2.IpAddresses.cidr(service.vpc_cidr), max_azs=2, nat_gateways=0,
            subnet_configuration=[ec2.SubnetConfiguration(name="gateway", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED,
                                                          cidr_mask=24)],
            restrict_default_security_group=True,
        )
        self.vpc.add_flow_log("FlowLogs", destination=ec2.FlowLogDestination.to_cloud_watch_logs(
            encrypted_log_group(self, "FlowLogGroup", key=self.key, settings=settings, removal=removal)))
        self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        endpoints = [self.vpc.add_interface_endpoint(name, service=endpoint, open=False)
                     for name, endpoint in (("EcrApi", ec2.InterfaceVpcEndpointAwsService.ECR),
                                            ("EcrDocker", ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER),
                                            ("Logs", ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS),
                                            ("Sts", ec2.InterfaceVpcEndpointAwsService.STS))]

        self.spool = efs.FileSystem(
            self, "Spool", vpc=self.vpc, encrypted=True, kms_key=self.key, enable_automatic_backups=True,
            removal_policy=removal, throughput_mode=efs.ThroughputMode.ELASTIC)
        access_point = self.spool.add_access_point(
            "SpoolAccessPoint", path="/gateway", create_acl=efs.Acl(owner_uid="1000", owner_gid="1000", permissions="700"),
            posix_user=efs.PosixUser(uid="1000", gid="1000"))

        task_role = iam.Role(self, "TaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
                             role_name=service.task_role_name(settings.environment, self.region),
                             description=f"dicomshare {settings.environment}: hosted gateway (assumes its partners' "
                             "upload roles)")
        task = ecs.FargateTaskDefinition(
            self, "Task", task_role=task_role, cpu=GATEWAY_CPU, memory_limit_mib=GATEWAY_MEMORY_MB,
            runtime_platform=ecs.RuntimePlatform(cpu_architecture=ecs.CpuArchitecture.ARM64,
                                                 operating_system_family=ecs.OperatingSystemFamily.LINUX))
        task.add_volume(name="spool", efs_volume_configuration=ecs.EfsVolumeConfiguration(
            file_system_id=self.spool.file_system_id, transit_encryption="ENABLED",
            authorization_config=ecs.AuthorizationConfig(access_point_id=access_point.access_point_id, iam="ENABLED")))
        container = task.add_container(
            "Gateway", image=container_image(self, service.image),
            environment={"DICOMSHARE_GATEWAY_CONFIG": self.to_json_string(gateway_document(service, storage)),
                         "TMPDIR": SPOOL_PATH},
            logging=ecs.LogDrivers.aws_logs(stream_prefix="gateway", log_group=encrypted_log_group(
                self, "Logs", key=self.key, settings=settings, removal=removal)),
            port_mappings=[ecs.PortMapping(container_port=service.port)],
            readonly_root_filesystem=True,
        )
        container.add_mount_points(ecs.MountPoint(container_path=SPOOL_PATH, source_volume="spool", read_only=False))
        task.add_to_task_role_policy(iam.PolicyStatement(
            sid="AssumePartnerUploadRoles", actions=["sts:AssumeRole"], resources=partner_role_arns(storage, service)))
        task.add_to_task_role_policy(iam.PolicyStatement(
            actions=["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
            resources=[self.spool.file_system_arn],
            conditions={"StringEquals": {"elasticfilesystem:AccessPointArn": access_point.access_point_arn}}))

        cluster = ecs.Cluster(self, "Cluster", vpc=self.vpc, container_insights_v2=ecs.ContainerInsights.ENABLED)
        self.service = ecs.FargateService(
            self, "Service", cluster=cluster, task_definition=task, desired_count=1, min_healthy_percent=0,
            max_healthy_percent=100, vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED))
        self.spool.connections.allow_default_port_from(self.service)
        for endpoint in endpoints:
            endpoint.connections.allow_default_port_from(self.service)
        for cidr in (service.vpc_cidr, *service.allowed_cidrs):
            self.service.connections.allow_from(ec2.Peer.ipv4(cidr), ec2.Port.tcp(service.port),
                                                "DICOM from the partners' VPN ranges")

        self.load_balancer = elbv2.NetworkLoadBalancer(
            self, "LoadBalancer", vpc=self.vpc, internet_facing=False,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            deletion_protection=removal == cdk.RemovalPolicy.RETAIN)
        listener = self.load_balancer.add_listener("Dicom", port=service.port, protocol=elbv2.Protocol.TCP)
        listener.add_targets("Gateway", port=service.port, protocol=elbv2.Protocol.TCP, targets=[self.service],
                             deregistration_delay=cdk.Duration.seconds(60))

        self.acknowledge(task, removal)
        cdk.CfnOutput(self, "GatewayAddress", value=self.load_balancer.load_balancer_dns_name,
                      description=f"Partners send C-STORE to {service.ae_title}@<this name>:{service.port} over the VPN")

    def acknowledge(self, task: ecs.FargateTaskDefinition, removal: cdk.RemovalPolicy) -> None:
        if task.execution_role is not None:
            acknowledge(task.execution_role, {
                "AwsSolutions-IAM5[Resource::*]": "ecr:GetAuthorizationToken, which ECR defines on no resource; "
                "image pulls themselves are granted on the gateway's repository only.",
            })
        acknowledge(task, {
            "AwsSolutions-ECS2": "The gateway's configuration document (bucket, key ARN, AE titles, partner role "
            "ARNs) and TMPDIR (received instances are written to the EFS volume, the root file system is "
            "read-only); no secret: credentials come from the task role and the partner roles it assumes.",
        })
        for construct in (task, task.task_role):
            acknowledge(construct, {
                "HIPAA.Security-IAMNoInlinePolicy": "The task and execution roles' policies belong to this one "
                "task definition; managed policies would be attached to nothing else.",
            })
        acknowledge(self.load_balancer, {
            "AwsSolutions-ELB2": "A TCP listener: NLB access logs exist for TLS listeners only; VPC flow logs record "
            "every connection.",
            "HIPAA.Security-ELBLoggingEnabled": "A TCP listener: NLB access logs exist for TLS listeners only; VPC "
            "flow logs record every connection.",
            "HIPAA.Security-ELBv2ACMCertificateRequired": "DICOM over TCP; TLS is the gateway's own (its "
            "configuration's tls section) end to end, not terminated at the load balancer.",
        })
        acknowledge(self.spool, {
            "HIPAA.Security-EFSInBackupPlan": "Automatic backups (AWS Backup's default plan) are on; the spool "
            "holds instances only until S3 confirms them.",
        })
        acknowledge(self.vpc, {
            "HIPAA.Security-IAMNoInlinePolicy": "The flow log role's policy, as CDK defines it for this one "
            "flow log (write to its log group).",
        })
        if removal != cdk.RemovalPolicy.RETAIN:
            acknowledge(self.load_balancer, {
                "HIPAA.Security-ELBDeletionProtectionEnabled": "Environments other than prod are destroyed with "
                "their stacks; prod's load balancer has deletion protection on.",
            })


ECR_IMAGE = re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/(?P<repository>[^:@]+)[:@](?P<tag>.+)$")


def container_image(scope: Construct, uri: str) -> ecs.ContainerImage:
    """An image of this account's ECR (the execution role is granted pulls from that
    repository only), or any other registry's image as given."""
    match = ECR_IMAGE.match(uri)
    if not match:
        return ecs.ContainerImage.from_registry(uri)
    repository = ecr.Repository.from_repository_name(scope, "GatewayRepository", match["repository"])
    return ecs.ContainerImage.from_ecr_repository(repository, match["tag"])
