# syntax=docker/dockerfile:1
# One image for every Nexus service. Each Kubernetes Deployment picks its service with
# `command` (python -m nexus_gateway | nexus_broker | nexus_policy); the migration Job runs
# `python -m nexus_broker migrate` and `python -m nexus_policy migrate`; Envoy's init
# container copies the transcoder descriptor from /opt/nexus/nexus.pb and the OpenAPI document
# Envoy serves from /opt/nexus/openapi.json.
#
# Build from the repository root:   docker build -t nexus:0.1.0 .
# For reproducible builds pin the base by digest: --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY libs ./libs
COPY gen/python ./gen/python
COPY services ./services
# A regular (not editable) install: the packages, their migrations and the generated code
# land in the venv, with the pinned dependencies from pyproject.toml.
RUN /opt/venv/bin/pip install .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="nexus" \
      org.opencontainers.image.description="Nexus credential broker: gateway, broker and policy services"
RUN groupadd --system --gid 10001 nexus \
    && useradd --system --uid 10001 --gid nexus --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin nexus
COPY --from=build /opt/venv /opt/venv
COPY envoy/nexus.pb /opt/nexus/nexus.pb
COPY envoy/openapi.json /opt/nexus/openapi.json
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/nexus
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 50051 8081 50061 50071
CMD ["python", "-m", "nexus_gateway"]
