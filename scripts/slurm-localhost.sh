#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests/test_slurm.py (clusterlmer's permutations
# through dask-jobqueue's SLURMCluster on real sbatch/slurmctld/slurmd).
#
#   bash scripts/slurm-localhost.sh start    # install slurm-wlm + munge if missing, start the daemons
#   bash scripts/slurm-localhost.sh status   # are they running, what does sinfo say
#   bash scripts/slurm-localhost.sh stop     # cancel the jobs, stop exactly the daemons 'start' started
#
# Runs as root on Debian/Ubuntu. 'start' writes /etc/slurm/slurm.conf for one node (this host, all its
# CPUs and memory as 'slurmd -C' reports them, no cgroups: proctrack/linuxproc, task/none) and starts
# munged (unless a working munged is already there), slurmctld and slurmd in the background, recording
# their process ids in $STATE/pids; 'stop' kills those ids and nothing else. Both are idempotent. It
# refuses to overwrite a slurm.conf it did not write (a real cluster's), and never touches daemons
# it did not start.
set -euo pipefail

STATE=${CLUSTERLMER_SLURM_STATE:-/var/lib/slurm-clusterlmer}
CONF=/etc/slurm/slurm.conf
PIDS=$STATE/pids
MARK="# Written by clusterlmer scripts/slurm-localhost.sh; 'stop' leaves it, 'start' rewrites it."
PARTITION=debug

say() { echo "slurm-localhost: $*"; }
die() { echo "slurm-localhost: error: $*" >&2; exit 1; }

# "name pid" per line; a pid counts only while it still runs the program we started (no pid reuse).
alive() { [ -n "${2:-}" ] && kill -0 "$2" 2>/dev/null && [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ]; }
recorded() { if [ -f "$PIDS" ]; then cat "$PIDS"; fi; }
all_alive() {
  local n=0 name pid
  while read -r name pid; do alive "$name" "$pid" || return 1; n=$((n + 1)); done < <(recorded)
  [ "$n" -ge 2 ]  # slurmctld and slurmd at least (munged only when we had to start it)
}
munge_works() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
node_state() { timeout 10 sinfo -h -N -p "$PARTITION" -o '%T' 2>/dev/null | head -n1 || true; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null &&
     command -v munged >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and this is not a Debian/Ubuntu system."
  say "installing slurm-wlm and munge with apt-get"
  # Keep the packages' own service start-up out of the way (no systemd in containers; on a host with
  # systemd it would start daemons this script does not own): the standard policy-rc.d 'deny' hook,
  # only while installing and only if the machine has none.
  local policy=/usr/sbin/policy-rc.d added=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && added=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local rc=0
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; } || rc=$?
  [ -n "$added" ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get install slurm-wlm munge failed (exit $rc)."
}

write_conf() {
  if [ -f "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script (a real SLURM configuration?); not touching it."
  fi
  local host node
  host=$(hostname -s)
  # slurmd -C prints this machine's node line (CPUs, sockets, cores, RealMemory) as slurmd sees it.
  node=$(slurmd -C | grep '^NodeName=') || die "'slurmd -C' printed no node line."
  mkdir -p "$(dirname "$CONF")" "$STATE/ctld" "$STATE/spool"
  cat > "$CONF" <<EOF
$MARK
ClusterName=clusterlmer
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# No cgroups (containers, CI runners): track job processes by parentage, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
SlurmdTimeout=60
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munged() {
  if munge_works; then
    say "using the munged already running"
    return
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  # setpriv execs munged (same pid) as the munge user; -F keeps it from forking away from that pid.
  setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F \
    </dev/null >>"$STATE/munged.out" 2>&1 &
  echo "munged $!" >> "$PIDS"
  for _ in $(seq 50); do munge_works && return; sleep 0.2; done
  die "munged did not come up; see $STATE/munged.out and /var/log/munge/munged.log"
}

wait_idle() {
  local state=""
  for _ in $(seq 120); do
    state=$(node_state)
    case "$state" in
      idle*|mixed*|allocated*) return 0 ;;
      down*|drain*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  die "the node is not idle after 60 s (sinfo: '${state:-no answer}'); see $STATE/slurmctld.log and $STATE/slurmd.log"
}

check_sbatch() {
  local out
  out=$(mktemp)
  if ! timeout 60 sbatch --wait --quiet -o "$out" --wrap hostname >/dev/null; then
    rm -f "$out"
    die "a test job (sbatch --wrap hostname) failed; see $STATE/slurmctld.log and $STATE/slurmd.log"
  fi
  say "sbatch works (test job ran on $(cat "$out"))"
  rm -f "$out"
}

start() {
  [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts system daemons)."
  install_packages
  mkdir -p "$STATE"
  if all_alive; then
    say "already running ($(recorded | tr '\n' ' '))"
    wait_idle
    return
  fi
  stop_daemons  # whatever is left of a half-started or crashed earlier start
  write_conf
  start_munged
  slurmctld -D -c </dev/null >>"$STATE/slurmctld.out" 2>&1 &
  echo "slurmctld $!" >> "$PIDS"
  slurmd -D </dev/null >>"$STATE/slurmd.out" 2>&1 &
  echo "slurmd $!" >> "$PIDS"
  wait_idle
  say "started: $(recorded | tr '\n' ' ')"
  check_sbatch
  sinfo
}

stop_daemons() {
  [ -f "$PIDS" ] || return 0
  local name pid left
  if alive slurmctld "$(recorded | awk '$1 == "slurmctld" {print $2}')"; then
    # Jobs of this private cluster only (its slurmctld), so no job steps outlive slurmd.
    scancel --full >/dev/null 2>&1 || true
    for _ in $(seq 30); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  # slurmd first (it reports to slurmctld), munged last.
  for name in slurmd slurmctld munged; do
    pid=$(recorded | awk -v n="$name" '$1 == n {print $2}')
    alive "$name" "$pid" || continue
    kill -TERM "$pid"
    for _ in $(seq 40); do alive "$name" "$pid" || break; sleep 0.25; done
    if alive "$name" "$pid"; then kill -KILL "$pid"; sleep 0.2; fi
    say "stopped $name ($pid)"
  done
  left=""
  while read -r name pid; do alive "$name" "$pid" && left="$left $name($pid)"; done < <(recorded)
  [ -z "$left" ] || die "still running:$left"
  rm -f "$PIDS"
}

status() {
  if [ ! -f "$PIDS" ]; then
    say "not started by this script"
    return 3
  fi
  local ok=0 name pid
  while read -r name pid; do
    if alive "$name" "$pid"; then say "$name ($pid) running"; else say "$name ($pid) NOT running"; ok=3; fi
  done < <(recorded)
  timeout 10 sinfo 2>&1 || ok=3
  return $ok
}

case "${1:-}" in
  start) start ;;
  stop) [ "$(id -u)" -eq 0 ] || die "run as root."; stop_daemons; say "stopped" ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
