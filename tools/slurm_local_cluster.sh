#!/usr/bin/env bash
# A one-node SLURM cluster on loopback for testing the workflow's SLURM profile
# (tests/test_slurm_cluster.py). Everything but the Debian packages lives in STATE_DIR:
# munge key and socket, slurm.conf, gres.conf, spool and state folders, logs, pid files.
# Clients find the cluster through SLURM_CONF=STATE_DIR/slurm.conf. Outside STATE_DIR only
# the link /run/slurm/conf -> STATE_DIR is made (removed by stop; see link_run_conf);
# nothing under /etc is written, and start refuses to run where /etc/slurm/slurm.conf
# exists (a configured system SLURM).
#
#   tools/slurm_local_cluster.sh install            # apt-get slurm-wlm and munge (root)
#   tools/slurm_local_cluster.sh start STATE_DIR    # munged, slurmctld, slurmd; waits idle
#   tools/slurm_local_cluster.sh stop STATE_DIR     # stops what start started
#   tools/slurm_local_cluster.sh env STATE_DIR      # prints: export SLURM_CONF=...
#
# Settings (environment): QURE_SLURM_CPUS (default: the machine's, per slurmd -C),
# QURE_SLURM_GPUS (fake GPUs, default 4; 0 for none), QURE_SLURM_PORT (slurmctld port,
# default 6817; slurmd uses the next one), QURE_SLURM_PARTITION (default "local").
#
# The node has no GPU. To exercise the profiles' GPU requests (--gpus=1 from the rules'
# gpu=1 resource) anyway, it declares QURE_SLURM_GPUS fake GPU "devices": character
# devices like /dev/null (mknod c 1 3) in STATE_DIR, listed in gres.conf. SLURM then
# schedules and accounts them like real GPUs (and sets CUDA_VISIBLE_DEVICES); the jobs run
# on the CPU. Where mknod is not allowed, the devices fall back to /dev/null, /dev/zero,
# /dev/full and /dev/urandom (at most 4 fake GPUs then).
#
# The partition lets two jobs share each core (OverSubscribe=FORCE:2): the smoke jobs are
# short and spend much of their life starting Python or waiting for the executor's next
# status check, so a few more jobs than cores keep the machine busy.
set -euo pipefail

die() { echo "slurm_local_cluster: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (daemons run as root here)"; }

cmd_install() {
    local missing=()
    for tool in munged slurmctld slurmd sbatch squeue scontrol; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if [ ${#missing[@]} = 0 ]; then
        echo "slurm_local_cluster: slurm-wlm and munge already installed"
        return 0
    fi
    need_root install
    export DEBIAN_FRONTEND=noninteractive
    local pkgs=(slurm-wlm munge)
    if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}"; then
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${pkgs[@]}"
    fi
    # The packages' postinst may try to start the system services; this cluster does not
    # use them (policy-rc.d usually denies it in containers anyway).
}

paths() {
    STATE=$(realpath -m "$1")
    CONF=$STATE/slurm.conf
    MUNGE_SOCKET=$STATE/munge/munge.socket
    RUN_CONF=/run/slurm/conf
}

# SLURM commands read SLURM_CONF, else /etc/slurm/slurm.conf, else /run/slurm/conf (where
# a configless slurmd caches its configuration). Inside a job the executor plugin starts
# the rule with a nested srun whose environment has no SLURM_* variables, so SLURM_CONF
# does not reach it: link /run/slurm/conf to STATE_DIR for it. Refuse to run beside a
# system configuration, which that srun would read instead.
link_run_conf() {
    [ ! -e /etc/slurm/slurm.conf ] || die "/etc/slurm/slurm.conf exists: a system SLURM is \
configured here, and jobs' nested srun calls would use it; use that cluster instead"
    if [ -e "$RUN_CONF" ] || [ -L "$RUN_CONF" ]; then
        local target
        target=$(readlink "$RUN_CONF" || true)
        if [ -L "$RUN_CONF" ] && { [ "$target" = "$STATE" ] || [ ! -e "$target" ]; }; then
            rm -f "$RUN_CONF"   # ours, or left dangling by an earlier test cluster
        else
            die "$RUN_CONF exists and belongs to another SLURM setup"
        fi
    fi
    mkdir -p "$(dirname "$RUN_CONF")"
    ln -s "$STATE" "$RUN_CONF"
}

node_cpus() {
    if [ -n "${QURE_SLURM_CPUS:-}" ]; then echo "$QURE_SLURM_CPUS"; return; fi
    slurmd -C | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p'
}

node_memory() {
    # 90 % of what slurmd sees: a node announcing more than it has is drained.
    local mem
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    echo $((mem * 9 / 10))
}

fake_gpus() {
    local n=$1 i
    mkdir -p "$STATE/fakegpu"
    for ((i = 0; i < n; i++)); do
        [ -e "$STATE/fakegpu/nvidia$i" ] || mknod "$STATE/fakegpu/nvidia$i" c 1 3 2>/dev/null \
            || return 1
    done
}

write_conf() {
    local cpus mem gpus port node partition gres_line="" gres_types=""
    cpus=$(node_cpus)
    mem=$(node_memory)
    gpus=${QURE_SLURM_GPUS:-4}
    port=${QURE_SLURM_PORT:-6817}
    partition=${QURE_SLURM_PARTITION:-local}
    node=$(hostname -s)
    : >"$STATE/gres.conf"
    if [ "$gpus" -gt 0 ]; then
        gres_types="GresTypes=gpu"
        gres_line="Gres=gpu:$gpus"
        if fake_gpus "$gpus"; then
            echo "NodeName=$node Name=gpu File=$STATE/fakegpu/nvidia[0-$((gpus - 1))]" \
                >"$STATE/gres.conf"
        else
            [ "$gpus" -le 4 ] || die "mknod refused; at most 4 fake GPUs without it"
            local files=(/dev/null /dev/zero /dev/full /dev/urandom)
            for ((i = 0; i < gpus; i++)); do
                echo "NodeName=$node Name=gpu File=${files[$i]}" >>"$STATE/gres.conf"
            done
        fi
    fi
    cat >"$CONF" <<EOF
# Written by tools/slurm_local_cluster.sh: one node on loopback, for tests only.
ClusterName=qurelocal
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct has no database. Every finished job is appended to the job
# completion log instead (one line per job), and squeue keeps finished jobs for an hour
# (MinJobAge) so the executor plugin can read their final state with squeue.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.log
MinJobAge=3600
MaxJobCount=100000
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
$gres_types
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres_line State=UNKNOWN
PartitionName=$partition Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:2
EOF
}

cmd_start() {
    need_root start
    paths "$1"
    for tool in munged slurmctld slurmd sbatch; do
        command -v "$tool" >/dev/null || die "$tool not found: run '$0 install' first"
    done
    mkdir -p "$STATE"/{munge,ctld,spool,log}
    chmod 700 "$STATE/munge"
    [ -s "$STATE/munge/munge.key" ] || dd if=/dev/urandom of="$STATE/munge/munge.key" \
        bs=1024 count=1 status=none
    chmod 600 "$STATE/munge/munge.key"
    write_conf
    link_run_conf
    export SLURM_CONF=$CONF
    # A failed start leaves nothing running.
    trap 'cmd_stop "$STATE" >/dev/null 2>&1 || true' EXIT
    munged --force --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
        --seed-file="$STATE/munge/munged.seed"
    # -c: a clean start (no saved jobs); -i: ignore a stale state after a crash.
    slurmctld -c -i
    local i
    for ((i = 0; i < 30; i++)); do
        [[ "$(scontrol ping 2>&1 || true)" == *UP* ]] && break
        sleep 1
    done
    if [[ "$(scontrol ping 2>&1 || true)" != *UP* ]]; then
        tail -n 20 "$STATE/log/slurmctld.log" >&2 || true
        die "slurmctld did not start"
    fi
    # slurmd stays in the foreground until it has registered with slurmctld.
    timeout 60 slurmd -N "$(hostname -s)"
    local state=""
    for ((i = 0; i < 60; i++)); do
        state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
        case "$state" in
            idle | mixed | allocated) break ;;
        esac
        sleep 1
    done
    case "$state" in
        idle | mixed | allocated) ;;
        *)
            tail -n 30 "$STATE"/log/*.log >&2 || true
            scontrol show node >&2 || true
            die "node not ready after 60 s (state: ${state:-none})"
            ;;
    esac
    trap - EXIT
    echo "slurm_local_cluster: up ($(sinfo -h -o '%P %D %c CPUs %m MB %G' | head -1))"
    echo "export SLURM_CONF=$CONF"
}

stop_pidfile() {
    local pidfile=$1 name=$2 pid i
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.5
    done
    echo "slurm_local_cluster: $name ($pid) did not stop; killing it" >&2
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

cmd_stop() {
    paths "$1"
    if [ -f "$CONF" ]; then
        SLURM_CONF=$CONF scancel --full --quiet --partition="${QURE_SLURM_PARTITION:-local}" \
            2>/dev/null || true
    fi
    stop_pidfile "$STATE/slurmd.pid" slurmd
    stop_pidfile "$STATE/slurmctld.pid" slurmctld
    stop_pidfile "$STATE/munge/munged.pid" munged
    if [ -L "$RUN_CONF" ] && [ "$(readlink "$RUN_CONF")" = "$STATE" ]; then
        rm -f "$RUN_CONF"
    fi
    echo "slurm_local_cluster: stopped"
}

case "${1:-}" in
    install) cmd_install ;;
    start) [ $# = 2 ] || die "usage: $0 start STATE_DIR"; cmd_start "$2" ;;
    stop) [ $# = 2 ] || die "usage: $0 stop STATE_DIR"; cmd_stop "$2" ;;
    env) [ $# = 2 ] || die "usage: $0 env STATE_DIR"; paths "$2"; echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 install | start STATE_DIR | stop STATE_DIR | env STATE_DIR" ;;
esac
