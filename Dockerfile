# syntax=docker/dockerfile:1
# meeting-gateway image: `docker build -t meeting-gateway:0.1.0 .`
# Stage 1 installs the package as the README does (a virtual environment, `pip install .`);
# stage 2 copies only that environment onto a clean base and runs as a non-root user.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A compiler only for dependencies without a wheel for this platform; it stays in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY ingest ingest
COPY fanout fanout
COPY store store
COPY shared shared
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /var/lib/meeting-gateway --shell /usr/sbin/nologin gateway \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/meeting-gateway
COPY --from=build /opt/venv /opt/venv
# The root filesystem may be read-only: no bytecode writes; state goes to /var/lib/meeting-gateway
# (the working directory, so the default SQLite URL ./data/... lands there too).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    JWT_PUBLIC_KEY_PATH=/etc/meeting-gateway/keys/jwt.pub
WORKDIR /var/lib/meeting-gateway
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["meeting-gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
