#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests and for trying the Slurm path
# on a laptop: munged + slurmctld + slurmd as plain processes (no systemd) on 127.0.0.1.
#
#   bash launch/slurm/local_cluster.sh start    # install (Debian packages) if needed, then start
#   bash launch/slurm/local_cluster.sh status   # exit 0 when the node is up and idle/allocated
#   bash launch/slurm/local_cluster.sh env      # prints `export SLURM_CONF=...` for your shell
#   bash launch/slurm/local_cluster.sh stop
#
# Everything (config, munge key and socket, state, logs) lives under $SAR_SLURM_DIR
# (default /tmp/sar-slurm); /etc is not touched, so the clients need SLURM_CONF (see `env`).
# Needs root (slurmd starts jobs as their user). start and stop are idempotent.
set -euo pipefail
# shellcheck source=launch/slurm/slurm_conf.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_conf.sh"

STATE="${SAR_SLURM_DIR:-/tmp/sar-slurm}"
CONF="$STATE/slurm.conf"
CTLD_PORT="${SAR_SLURM_PORT:-6817}"        # slurmd uses the next port
NODE=localhost                             # resolvable, so jobs can use it as a rendezvous host
export SLURM_CONF="$CONF"

log() { echo "local_cluster: $*" >&2; }

install_packages() {
    local pkgs=(slurmctld slurmd slurm-client munge)
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null && return 0
    [ "$(id -u)" = 0 ] || { log "Slurm is not installed and this is not root: cannot apt-get install"; return 1; }
    export DEBIAN_FRONTEND=noninteractive
    # Try the cached package lists first; refresh them only when that fails.
    apt-get install -y -q "${pkgs[@]}" >"$STATE/apt.log" 2>&1 \
        || { apt-get update -q >>"$STATE/apt.log" 2>&1 && apt-get install -y -q "${pkgs[@]}" >>"$STATE/apt.log" 2>&1; } \
        || { log "apt-get install failed, see $STATE/apt.log"; return 1; }
}

write_config() {
    local cpus mem
    cpus="$(nproc)"
    mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
    mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/log" "$STATE/munge"
    chmod 700 "$STATE/munge"
    cat >"$CONF.tmp" <<EOF
# Written by launch/slurm/local_cluster.sh; regenerated on every start.
ClusterName=sar
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$(slurm_conf_common)
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$CONF.tmp" "$CONF"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    local m="$STATE/munge"
    pid_alive "$m/munged.pid" && return 0
    [ -f "$m/munge.key" ] || { dd if=/dev/urandom of="$m/munge.key" bs=1024 count=1 2>/dev/null; chmod 400 "$m/munge.key"; }
    munged --force --key-file="$m/munge.key" --socket="$m/munge.socket" --pid-file="$m/munged.pid" \
        --log-file="$m/munged.log" --seed-file="$m/munged.seed"
}

node_ready() {
    local st
    st="$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)"
    case "$st" in *'*'*) return 1 ;; idle*|alloc*|mix*|completing*) return 0 ;; *) return 1 ;; esac  # '*': not responding
}

start() {
    mkdir -p "$STATE"
    install_packages
    if pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" && node_ready; then
        log "already running ($CONF)"; return 0
    fi
    write_config
    start_munge
    pid_alive "$STATE/slurmctld.pid" || slurmctld -f "$CONF"
    pid_alive "$STATE/slurmd.pid" || slurmd -f "$CONF" -N "$NODE"
    for _ in $(seq 1 60); do
        if node_ready; then log "up: $(sinfo -h -o '%P %D %T %c') (export SLURM_CONF=$CONF)"; return 0; fi
        sleep 0.5
    done
    log "node did not come up; logs in $STATE/log"
    scontrol show node "$NODE" >&2 || true
    return 1
}

stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM, then wait up to 10 s
    local pid
    pid_alive "$2" || { rm -f "$2"; return 0; }
    pid="$(cat "$2")"
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }; sleep 0.25; done
    log "$1 ($pid) did not stop on SIGTERM; killing it"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$2"
}

stop() {
    # Cancel what is left so that no job survives into the next cluster.
    pid_alive "$STATE/slurmctld.pid" && { scancel --full --quiet --user="$(id -un)" 2>/dev/null || true; }
    stop_pid slurmd "$STATE/slurmd.pid"
    stop_pid slurmctld "$STATE/slurmctld.pid"
    stop_pid munged "$STATE/munge/munged.pid"
    log "stopped"
}

status() {
    if pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" && node_ready; then
        sinfo -h -o '%P %D %T %c'; return 0
    fi
    echo "down"; return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env   (state in \$SAR_SLURM_DIR, default /tmp/sar-slurm)" >&2; exit 2 ;;
esac
