# syntax=docker/dockerfile:1.7
# fencex's images: one file, one image per service, chosen by the build argument SERVICE.
# Build from the repository root:
#   docker build --build-arg SERVICE=api       -t fencex/api:0.1.0 .
#   docker build --build-arg SERVICE=processor -t fencex/processor:0.1.0 .
#   docker build --build-arg SERVICE=simulator -t fencex/simulator:0.1.0 .
# and for a release, the OCI labels' revision, date and source as well:
#   --build-arg REVISION=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
#   --build-arg SOURCE=<the repository's URL>
# The images share everything but the last stage, which holds the service's port, health
# check and entry point. They run as a non-root user and need no writable root file system
# (FENCEX_DATADIR is under /tmp: mount a tmpfs or an emptyDir there). Their Python packages are
# requirements/service.lock's, exactly, checked against its hashes (`./dev lock` writes it).
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
ARG NODE_IMAGE=node:20.18.1-bookworm-slim
ARG SERVICE
# the OCI labels (org.opencontainers.image.*): VERSION is pyproject.toml's (a test checks)
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=

# the farmers' web app, served by the API under /app: built here, only its output is kept
FROM ${NODE_IMAGE} AS webapp
WORKDIR /src/webapp
COPY webapp/package.json webapp/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY webapp/build.mjs ./
COPY webapp/src ./src
RUN npm run build

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /venv
WORKDIR /src
# only the services' dependencies (no local broker, no plotting, no test tools), each at the version
# the lock pins and checked against its hashes; a layer of its own, rebuilt only when the lock changes
COPY requirements/service.lock ./requirements/
RUN /venv/bin/pip install --require-hashes -r requirements/service.lock
COPY pyproject.toml README.md ./
COPY fencex ./fencex
COPY services ./services
COPY --from=webapp /src/services/api/static/app ./services/api/static/app
# fencex itself: its dependencies are all there already (pip check fails the build otherwise)
RUN /venv/bin/pip install --no-deps . && /venv/bin/pip check

FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION
ARG REVISION
ARG CREATED
ARG SOURCE
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin fencex
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 FENCEX_DATADIR=/tmp/fencex
USER 10001:10001

FROM runtime AS service-api
LABEL org.opencontainers.image.title="fencex-api" \
      org.opencontainers.image.description="fencex's query API and the farmers' web app: real-time geofencing for farms"
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "services.api"]

FROM runtime AS service-processor
LABEL org.opencontainers.image.title="fencex-processor" \
      org.opencontainers.image.description="fencex's processor worker: GPS fixes from Kafka in, enter/exit/dwell events out"
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "services.processor"]

# no port: the check is that the simulator is still the container's process
FROM runtime AS service-simulator
LABEL org.opencontainers.image.title="fencex-simulator" \
      org.opencontainers.image.description="fencex's simulated herd: GPS collars publishing fixes to Kafka, for trials and load"
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import sys; sys.exit(b'services.simulator' not in open('/proc/1/cmdline', 'rb').read())"]
ENTRYPOINT ["python", "-m", "services.simulator"]

FROM service-${SERVICE}
