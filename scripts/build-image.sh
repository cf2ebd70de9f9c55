#!/usr/bin/env bash
# Build the Dockerfile without a Docker engine or a registry, then prove the image:
#
#   1. install buildah and debootstrap if missing (apt-get, as root);
#   2. create the Dockerfile's base image (FROM debian:bookworm-slim) locally:
#      debootstrap a Debian 12 minbase from this machine's Debian mirror, slim it
#      like the official image, import it and tag it with the FROM name
#      (skipped when that image already exists: rerun with --rebuild-base);
#   3. `buildah bud --isolation=chroot --layers` the Dockerfile as clusterlmer:latest;
#   4. inside the image (`buildah run`): the test suite but SLURM's (--quick: the R engine and
#      lmerTest parity tests only), the default command (the demo) with 4
#      permutations, and `clusterlmer run /data/x.mat ...` on a mounted host folder,
#      checking that the host sees the results.
#
#   scripts/build-image.sh [--quick] [--rebuild-base] [--no-cache] [--image NAME]
#                          [--storage-driver overlay|vfs] [--mirror URL]
#
# Prints the time of each phase; exits non-zero on the first failure.
#
# How it works where Docker does not (a VM or a container without a daemon):
# - Root, rootful storage (/var/lib/containers/storage): debootstrap needs root
#   anyway, so the script re-runs itself through sudo when started as a user.
# - --isolation=chroot for every RUN and `buildah run`: no OCI runtime (runc/crun),
#   no conmon, no cgroup manager, no user or network namespace is needed, so the
#   packages are just buildah + debootstrap (+ debian-archive-keyring off Debian);
#   podman, fuse-overlayfs, slirp4netns and crun are not. The build shares the
#   host's network (chroot isolation makes no network namespace), so apt-get and
#   pip reach whatever the host reaches.
# - Storage driver: native overlay when the kernel lets us mount overlayfs next
#   to the storage (a VM, a privileged container), else vfs (slower, more disk);
#   an existing storage keeps the driver it was created with.
# - --pull=never: the base image only exists locally, nothing is pulled.
# - A TLS-intercepting proxy (its CA trusted by the host but unknown to pip's own
#   CA list): the host's CA bundle is mounted at /mnt for the build's RUN steps
#   and named by --build-arg PIP_CERT; nothing of it stays in the image.
set -euo pipefail

usage() { sed -n '2,/^# Prints/p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

QUICK=0 REBUILD_BASE=0 NO_CACHE=0 IMAGE=clusterlmer:latest DRIVER="" MIRROR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --rebuild-base) REBUILD_BASE=1 ;;
    --no-cache) NO_CACHE=1 ;;
    --image) IMAGE="$2"; shift ;;
    --storage-driver) DRIVER="$2"; shift ;;
    --mirror) MIRROR="$2"; shift ;;
    -h|--help) usage 0 ;;
    *) echo "error: unknown argument '$1'" >&2; usage 2 >&2 ;;
  esac
  shift
done

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "error: run as root (or install sudo): debootstrap and rootful buildah need it." >&2; exit 1; }
  exec sudo -- bash "$0" "$@"
fi

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
SUITE=bookworm
ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
SAMPLE="$REPO/clusterlmer/datasets/data/lme_data_2way.mat"
FORMULA="data ~ hit_miss * region + (1|sid) + (1|sid:ch)"

# --- timing -------------------------------------------------------------------------
START=$(date +%s)
PHASE="" PHASE_START=0 TIMINGS=()
phase() {
  end_phase
  PHASE="$1" PHASE_START=$(date +%s)
  echo; echo "=== $PHASE"
}
end_phase() {
  if [ -n "$PHASE" ]; then
    TIMINGS+=("$(printf '%6ss  %s' "$(( $(date +%s) - PHASE_START ))" "$PHASE")")
    PHASE=""
  fi
}
report() {
  local rc=$?
  end_phase
  echo; echo "=== timings"
  printf '%s\n' "${TIMINGS[@]}"
  printf '%6ss  total\n' "$(( $(date +%s) - START ))"
  if [ -n "${CTR:-}" ]; then buildah "${STORE[@]}" rm "$CTR" >/dev/null 2>&1 || true; fi
  if [ -n "${WORK:-}" ]; then rm -rf "$WORK"; fi
  if [ "$rc" -eq 0 ]; then echo "OK: $IMAGE built and proven."; else echo "FAILED (exit $rc) in the phase above." >&2; fi
  exit "$rc"
}
trap report EXIT
fail() { echo "error: $*" >&2; exit 1; }

# --- 1. tools -----------------------------------------------------------------------
phase "tools (buildah, debootstrap)"
need=()
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || fail "missing ${need[*]} and no apt-get to install them"
  echo "Installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
buildah --version
WORK="$(mktemp -d /var/tmp/clusterlmer-image.XXXXXX)"  # not /tmp: debootstrap fails on a noexec/nodev tmpfs

# Storage driver: the one an existing storage uses, else overlay if it mounts here, else vfs.
GRAPHROOT=/var/lib/containers/storage
if [ -z "$DRIVER" ]; then
  for d in overlay vfs btrfs zfs; do
    [ -d "$GRAPHROOT/$d-images" ] && { DRIVER=$d; break; }
  done
fi
if [ -z "$DRIVER" ]; then
  mkdir -p "$(dirname "$GRAPHROOT")"
  probe="$(mktemp -d "$(dirname "$GRAPHROOT")/overlay-probe.XXXXXX")"
  mkdir "$probe"/{lower,upper,work,merged}
  if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
    umount "$probe/merged"; DRIVER=overlay
  else
    DRIVER=vfs
  fi
  rm -rf "$probe"
fi
STORE=(--storage-driver "$DRIVER")
bh() { buildah "${STORE[@]}" "$@"; }
echo "Storage driver: $DRIVER"

# --- 2. base image ------------------------------------------------------------------
# The FROM name as Docker resolves it: debian:bookworm-slim -> docker.io/library/debian:bookworm-slim.
FROM_NAME="$(awk 'toupper($1) == "FROM" { print $2; exit }' Dockerfile)"
[ -n "$FROM_NAME" ] || fail "no FROM line in Dockerfile"
case "$FROM_NAME" in *"$SUITE"*) ;; *) fail "Dockerfile's FROM '$FROM_NAME' is not Debian $SUITE; this script builds a $SUITE base" ;; esac
BASE="$FROM_NAME"
first="${BASE%%/*}"
if [ "$first" = "$BASE" ]; then
  BASE="docker.io/library/$BASE"
elif [[ "$first" != *.* && "$first" != *:* && "$first" != localhost ]]; then
  BASE="docker.io/$BASE"
fi
[[ "${BASE##*/}" == *:* || "$BASE" == *@* ]] || BASE="$BASE:latest"

# "URI suite" for each Debian source of this machine (one-line and deb822 formats).
apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } print $i, $(i + 1) }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && awk '
      function flush() { if (types ~ /(^| )deb( |$)/) { n = split(uris, u, " "); m = split(suites, s, " ");
                         for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print u[i], s[j] } types = uris = suites = "" }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]*#/ { next }
      { key = tolower($1); sub(/^[^:]*:[ \t]*/, "") }
      key == "types:" { types = $0 } key == "uris:" { uris = $0 } key == "suites:" { suites = $0 }
      END { flush() }' "$f"
  done
}
mirror_for() { apt_sources | awk -v s="$1" '$2 == s && $1 ~ /^(https?|ftp|file):/ { sub(/\/$/, "", $1); print $1; exit }'; }

phase "base image $BASE"
if [ "$REBUILD_BASE" -eq 0 ] && bh inspect --type image "$BASE" >/dev/null 2>&1; then
  echo "Cached: $BASE exists (--rebuild-base recreates it)."
else
  # Not hard-coded: the mirror this machine's apt uses (deb.debian.org only when it has none, e.g. Ubuntu).
  [ -n "$MIRROR" ] || MIRROR="$(mirror_for "$SUITE")"
  [ -n "$MIRROR" ] || { MIRROR=http://deb.debian.org/debian; echo "No $SUITE source in /etc/apt; using $MIRROR"; }
  SECURITY="$(mirror_for "$SUITE-security")"
  [ -n "$SECURITY" ] || SECURITY=http://deb.debian.org/debian-security
  echo "debootstrap --variant=minbase $SUITE from $MIRROR"
  rootfs="$WORK/rootfs"
  debootstrap --variant=minbase --arch="$ARCH" \
      --keyring=/usr/share/keyrings/debian-archive-keyring.gpg "$SUITE" "$rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed (log above)"; }
  # Like the official debian:*-slim (debuerreotype): apt sources with updates and
  # security, no docs/man pages/translations, no apt caches.
  printf 'deb %s %s main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE-updates" "$SECURITY" "$SUITE-security" \
    > "$rootfs/etc/apt/sources.list"
  cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' > "$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'APT::AutoRemove::SuggestsImportant "false";' > "$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{info,man,locale}/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/var/log/{*.log,apt/*} "$rootfs"/tmp/* "$rootfs"/etc/machine-id
  : > "$rootfs/etc/hostname"
  tar -C "$rootfs" --numeric-owner --xattrs -cf "$WORK/rootfs.tar" .
  rm -rf "$rootfs"
  # Import: a scratch container + ADD of the tarball (keeps owners and modes), committed under the FROM name.
  ctr="$(bh from scratch)"
  bh add "$ctr" "$WORK/rootfs.tar" / >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash --os linux --arch "$ARCH" \
      --created-by "scripts/build-image.sh: debootstrap --variant=minbase $SUITE $MIRROR" "$ctr"
  bh commit --quiet --rm "$ctr" "$BASE" >/dev/null
  rm -f "$WORK/rootfs.tar"
  echo "Created $BASE"
fi
bh images "$BASE"

# --- 3. the image -------------------------------------------------------------------
phase "build $IMAGE (buildah bud --isolation=chroot)"
build=(bud --isolation=chroot --layers --force-rm --pull=never -f Dockerfile -t "$IMAGE")
[ "$NO_CACHE" -eq 1 ] && build+=(--no-cache)
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] && build+=(--volume /etc/ssl/certs:/mnt:ro --build-arg "PIP_CERT=/mnt/$(basename "$ca")")
bh "${build[@]}" .
bh images "$IMAGE"

ENTRYPOINT="$(bh inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$IMAGE")"
CMD="$(bh inspect --type image --format '{{range .OCIv1.Config.Cmd}}{{.}} {{end}}' "$IMAGE")"
WORKDIR="$(bh inspect --type image --format '{{.OCIv1.Config.WorkingDir}}' "$IMAGE")"
echo "Entrypoint: ${ENTRYPOINT:-none}  Cmd: $CMD  WorkingDir: $WORKDIR"
[ "$CMD" = "clusterlmer demo " ] || fail "the default command is '$CMD', expected 'clusterlmer demo'"
[ "$WORKDIR" = /data ] || fail "the working directory is '$WORKDIR', expected /data"

CTR="$(bh from --pull=never --name clusterlmer-proof-$$ "$IMAGE")"
brun() { bh run --isolation=chroot "$@"; }

# --- 4. inside the image ------------------------------------------------------------
# As the image's user, from the tests' folder (where the source package was removed: they import the installed one).
# A failure is reported at the end: the demo and the mounted run still show whether the image works.
TESTS=()
if [ "$QUICK" -eq 1 ]; then
  phase "tests in the image (quick: R engine, lmerTest parity)"
  TESTS=(tests/test_r_engine.py tests/test_parity_lmertest.py)
else
  # The image holds no SLURM daemons: .ci/run tests SLURM on the host (CLUSTERLMER_REQUIRE_SLURM=1).
  phase "tests in the image (full suite but tests/test_slurm.py)"
  TESTS=(--ignore=tests/test_slurm.py)
fi
TESTS_OK=1
brun --user clusterlmer --workingdir /opt/clusterlmer "$CTR" -- pytest -q -p no:cacheprovider "${TESTS[@]}" \
  || { TESTS_OK=0; echo "error: tests failed in the image (see above); going on with the demo and the mounted run" >&2; }

# The default command as `docker run IMAGE` runs it (entrypoint + cmd), with 4 permutations:
# /data is the image's own folder, so it runs as the image's user and writes /data/clusterlmer-demo.
phase "default command: $ENTRYPOINT$CMD--nperm 4 --no-progress"
# shellcheck disable=SC2086  # the entrypoint and command are words
brun "$CTR" -- $ENTRYPOINT $CMD --nperm 4 --no-progress
# shellcheck disable=SC2016  # expanded in the container
brun "$CTR" -- sh -ec 'cd /data/clusterlmer-demo; ls -l; test -s demo_results.mat; test -s demo_results.h5
                       test -s demo_figure.png; test "$(stat -c %U demo_results.mat)" = clusterlmer' || fail "the demo's outputs are missing or not the image user's"

# `docker run -v HOST:/data IMAGE clusterlmer run /data/x.mat ...`: the bundled sample in a
# host folder owned by a non-root user (uid 1234, as a typical `-v "$PWD:/data"`); the
# results must appear in that folder, owned by that user.
phase "clusterlmer run /data/x.mat on a mounted folder"
DATA="$WORK/data"
mkdir -p "$DATA"
cp "$SAMPLE" "$DATA/x.mat"
chown -R 1234:1234 "$DATA"
# shellcheck disable=SC2086
brun --volume "$DATA:/data" "$CTR" -- $ENTRYPOINT clusterlmer run /data/x.mat --formula "$FORMULA" \
    --nperm 4 --no-progress --out /data/results.mat --out /data/results.csv --plot /data/results.png
ls -ln "$DATA"
for f in results.mat results.csv results.png; do
  [ -s "$DATA/$f" ] || fail "the host does not see $DATA/$f"
  [ "$(stat -c %u "$DATA/$f")" = 1234 ] || fail "$f is owned by uid $(stat -c %u "$DATA/$f"), not the folder's owner 1234"
done
head -3 "$DATA/results.csv"
[ "$TESTS_OK" -eq 1 ] || fail "the test suite failed in the image (its output is above the demo's)"
