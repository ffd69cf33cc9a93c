# The dicomshare DICOM gateway as a container (the hosted gateway of stacks/gateway_service.py,
# or any container host). Build from the repository root, for arm64 (Fargate runs it on Graviton):
#   docker build --platform linux/arm64 -f gateway.Dockerfile -t <account>.dkr.ecr.<region>.amazonaws.com/dicomshare-gateway:<version> .
# Configuration: the document as JSON in DICOMSHARE_GATEWAY_CONFIG, or a file at
# /etc/dicomshare-gateway/gateway.json (docs/gateway.md).
FROM public.ecr.aws/docker/library/python:3.12-slim
WORKDIR /opt/dicomshare
COPY pyproject.toml README.md LICENSE ./
COPY dicomshare ./dicomshare
COPY dicomshare_aws ./dicomshare_aws
COPY dicomshare_local ./dicomshare_local
COPY dicomshare_gateway ./dicomshare_gateway
COPY lambdas ./lambdas
RUN pip install --no-cache-dir '.[gateway]' \
 && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin gateway
USER 1000
EXPOSE 11112
ENTRYPOINT ["dicomshare", "gateway"]
