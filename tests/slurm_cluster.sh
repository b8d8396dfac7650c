#!/usr/bin/env bash
# A one-machine SLURM for the `slurm` tests: munge + slurmctld + slurmd on this machine, the
# configuration and state under DIR (nothing written to /etc/slurm), one partition "debug" with
# a 1-minute MaxTime and a 2-GPU count-only gres.
#
#   tests/slurm_cluster.sh start DIR   # installs slurm-wlm + munge when missing (root only); prints
#                                      # "export SLURM_CONF=DIR/slurm.conf" on success
#   tests/slurm_cluster.sh stop DIR    # cancels the jobs, stops the daemons this script started
#
# Exit status 77 with one line on stderr: cannot run here (not root, no apt, a daemon would not start).
set -uo pipefail

skip() { echo "slurm_cluster: $*" >&2; exit 77; }

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
conf=$dir/slurm.conf

stop() {
    if [ -f "$conf" ]; then
        SLURM_CONF=$conf timeout 10 scancel --quiet --user="$(id -un)" 2>/dev/null
        for _ in $(seq 60); do  # the jobs' steps end before the daemons that track them
            [ -z "$(SLURM_CONF=$conf timeout 5 squeue -h -t running,completing 2>/dev/null)" ] && break; sleep 0.5
        done
    fi
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
        rm -f "$pidfile"
    done
    return 0
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

[ "$(id -u)" = 0 ] || skip "needs root (installs and starts munge, slurmctld and slurmd)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || skip "slurm-wlm and munge are not installed and there is no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q slurm-wlm munge >"$dir/apt.log" 2>&1 ||
      { apt-get update -q >>"$dir/apt.log" 2>&1 && apt-get install -y -q slurm-wlm munge >>"$dir/apt.log" 2>&1; }; } ||
        skip "apt-get install slurm-wlm munge failed (see $dir/apt.log)"
fi

# munge: one is enough for the machine; start one only when none answers
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -f /etc/munge/munge.key ] || { mkdir -p /etc/munge && dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null
    mkdir -p "$dir/munge" && chown munge "$dir/munge" 2>/dev/null  # munged writes its pid file as munge
    runuser -u munge -- munged --force --pid-file="$dir/munge/munged.pid" 2>"$dir/munged.err" ||
        munged --force --pid-file="$dir/munge/munged.pid" 2>>"$dir/munged.err" || skip "munged would not start: $(tail -1 "$dir/munged.err")"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || skip "munge does not answer"
fi

host=$(hostname -s)
node=$(slurmd -C 2>/dev/null | head -1)
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node"); cpus=${cpus:-$(nproc)}
mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node"); mem=${mem:-1000}
mkdir -p "$dir/state" "$dir/spool"
cat >"$conf" <<EOF
ClusterName=mocobench-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=defer_batch=0,sched_interval=1
PreemptType=preempt/none
JobRequeue=1
KillWait=10
OverTimeLimit=0
EnforcePartLimits=ALL
MinJobAge=5
InactiveLimit=0
Waittime=0
MessageTimeout=10
SlurmdTimeout=60
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=1 State=UP OverSubscribe=NO
EOF
cat >"$dir/gres.conf" <<EOF
NodeName=$host Name=gpu File=/dev/tty0
NodeName=$host Name=gpu File=/dev/tty1
EOF
export SLURM_CONF=$conf

slurmctld -i -f "$conf" 2>"$dir/slurmctld.err" || skip "slurmctld would not start: $(tail -1 "$dir/slurmctld.err")"
slurmd -f "$conf" 2>"$dir/slurmd.err" || { stop; skip "slurmd would not start: $(tail -1 "$dir/slurmd.err")"; }
for _ in $(seq 150); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null)
    case "$state" in idle*) break ;; esac
    sleep 0.2
done
case "$state" in idle*) ;; *) stop; skip "node $host is '${state:-not listed}', not idle (logs in $dir)" ;; esac
echo "export SLURM_CONF=$conf"
