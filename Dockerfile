# andon-agent: a slim Python 3.11 image, non-root, state on a volume, the config mounted read-only.
#
#   docker build -t andon-agent .
#   docker run -d --name andon --restart unless-stopped \
#     -v /etc/andon-agent/agent.toml:/etc/andon-agent/agent.toml:ro \
#     -v andon-state:/var/lib/andon-agent -e ANDON_TOKEN=... \
#     --device /dev/ttyUSB0 --group-add dialout andon-agent
#
# Multi-arch (x86 gateways, 64-bit and 32-bit Raspberry Pi OS), with buildx (BuildKit) and QEMU binfmt handlers:
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t registry.example.com/andon-agent:0.1.0 --push .
# With OPC UA by default; --build-arg EXTRAS= builds a Modbus-only image.
# The config's state_dir must be /var/lib/andon-agent (the volume); [status] listen stays on 127.0.0.1
# unless you publish it (the HEALTHCHECK runs inside the container).

# Stage 1: wheels of the agent and of everything it needs. PyPI has them for all three platforms except
# one: cffi (under OPC UA's cryptography) has no wheel for linux/arm/v7. Only when a wheel is missing is a
# C compiler installed to build it; it stays in this stage and never reaches the image.
FROM python:3.11-slim AS wheels
ARG EXTRAS=opcua
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY drivers ./drivers
# agent/demo/data/demo.toml (the demo's config, in the package) is a link to config/demo.toml
COPY config ./config
# hadolint ignore=DL3008
RUN if ! pip wheel --no-cache-dir --only-binary=:all: --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"; then \
      apt-get update \
      && apt-get install -y --no-install-recommends gcc libc6-dev libffi-dev \
      && rm -rf /var/lib/apt/lists/* \
      && pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"; \
    fi \
 && sha256sum /wheels/*.whl > /wheels/SHA256SUMS

# Stage 2: the image: those wheels installed (bind-mounted, so they take no layer), nothing built here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ANDON_CONFIG=/etc/andon-agent/agent.toml \
    ANDON_STATUS_URL=http://127.0.0.1:9108/healthz

# The wheels' checksums come first, so that new wheels run the next step again in every builder (not
# all of them count a bind mount's content in the cache key); the image keeps them as a record.
COPY --from=wheels /wheels/SHA256SUMS /usr/local/share/andon-agent/wheels.sha256
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    sha256sum --quiet -c /usr/local/share/andon-agent/wheels.sha256 \
 && pip install --no-cache-dir --no-index /wheels/*.whl \
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
