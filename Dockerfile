# sepstream application image: `sepstream worker` (default), `sepstream collect ...`, etc.
#   docker build -t sepstream:0.1.0 .
#   docker build --build-arg SEPSTREAM_EXTRAS=gpu -t sepstream:0.1.0-gpu .   # + cupy (needs the
#                                                                            #   NVIDIA runtime)
# Only the files named in COPY enter the image, so the checkout's .venv/.dev never do.

ARG PYTHON_IMAGE=python:3.12.10-slim-bookworm

# Build stage: a compiler is at hand for any dependency without a wheel; the result is a
# self-contained virtualenv copied into the runtime stage.
FROM ${PYTHON_IMAGE} AS build
ARG SEPSTREAM_EXTRAS=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/sepstream
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY streams ./streams
COPY agents ./agents
COPY kernels ./kernels
RUN /opt/sepstream/bin/pip install ".${SEPSTREAM_EXTRAS:+[$SEPSTREAM_EXTRAS]}"

# Runtime stage.
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/sepstream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/sepstream --create-home sepstream
COPY --from=build /opt/sepstream /opt/sepstream
USER sepstream
WORKDIR /var/lib/sepstream
# Faust web server: /metrics (Prometheus), /lag, /dashboard.
EXPOSE 6066
CMD ["sepstream", "worker"]
