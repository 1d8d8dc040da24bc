# The slurm.conf settings every cluster here shares (sourced by local_cluster.sh and
# netns_cluster.sh): what a container without systemd, cgroups or mail allows, and a scheduler
# that starts batch jobs at once.
slurm_conf_common() {
    cat <<'EOF2'
# No mail, no cgroups, no task binding: none of them exist in a container.
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
# Start batch jobs at once; forget finished ones quickly (sbatch --wait polls every 2 s then).
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MinJobAge=5
ReturnToService=2
JobRequeue=1
KillWait=10
EOF2
    # Job ids from the clock, not from 1: a fresh state folder must not reuse the ids (and so the
    # runs/<recipe>-<jobid> folders) of an earlier cluster.
    echo "FirstJobId=$(( $(date +%s) % 50000000 + 1000 ))"
}
