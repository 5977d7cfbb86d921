# Build stage: a wheel of the server and its built-in plugins.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY plugins ./plugins
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Run stage: only the wheels, a non-root user, state in a volume.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/orchestrator orchestrator \
    && mkdir -p /var/lib/orchestrator/data && chown -R orchestrator /var/lib/orchestrator
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY orchestrator.yaml /etc/orchestrator/orchestrator.yaml
USER orchestrator
WORKDIR /var/lib/orchestrator
ENV ORCHESTRATOR_LOG_FORMAT=json
VOLUME ["/var/lib/orchestrator/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status == 200 else 1)"
ENTRYPOINT ["orchestrator", "serve"]
CMD ["--config", "/etc/orchestrator/orchestrator.yaml", "--data-dir", "/var/lib/orchestrator/data"]
