# syntax=docker/dockerfile:1
# The server image: `docker build -t orchestrator-server .` (deploy/ has compose, Kubernetes and systemd).
# A pinned base (update it deliberately, e.g. for a CVE): Python 3.11 on Debian 12.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# Build stage. Dependencies first, in their own layer: a change to the sources does not rebuild them.
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml ./
# With the cluster extra's nats-py (pure Python): one image runs a single server or a replica (--nats-url).
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; wanted = extras['server'] + extras['cluster']; \
print('\n'.join(p['dependencies'] + [d for d in wanted if not d.startswith('orchestrator-server')]))" \
    > /tmp/requirements.txt \
    && pip wheel --no-cache-dir --wheel-dir /deps -r /tmp/requirements.txt
# Then the server and its built-in plugins, as one wheel.
COPY README.md LICENSE MANIFEST.in orchestrator.yaml ./
COPY orchestrator ./orchestrator
COPY plugins ./plugins
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /app .

# Run stage: the wheels only, a numeric non-root user (runAsNonRoot can verify it), state in a volume.
FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --gid 0 --home-dir /var/lib/orchestrator orchestrator \
    && mkdir -p /var/lib/orchestrator/data && chown -R 10001:0 /var/lib/orchestrator
COPY --from=build /deps /deps
RUN pip install --no-cache-dir --no-index /deps/*.whl && rm -rf /deps
COPY --from=build /app /app
RUN pip install --no-cache-dir --no-index --no-deps /app/*.whl && rm -rf /app
COPY orchestrator.yaml /etc/orchestrator/orchestrator.yaml
USER 10001:0
WORKDIR /var/lib/orchestrator
# The config file by environment, so `serve` and `healthcheck` read the same settings (port included).
ENV ORCHESTRATOR_CONFIG=/etc/orchestrator/orchestrator.yaml \
    ORCHESTRATOR_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/orchestrator/data"]
EXPOSE 8080
# Exec form, and the port from the settings: `healthcheck` asks /readyz where `serve` listens.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["orchestrator", "healthcheck", "--path", "/readyz"]
ENTRYPOINT ["orchestrator", "serve"]
CMD ["--data-dir", "/var/lib/orchestrator/data"]
