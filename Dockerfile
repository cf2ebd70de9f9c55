# clusterlmer on Debian 12 with R, lme4, lmerTest and pbkrtest from Debian.
# Building and testing this image (podman/buildah) is part of a later issue.
FROM debian:bookworm
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
        make python3 python3-venv python3-dev gcc \
        r-base-core r-base-dev r-cran-lme4 r-cran-lmertest r-cran-pbkrtest r-cran-numderiv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/clusterlmer
COPY . .
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[test]"
ENV PATH=/opt/venv/bin:$PATH
CMD ["clusterlmer", "demo"]
