#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the Slurm tests (and for trying the Slurm
# executor by hand): its own munged, slurmctld and slurmd, all state under one directory.
#
#   tests/slurm/local-slurm.sh start [DIR]   start it; prints `export SLURM_CONF=DIR/slurm.conf`
#   tests/slurm/local-slurm.sh stop  [DIR]   cancel its jobs, stop the daemons, remove DIR
#
# DIR defaults to /tmp/prunebench-slurm. Several clusters can run side by side (one per DIR):
# each picks free ports and talks to its own munged through its own socket, so nothing in
# /etc/slurm, /etc/munge or /run is used or changed. Client commands (sbatch, squeue, scontrol)
# find the cluster through SLURM_CONF.
#
# Needs the Debian packages slurm-wlm and munge (.ci/run installs them) and root: slurmd
# starts jobs as the submitting user, and these tests submit as root.
#
# Settings measured on the CI machine (hybrid cgroup v1 mount, no systemd): slurmd starts
# with CgroupPlugin=cgroup/v1, ProctrackType=proctrack/linuxproc, TaskPlugin=task/none and
# SelectType=select/cons_tres. There is no accounting database (no slurmdbd), so sacct does
# not work here; the project only uses squeue and scontrol.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop [DIR]" >&2
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
action=$1
dir=${2:-/tmp/prunebench-slurm}
case $dir in /*) ;; *) dir=$PWD/$dir ;; esac

need() {
    local missing=()
    for tool in munged slurmctld slurmd sbatch squeue scontrol scancel; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        echo "error: ${missing[*]} not found: install the Debian packages slurm-wlm and munge" >&2
        exit 1
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: the local Slurm cluster must be started as root (slurmd runs jobs as their user)" >&2
        exit 1
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_of() { [[ -s $1 ]] && cat "$1" 2>/dev/null || true; }

stop_pidfile() {
    local pidfile=$1 pid
    pid=$(pid_of "$pidfile")
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "error: $what did not come up within ${seconds}s; logs in $dir/log" >&2
    tail -n 5 "$dir"/log/*.log >&2 || true
    return 1
}

start() {
    need
    if [[ -e $dir/slurm.conf ]]; then
        echo "error: $dir already holds a cluster; run: $0 stop $dir" >&2
        exit 1
    fi
    mkdir -p "$dir"/{munge,state,spool,log}
    # Who started it: a test session that died before stopping it leaves its pid behind, and
    # the next session stops such orphans (tests/slurm/test_slurm.py).
    echo "${PRUNEBENCH_SLURM_OWNER:-$PPID}" >"$dir/owner"
    chmod 700 "$dir/munge"

    # munge: a fresh key, its own socket (the system's munged, if any, is left alone).
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed" \
        --log-file="$dir/log/munged.log"
    wait_for 10 munged test -S "$dir/munge/munge.socket"

    local host node cpus mem_mb ctld_port slurmd_port
    host=$(hostname -s)
    node=pbnode
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(free_port); done

    cat >"$dir/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
EOF
    cat >"$dir/slurm.conf" <<EOF
# Written by tests/slurm/local-slurm.sh: a one-node test cluster.
ClusterName=prunebench
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a credential of a killed job stays revoked on the node, and so how long
# a requeued job waits before it may start again (Slurm's default: 120 s). A requeued job that
# starts within the second its previous start was killed is refused by slurmd ("Job
# credential revoked") and ends FAILED; this wait is what prevents that, shortened here.
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=20
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerParameters=sched_interval=2
# Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or preempted: the
# trainer stops at its next step, well within this.
KillWait=10
# Finished jobs stay visible to squeue this long.
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$SLURM_CONF"
    wait_for 30 slurmctld scontrol ping
    slurmd -f "$SLURM_CONF" -N "$node"
    wait_for 30 "slurmd (node $node idle)" \
        bash -c "sinfo -h -n $node -o %T | grep -qx idle"
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop() {
    if [[ ! -e $dir/slurm.conf ]]; then
        echo "no local Slurm cluster in $dir" >&2
        return 0
    fi
    export SLURM_CONF=$dir/slurm.conf
    if [[ -n $(pid_of "$dir/slurmctld.pid") ]] && scontrol ping >/dev/null 2>&1; then
        # Running jobs outlive slurmd (slurmstepd is its own process): cancel them first.
        scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 100); do
            [[ -z $(squeue -h -t running,completing,configuring -o %i 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munge/munged.pid"
    rm -rf "$dir"
}

case $action in
start) start ;;
stop) stop ;;
*) usage ;;
esac
