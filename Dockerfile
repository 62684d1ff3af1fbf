# andon-agent: a slim Python 3.11 image, non-root, state on a volume, the config mounted read-only.
#
#   docker build -t andon-agent .
#   docker run -d --name andon --restart unless-stopped \
#     -v /etc/andon-agent/agent.toml:/etc/andon-agent/agent.toml:ro \
#     -v andon-state:/var/lib/andon-agent -e ANDON_TOKEN=... \
#     --device /dev/ttyUSB0 --group-add dialout andon-agent
#
# Multi-arch (Raspberry Pi and x86 gateways), with buildx:
#   docker buildx build --platform linux/amd64,linux/arm64 -t registry.example.com/andon-agent:0.1.0 --push .
# The config's state_dir must be /var/lib/andon-agent (the volume); [status] listen stays on 127.0.0.1
# unless you publish it (the HEALTHCHECK runs inside the container).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ANDON_CONFIG=/etc/andon-agent/agent.toml \
    ANDON_STATUS_URL=http://127.0.0.1:9108/healthz

WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY drivers ./drivers
COPY config ./config
RUN pip install --no-cache-dir . \
 && rm -rf /src \
 && groupadd --system --gid 10001 andon \
 && useradd --system --uid 10001 --gid andon --groups dialout --home-dir /var/lib/andon-agent \
      --no-create-home --shell /usr/sbin/nologin andon \
 && mkdir -p /var/lib/andon-agent /etc/andon-agent \
 && chown andon:andon /var/lib/andon-agent

USER 10001:10001
WORKDIR /var/lib/andon-agent
VOLUME ["/var/lib/andon-agent"]
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['ANDON_STATUS_URL'], timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["andon-agent"]
CMD ["run"]
