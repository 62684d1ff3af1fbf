# andon-agent: slim Python 3.11 image, non-root, state on a volume, config mounted read-only.
#   docker build -t andon-agent .
#   docker run -v /etc/andon-agent/agent.toml:/etc/andon-agent/agent.toml:ro -v andon-state:/var/lib/andon-agent andon-agent
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ANDON_CONFIG=/etc/andon-agent/agent.toml

WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY drivers ./drivers
COPY config ./config
RUN pip install . && rm -rf /src \
 && useradd --system --uid 10001 --home-dir /var/lib/andon-agent --shell /usr/sbin/nologin andon \
 && mkdir -p /var/lib/andon-agent /etc/andon-agent && chown andon /var/lib/andon-agent

USER andon
WORKDIR /var/lib/andon-agent
VOLUME ["/var/lib/andon-agent"]
ENTRYPOINT ["andon-agent"]
CMD ["run"]
