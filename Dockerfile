# Shoal: one image for every process; the command picks the role.
#   docker build -t shoal:0.1.0 .
# A local cluster (a coordinator and two shards, see CMD):
#   docker run -p 7070:7070 -v shoal-data:/data shoal:0.1.0
# One shard, and one coordinator in front of shards:
#   docker run -v shard0:/data -e SHOAL_HEALTH_PORT=7100 shoal:0.1.0 shard --data /data --listen 0.0.0.0:7100
#   docker run -v "$PWD/topology.json:/etc/shoal/topology.json:ro" -p 7070:7070 shoal:0.1.0 \
#       coordinator --topology /etc/shoal/topology.json --listen 0.0.0.0:7070
# deploy/compose.yaml and deploy/k8s/ run it as a cluster.

# Build stage: install the package and its wheels into a venv, so the runtime stage carries
# neither the source tree nor pip's build dependencies.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/shoal
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk ./sdk
COPY coordinator ./coordinator
COPY shard ./shard
RUN /opt/shoal/bin/pip install . \
    && /opt/shoal/bin/shoal --help > /dev/null

FROM python:3.11-slim
# SHOAL_HEALTH_PORT: the port the HEALTHCHECK probes on 127.0.0.1; set it to the port of --listen
# (7070 for a coordinator, 7100 for a shard).
ENV PATH=/opt/shoal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SHOAL_HEALTH_PORT=7070
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and fsGroup can match it.
RUN groupadd --system --gid 10001 shoal \
    && useradd --system --uid 10001 --gid shoal --no-create-home --home-dir /data \
        --shell /usr/sbin/nologin shoal \
    && mkdir /data \
    && chown shoal:shoal /data
COPY --from=build /opt/shoal /opt/shoal
USER 10001:10001
WORKDIR /data
# A shard's RocksDB and index snapshots; a fresh named volume inherits the shoal owner from here.
VOLUME /data
EXPOSE 7070 7100
# grpc.health.v1 Check of the whole server (service ""): healthy only while it answers SERVING,
# so a shard still loading its data counts as starting. Uses grpcio, already installed: no
# probe binary to download.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os,sys,grpc;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;c=grpc.insecure_channel('127.0.0.1:'+os.environ['SHOAL_HEALTH_PORT'],options=[('grpc.enable_http_proxy',0)]);sys.exit(g.HealthStub(c).Check(h.HealthCheckRequest(),timeout=3).status!=h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["shoal"]
# With no command, a whole local cluster (a coordinator and two shards) in one container:
#   docker run -p 7070:7070 -v shoal-data:/data shoal:0.1.0
CMD ["up", "--host", "0.0.0.0", "--port", "7070", "--data", "/data", "--shards", "2"]
