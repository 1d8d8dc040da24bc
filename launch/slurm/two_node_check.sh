#!/usr/bin/env bash
# Two real network hosts on one machine: train.sbatch with --nodes=2 on a two-node Slurm cluster
# whose nodes are network namespaces (launch/slurm/netns_cluster.sh), checked end to end:
#   1. a tiny synthetic set and its shards ($OUT/data)
#   2. the cluster: two namespaces joined by a veth pair on $NET.0/24 (10.222.0 by default; the
#      subnet exists only inside them), munged + slurmd in each, slurmctld in node1
#   3. a plain run: joint_mini, tiny, 2 nodes x 1 process (gloo over the veth), shards staged to
#      each node's own scratch folder; run.json must say world_size 2 on node1 and node2
#   4. preemption across nodes: the same run, signalled mid-stage with SIGUSR2 (the sbatch's
#      time-limit warning), requeued, resumed on both nodes: metrics.json must equal step 3's
#   5. an unreachable head: node2's packets to the rendezvous port dropped (iptables in node2's
#      namespace, when iptables is installed) or a closed port: one-line error, exit 2, no hang
#   6. $OUT/two_node_check.json with the wall time of each part, and a closing note
#
#   sudo PYTHON=.venv/bin/python OUT=/tmp/two_node bash launch/slurm/two_node_check.sh
#
# Everything is torn down on exit, failure or interrupt; nothing outside $OUT is written (the
# cluster's state, config and logs stay in $OUT/cluster for reading). Needs root, util-linux
# (unshare, nsenter), iproute2 and Debian's slurmctld, slurmd, slurm-client and munge.
# Exit 0 when every check passed, 1 when one failed, 2 when this machine cannot run it.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$REPO" || exit 2

OUT="${OUT:-two_node_out}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)" || exit 2
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
case "$PYTHON" in /*) ;; */*) PYTHON="$REPO/$PYTHON" ;; *) PYTHON="$(command -v "$PYTHON")" ;; esac
STATE="$OUT/cluster"
LOGS="$OUT/logs"
RECIPE=trainer/recipes/joint_mini.yaml
# 51 training chips, 7 steps an epoch of 8 (4 per node), 3 epochs; 40 test chips.
TINY=(data.input_size=16 model.depth=8 model.width=4 stages.0.steps=21 data.batch_size=8
      data.num_workers=0 run.progress_bar=false run.log_every=1)
unset SAR_MACHINES SAR_PORT SAR_RDZV_TIMEOUT SAR_PREEMPT_TEST_DELAY SAR_REPO SAR_RELEASE_HOLD
export OMP_NUM_THREADS=1 SAR_PYTHON="$PYTHON" SAR_NPROC=1 GLOO_SOCKET_IFNAME=sar0
export SHARDS_STAGE_DIR="$STATE/node/scratch"   # node-local: a different folder on each node

say() { echo "two_node_check: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

# ---------------------------------------------------------------- can this machine run it?
[ "$(id -u)" = 0 ] || { say "error: needs root (namespaces, slurmd)"; exit 2; }
for c in unshare nsenter ip munged slurmctld slurmd sbatch srun scontrol; do
    command -v "$c" >/dev/null || { say "error: $c is not installed (see launch/slurm/local_cluster.sh)"; exit 2; }
done
[ -x "$PYTHON" ] || { say "error: no Python at $PYTHON (set PYTHON)"; exit 2; }

# shellcheck source=launch/slurm/netns_cluster.sh
source "$REPO/launch/slurm/slurm_conf.sh"
source "$REPO/launch/slurm/netns_cluster.sh"
cleanup() {
    trap - EXIT INT TERM
    ns_down
    say "torn down (state and logs in $STATE)"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM
ns_down   # leftovers of a run that was killed with SIGKILL
mkdir -p "$LOGS"
declare -A SECONDS_OF

# ---------------------------------------------------------------- 1. data
t="$(now)"
DATA="$OUT/data"
if [ ! -f "$DATA/.complete" ]; then
    rm -rf "$DATA"
    "$PYTHON" -c "import sys; from datasets.synthetic import make_synthetic
make_synthetic(sys.argv[1], 'mini', 0, counts=(16, 10, 8, 6, 5, 4, 4, 3, 3, 3), test_per_class=4)" "$DATA/raw" \
        && "$PYTHON" -m shards build "$DATA/raw/train_images" "$DATA/shards" --shard-size 8 --quiet >"$LOGS/data.log" \
        && "$PYTHON" -m shards build "$DATA/raw/test_images" "$DATA/shards" --split test \
            --labels "$DATA/raw/test_labels.csv" --quiet >>"$LOGS/data.log" \
        && touch "$DATA/.complete" || fail "could not build the tiny set (see $LOGS/data.log)"
fi
SECONDS_OF[data]="$(since "$t")"

# ---------------------------------------------------------------- 2. cluster
t="$(now)"
ns_up || fail "could not create the namespaces"
write_slurm_conf
daemons_up || fail "the cluster did not start (logs in $STATE/nodes/*/)"
SECONDS_OF[cluster_start]="$(since "$t")"
say "cluster up in ${SECONDS_OF[cluster_start]} s: $(in_node node1 sinfo -h -N -o '%N(%T)' | tr '\n' ' ')"

submit() {  # submit NAME [sbatch options] -- [train.sbatch overrides]: sbatch --wait in the background
    local name="$1"; shift
    local opts=()
    while [ "$1" != -- ]; do opts+=("$1"); shift; done; shift
    in_node node1 sbatch --parsable --wait -N 2 --ntasks-per-node=1 -c 1 --output="$LOGS/$name.out" "${opts[@]}" \
        launch/slurm/train.sbatch "$RECIPE" "data.shards=$DATA/shards" "run.dir=$OUT/runs/$name" "${TINY[@]}" "$@" \
        >"$STATE/$name.jobid" 2>"$STATE/$name.sbatch.err" &
}

run_json() { "$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }

# ---------------------------------------------------------------- 3. plain two-node run
t="$(now)"
submit plain --
wait $! || fail "the plain run failed: $(tail -n 5 "$LOGS/plain.out")"
SECONDS_OF[plain_run]="$(since "$t")"
RUN="$OUT/runs/plain"
[ -f "$RUN/metrics.json" ] || fail "the plain run left no metrics.json"
[ "$(run_json "$RUN/run.json" '["world_size"]')" = 2 ] || fail "run.json: world_size is not 2"
[ "$(run_json "$RUN/run.json" '["hosts"]')" = "['node1', 'node2']" ] \
    || fail "run.json: hosts are $(run_json "$RUN/run.json" '["hosts"]'), not node1 and node2"
grep -q "reach_head: node2 -> node1 ($NET.1)" "$LOGS/plain.out" || fail "node2 did not report the head it reached"
say "plain run in ${SECONDS_OF[plain_run]} s; $(grep -m1 '  hosts:' "$LOGS/plain.out" | sed 's/^ *//')"

# ---------------------------------------------------------------- 4. preempted, requeued, resumed
train_lines() { local n; n="$(grep -c '"kind": "train"' "$OUT/runs/preempted/history.jsonl" 2>/dev/null)"; echo "${n:-0}"; }
t="$(now)"
SAR_PREEMPT_TEST_DELAY=0.3 submit preempted --
waiter=$!
for _ in $(seq 1 600); do [ "$(train_lines)" -ge 9 ] && break; kill -0 "$waiter" 2>/dev/null || break; sleep 0.2; done
[ "$(train_lines)" -ge 9 ] || fail "the preempted run did not get into its second epoch"
JOB="$(head -n 1 "$STATE/preempted.jobid")"
in_node node1 scancel --signal=USR2 --batch "$JOB" || fail "scancel --signal=USR2 failed"
say "sent SIGUSR2 to job $JOB after $(train_lines) training steps"
wait "$waiter" || fail "the preempted run failed: $(tail -n 5 "$LOGS/preempted.out")"
SECONDS_OF[preempted_run]="$(since "$t")"
LOG="$LOGS/preempted.out"
grep -q "stopped on request in stage joint" "$LOG" || fail "the trainer did not stop on the signal"
grep -q "train.sbatch\[$JOB/0\]: requeueing" "$LOG" || fail "the job was not requeued"
grep -q "train.sbatch\[$JOB/1\]: resuming" "$LOG" || fail "the requeued job did not resume"
[ "$(grep -c "reach_head: node2 -> node1" "$LOG")" -ge 2 ] || fail "node2 did not take part after the requeue"
[ "$(grep -c "hosts: rank 0 node1 (head .*), rank 1 node2" "$LOG")" -ge 2 ] || fail "the resumed run is not on both nodes"
cmp -s <("$PYTHON" -m json.tool --sort-keys "$OUT/runs/plain/metrics.json") \
       <("$PYTHON" -m json.tool --sort-keys "$OUT/runs/preempted/metrics.json") \
    || fail "metrics.json of the preempted run differs from the plain run's"
ACC="$(run_json "$RUN/metrics.json" '["final"]["test"]["per_class_acc"]')"
say "preempted + requeued run in ${SECONDS_OF[preempted_run]} s; same metrics.json (test per-class accuracy $ACC)"

# ---------------------------------------------------------------- 5. unreachable head
t="$(now)"
PORT=29417
BLOCK=""
for ipt in iptables iptables-legacy; do
    command -v "$ipt" >/dev/null && in_node node2 "$ipt" -A OUTPUT -p tcp -d "$NET.1" --dport "$PORT" -j DROP 2>/dev/null \
        && { BLOCK="$ipt"; break; }
done
if [ -n "$BLOCK" ]; then
    SAR_PORT="$PORT" SAR_RDZV_TIMEOUT=8 submit blocked --
    wait $! && fail "the job with a blocked rendezvous port succeeded"
    in_node node2 "$BLOCK" -D OUTPUT -p tcp -d "$NET.1" --dport "$PORT" -j DROP
    grep -q "^error: node2 cannot reach the rendezvous head node1 ($NET.1):$PORT within 8 s (connection timed out)" \
        "$LOGS/blocked.out" || fail "no one-line error for the blocked port: $(tail -n 5 "$LOGS/blocked.out")"
    WHAT="port $PORT dropped by $BLOCK in node2: the job failed with the one-line error"
else   # no firewall tool: node2 probes a port of node1 where nothing listens
    in_node node2 "$PYTHON" launch/slurm/reach_head.py node1 "$PORT" --timeout 3 2>"$LOGS/blocked.out"
    [ $? = 2 ] && grep -q "^error: node2 cannot reach the rendezvous head node1 ($NET.1):$PORT within 3 s" "$LOGS/blocked.out" \
        || fail "no one-line error for a closed port: $(cat "$LOGS/blocked.out")"
    WHAT="no iptables: node2 probed closed port $PORT of node1: one-line error, exit 2"
fi
SECONDS_OF[unreachable_head]="$(since "$t")"
say "unreachable head in ${SECONDS_OF[unreachable_head]} s ($WHAT)"

# ---------------------------------------------------------------- 6. summary
"$PYTHON" launch/slurm/two_node_summary.py "$OUT/two_node_check.json" "$RUN/run.json" "$WHAT" "$ACC" \
    "data=${SECONDS_OF[data]}" "cluster_start=${SECONDS_OF[cluster_start]}" "plain_run=${SECONDS_OF[plain_run]}" \
    "preempted_run=${SECONDS_OF[preempted_run]}" "unreachable_head=${SECONDS_OF[unreachable_head]}"
say "passed: $(for k in data cluster_start plain_run preempted_run unreachable_head; do printf '%s %s s, ' "$k" "${SECONDS_OF[$k]}"; done)summary in $OUT/two_node_check.json"
exit 0
