#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, to try profiles/slurm without a cluster (the tests use it).
# Needs root and Debian's packages: apt-get install slurm-wlm munge
#   profiles/slurm/localhost-cluster.sh start DIR   config, state and logs under DIR; munged, slurmctld, slurmd
#   profiles/slurm/localhost-cluster.sh stop DIR    stops them and removes the /etc/slurm links it made
# The node has this machine's cores, 90 % of its memory and one fake GPU (a character device standing in for
# /dev/nvidia0), so `gpu=1` jobs get `--gpus=1` and CUDA_VISIBLE_DEVICES=0.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$(realpath -m "$2")

stop_pid() {  # stop_pid FILE: kill the process whose id FILE holds, if it runs
    local f=$1
    [ -f "$f" ] || return 0
    local pid
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

link_conf() {  # link_conf NAME: /etc/slurm/NAME -> DIR/NAME (the job-side srun drops SLURM_CONF)
    local target=/etc/slurm/$1
    if [ -e "$target" ] && [ "$(readlink -f "$target")" != "$dir/$1" ]; then
        echo "$target exists and is not ours; refusing to replace a real SLURM configuration" >&2
        exit 1
    fi
    mkdir -p /etc/slurm
    ln -sfn "$dir/$1" "$target"
}

case $cmd in
start)
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install slurm-wlm munge" >&2; exit 1; }
    done
    mkdir -p "$dir"/{state,spool,log,munge,dev}
    chmod 700 "$dir/munge"
    [ -f "$dir/munge/munge.key" ] || { dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
                                       chmod 400 "$dir/munge/munge.key"; }
    [ -e "$dir/dev/fakegpu0" ] || mknod "$dir/dev/fakegpu0" c 1 3
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cpus=$(nproc)
    cat > "$dir/slurm.conf" <<EOF
ClusterName=medaug
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MinJobAge=3600
ReturnToService=2
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    printf 'AutoDetect=off\nNodeName=localhost Name=gpu File=%s/dev/fakegpu[0-0]\n' "$dir" > "$dir/gres.conf"
    link_conf slurm.conf
    link_conf gres.conf
    munged --foreground --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed" \
        > "$dir/log/munged.out" 2>&1 &
    echo $! > "$dir/munged.run.pid"
    for _ in $(seq 50); do [ -S "$dir/munge/munge.socket" ] && break; sleep 0.1; done
    slurmctld -D -i -f "$dir/slurm.conf" > "$dir/log/slurmctld.out" 2>&1 &
    echo $! > "$dir/slurmctld.run.pid"
    slurmd -D -N localhost -f "$dir/slurm.conf" > "$dir/log/slurmd.out" 2>&1 &
    echo $! > "$dir/slurmd.run.pid"
    for _ in $(seq 300); do
        state=$(SLURM_CONF="$dir/slurm.conf" sinfo -h -N -o %T 2>/dev/null || true)
        [ "$state" = idle ] && { echo "SLURM on localhost is up (config $dir/slurm.conf)"; exit 0; }
        sleep 0.1
    done
    echo "SLURM did not come up; node state '${state:-none}'; logs in $dir/log" >&2
    exit 1
    ;;
stop)
    stop_pid "$dir/slurmd.run.pid"
    stop_pid "$dir/slurmctld.run.pid"
    stop_pid "$dir/munged.run.pid"
    for name in slurm.conf gres.conf; do
        if [ -L "/etc/slurm/$name" ] && [ "$(readlink -f "/etc/slurm/$name")" = "$dir/$name" ]; then
            rm -f "/etc/slurm/$name"
        fi
    done
    echo "SLURM on localhost stopped"
    ;;
*) usage ;;
esac
