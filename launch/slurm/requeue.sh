# Sourced by batch scripts (train.sbatch, tests): `requeue_self` requeues the running job and
# lifts Slurm's requeue hold, so that it starts again within seconds instead of ~2 minutes.
#
# Once a requeued job has left the node it waits for BeginTime = now + the credential lifetime
# (120 s by default). Nothing inside the job can lift that: `scontrol requeue` ends this script,
# and an earlier `scontrol update` is overwritten. So a 1-CPU helper job waits until the job is
# pending on BeginTime and then sets StartTime=now. It waits 3 s more before that: slurmd refuses
# a credential issued in the same second it revoked the old one ("Job credential revoked"), and
# that would end the job instead of restarting it. SAR_RELEASE_HOLD=0 skips the helper job.

release_hold() {
    [ "${SAR_RELEASE_HOLD:-1}" = 1 ] || return 0
    local id="$SLURM_JOB_ID"
    sbatch --quiet --job-name="release-$id" --output=/dev/null --ntasks=1 --cpus-per-task=1 \
        --time=00:10:00 ${SLURM_JOB_PARTITION:+--partition="$SLURM_JOB_PARTITION"} \
        ${SLURM_JOB_ACCOUNT:+--account="$SLURM_JOB_ACCOUNT"} --wrap \
        "for i in \$(seq 600); do r=\$(squeue -h -j $id -o %r 2>/dev/null) && [ -n \"\$r\" ] || exit 0;
         [ \"\$r\" = BeginTime ] && sleep 3 && exec scontrol update JobId=$id StartTime=now; sleep 1; done"
}

requeue_self() {
    release_hold || echo "requeue: could not submit the helper job; the job restarts after Slurm's hold" >&2
    scontrol requeue "$SLURM_JOB_ID"   # this ends the calling script
}
