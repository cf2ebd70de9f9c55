# clusterlmer on Debian 12: R, lme4, lmerTest, pbkrtest from Debian packages,
# the package (with its test extras and tests) in a venv at /opt/venv.
#
#   docker build -t clusterlmer .
#   docker run --rm -v "$PWD:/data" clusterlmer          # the demo (50 permutations) -> ./clusterlmer-demo/
#   docker run --rm -v "$PWD:/data" clusterlmer clusterlmer run /data/x.mat \
#       --formula "data ~ hit_miss * region + (1|sid) + (1|sid:ch)" --out /data/results.mat
#   docker run --rm -w /opt/clusterlmer clusterlmer pytest -q -p no:cacheprovider   # the test suite
#
# Commands run as the owner of /data: a mounted folder's owner (results belong
# to you and the folder is writable), else the image's user 'clusterlmer'; root
# only when /data belongs to root. scripts/build-image.sh builds and proves this
# image with buildah (chroot isolation) where there is no Docker engine.
FROM debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
# The packages of scripts/install-system-deps.sh (the route `make test` takes):
# R, the R packages from Debian, R's headers and build tools (r-base-dev: gcc,
# make, -lpcre2-8 -llzma -lbz2 -licu... that rpy2's API-mode extension links),
# Python's venv and headers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        r-base-core r-base-dev r-cran-lme4 r-cran-lmertest r-cran-pbkrtest r-cran-numderiv r-cran-emmeans \
        python3 python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash clusterlmer \
    && install -d -o clusterlmer -g clusterlmer /data

# Run as the owner of /data (see the top); `docker run --user ...` still wins.
RUN printf '%s\n' '#!/bin/sh' \
        'uid=$(stat -c %u /data 2>/dev/null || echo 0); gid=$(stat -c %g /data 2>/dev/null || echo 0)' \
        'if [ "$(id -u)" = 0 ] && [ "$uid" != 0 ]; then' \
        '  HOME=$(getent passwd "$uid" | cut -d: -f6); export HOME="${HOME:-/tmp}"' \
        '  exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"' \
        'fi' \
        'exec "$@"' > /usr/local/bin/as-data-owner \
    && chmod 755 /usr/local/bin/as-data-owner

# Behind a TLS-intercepting proxy pip needs the proxy's CA: mount a bundle and
# name it, e.g. `-v /etc/ssl/certs:/mnt:ro --build-arg PIP_CERT=/mnt/ca-certificates.crt`
# (scripts/build-image.sh passes the host's). Empty: pip's own CA list.
ARG PIP_CERT=""
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 RPY2_CFFI_MODE=API

# Third-party dependencies first (read from pyproject.toml), so that editing the
# source does not reinstall numpy/scipy/rpy2/mne.
WORKDIR /opt/clusterlmer
COPY pyproject.toml ./
RUN python3 -m venv /opt/venv \
    && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))' > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && python -c 'import rpy2, _rinterface_cffi_api; print("rpy2", rpy2.__version__, "API mode")'

# The package (a regular install, as a user's) and, in /opt/clusterlmer, the
# tests with the files they read (r_scripts/, scripts/). The source package is
# removed: run from here, tests and the processes they start must import the
# installed one, not the source tree (whose clusterlmer.r_scripts lives elsewhere).
COPY . .
RUN pip install --no-deps . && pip check \
    && rm -rf build clusterlmer.egg-info clusterlmer \
    && python -c 'import clusterlmer.r_scripts'

WORKDIR /data
ENTRYPOINT ["/usr/local/bin/as-data-owner"]
CMD ["clusterlmer", "demo"]
