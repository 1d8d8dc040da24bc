# A two-node Slurm cluster on one machine, sourced by launch/slurm/two_node_check.sh.
#
# Each node is a set of namespaces held open by a `sleep` process: its own network (only `lo`
# and one end of a veth pair, `sar0`, on $NET.0/24; no route anywhere else), its own host name
# (node1, node2) and its own mount namespace, in which
#   - /etc/hosts is replaced by $STATE/hosts (node1 and node2 resolve to their veth addresses),
#   - $STATE/node is the node's own folder $STATE/nodes/<name> (munge socket, slurmd spool,
#     pid and log files, node-local scratch): one slurm.conf path, a different folder per node.
# Everything else (the repository, $OUT, $STATE itself) is shared, as on a cluster with a shared
# filesystem. Each node runs munged (one key for both) and slurmd; node1 also runs slurmctld.
# Nothing outside $STATE is written; the namespaces vanish with their last process (ns_down).
#
# Needs root, unshare and nsenter (util-linux), ip (iproute2), munged, slurmctld, slurmd and the
# Slurm clients. Uses: STATE (folder), NET (first three octets, default 10.222.0).

NODES=(node1 node2)
NET="${NET:-10.222.0}"
CONF="$STATE/slurm.conf"

ns_log() { echo "two_node: $*" >&2; }
holder() {  # the pid holding NODE's namespaces; fails when there is none (or a stale pid file)
    local pid
    pid="$(cat "$STATE/nodes/$1/holder.pid" 2>/dev/null)" && [ -n "$pid" ] || return 1
    # A stale pid file could name an unrelated process now: only our `sleep`, never in our netns.
    [ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" = "sleep infinity " ] || return 1
    [ "$(readlink "/proc/$pid/ns/net")" != "$(readlink /proc/$$/ns/net)" ] || return 1
    echo "$pid"
}
node_addr() { echo "$NET.${1#node}"; }

in_node() {  # in_node NODE CMD...: run CMD inside the node (network, host name, mounts), here
    local pid
    pid="$(holder "$1")" || return 1
    shift
    SLURM_CONF="$CONF" nsenter -t "$pid" --net --uts --mount --wd="$PWD" -- "$@"
}

ns_up() {  # the namespaces and the veth pair between them
    local n dir
    mkdir -p "$STATE/node"
    printf '127.0.0.1 localhost\n%s node1\n%s node2\n' "$(node_addr node1)" "$(node_addr node2)" >"$STATE/hosts"
    for n in "${NODES[@]}"; do
        dir="$STATE/nodes/$n"
        mkdir -p "$dir/munge" "$dir/spool" "$dir/scratch"
        chmod 700 "$dir/munge"
        rm -f "$dir/holder.ready"
        # unshare execs bash, which execs sleep: $! stays the namespaces' first process.
        unshare --net --uts --mount --propagation private -- bash -c \
            'hostname "$1" && mount --bind "$2" /etc/hosts && mount --bind "$3" "$4" && touch "$3/holder.ready" && exec sleep infinity' \
            holder "$n" "$STATE/hosts" "$dir" "$STATE/node" </dev/null >/dev/null 2>"$dir/holder.err" &
        echo $! >"$dir/holder.pid"
    done
    for n in "${NODES[@]}"; do
        for _ in $(seq 1 100); do holder "$n" >/dev/null && [ -f "$STATE/nodes/$n/holder.ready" ] && break; sleep 0.1; done
        holder "$n" >/dev/null && [ -f "$STATE/nodes/$n/holder.ready" ] || { ns_log "namespaces of $n did not come up: $(cat "$STATE/nodes/$n/holder.err")"; return 1; }
    done
    # Both ends are called sar0, each in its own namespace (what GLOO_SOCKET_IFNAME names).
    in_node node1 ip link add sar0 type veth peer name sar0 netns "$(holder node2)" || return 1
    for n in "${NODES[@]}"; do
        in_node "$n" ip addr add "$(node_addr "$n")/24" dev sar0 || return 1
        in_node "$n" ip link set lo up || return 1
        in_node "$n" ip link set sar0 up || return 1
    done
}

write_slurm_conf() {
    local cpus mem
    cpus="$(nproc)"
    mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.4)}' /proc/meminfo)"   # two nodes share it
    mkdir -p "$STATE/ctld"
    cat >"$CONF" <<EOF
# Written by launch/slurm/two_node_check.sh. One file for both nodes; \$STATE/node is node-local.
ClusterName=sar2n
SlurmctldHost=node1($(node_addr node1))
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/node/munge/munge.socket
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/node/spool
SlurmctldPidFile=$STATE/node/slurmctld.pid
SlurmdPidFile=$STATE/node/slurmd.pid
SlurmctldLogFile=$STATE/node/slurmctld.log
SlurmdLogFile=$STATE/node/slurmd.log
$(slurm_conf_common)
NodeName=node1 NodeAddr=$(node_addr node1) CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=node2 NodeAddr=$(node_addr node2) CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=two Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

daemons_up() {  # munged on both nodes (one key), slurmctld on node1, slurmd on both
    local n
    [ -f "$STATE/munge.key" ] || { dd if=/dev/urandom of="$STATE/munge.key" bs=1024 count=1 2>/dev/null; chmod 400 "$STATE/munge.key"; }
    for n in "${NODES[@]}"; do
        in_node "$n" munged --force --key-file="$STATE/munge.key" --socket="$STATE/node/munge/munge.socket" \
            --pid-file="$STATE/node/munge/munged.pid" --log-file="$STATE/node/munge/munged.log" \
            --seed-file="$STATE/node/munge/munged.seed" || return 1
    done
    in_node node1 slurmctld -f "$CONF" || return 1
    for n in "${NODES[@]}"; do in_node "$n" slurmd -f "$CONF" -N "$n" || return 1; done
    for _ in $(seq 1 120); do
        [ "$(in_node node1 sinfo -h -N -o '%N %T' 2>/dev/null | grep -cE ' (idle|mixed|allocated)$')" = 2 ] && return 0
        sleep 0.5
    done
    ns_log "the nodes did not come up: $(in_node node1 sinfo -h -N -o '%N %T' 2>&1 | tr '\n' ' ')"
    return 1
}

ns_pids() {  # processes in the network namespace of holder PID (the holder included)
    local want p
    want="$(readlink "/proc/$1/ns/net" 2>/dev/null)" || return 0
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$want" ] && echo "${p#/proc/}"
    done
}

stop_pidfile() {  # SIGTERM the daemon of PIDFILE (if it is one of ours), SIGKILL after 5 s
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$STATE/" || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
}

ns_down() {  # idempotent: jobs, daemons, anything left in the namespaces, then the namespaces
    local n h pids
    holder node1 >/dev/null && in_node node1 scancel --quiet --user=root >/dev/null 2>&1
    for n in "${NODES[@]}"; do stop_pidfile "$STATE/nodes/$n/slurmd.pid"; done
    stop_pidfile "$STATE/nodes/node1/slurmctld.pid"
    for n in "${NODES[@]}"; do stop_pidfile "$STATE/nodes/$n/munge/munged.pid"; done
    for n in "${NODES[@]}"; do
        h="$(holder "$n")" || continue
        pids="$(ns_pids "$h")"
        # shellcheck disable=SC2086  # a list of pids
        [ -z "$pids" ] || { kill $pids 2>/dev/null; sleep 0.5; kill -9 $pids 2>/dev/null; }
        rm -f "$STATE/nodes/$n/holder.pid"
    done
    return 0
}
