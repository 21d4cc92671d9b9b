#!/usr/bin/env bash
# One-node SLURM cluster on localhost, for tests that submit jobs with submitit.
#
#   scripts/slurm.sh start    install if missing, start munged, mariadb, slurmdbd,
#                             slurmctld and slurmd, wait for an idle node, run a
#                             smoke job (idempotent: if already up, just report)
#   scripts/slurm.sh stop     stop all of the above
#   scripts/slurm.sh status   exit 0 if the node is idle/mixed/allocated, else 1
#
# Needs root, Debian/Ubuntu (apt-get). No systemd: the daemons are started
# directly. Accounting (slurmdbd + a local MariaDB on its unix socket only) is
# part of the setup because submitit reads job states with `sacct` only: without
# accounting every state is UNKNOWN and a job that dies without writing its
# result (scancel, timeout, node failure) makes job.result() wait forever.
set -euo pipefail

CLUSTER=modeconn
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurm_modeconn_local      # the DB only listens on a root-owned socket
MYSQL_SOCK=/run/mysqld/mysqld.sock
WAIT_S=${SLURM_WAIT_S:-60}
PKGS=(slurm-wlm slurmdbd munge mariadb-server)

log() { echo "slurm: $*"; }
die() {
    echo "slurm: ERROR: $*" >&2
    for f in "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd.log "$LOG_DIR"/slurmdbd.log "$LOG_DIR"/mariadb.log; do
        [[ -s $f ]] && { echo "---- tail $f" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

# pid_alive PIDFILE: the pid in PIDFILE is a live process
pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid NAME PIDFILE: TERM the process, wait up to 20 s, then KILL
stop_pid() {
    local name=$1 pidfile=$2 pid i
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped $name"; return 0; }
        sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    log "killed $name (pid $pid)"
}

# node_state: state of the (single) node as sinfo reports it, "" if unreachable
node_state() { timeout 10 sinfo -h -N -o %T 2>/dev/null | head -n 1 || true; }

# ("planned": idle, but the backfill scheduler has reserved it for a pending job)
node_ok() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing|planned)$ ]]; }

accounting_ok() { timeout 10 sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; }

install_if_missing() {
    local cmd missing=0
    for cmd in sbatch sinfo sacct slurmctld slurmd slurmdbd munged mungekey mariadbd; do
        command -v "$cmd" >/dev/null 2>&1 || missing=1
    done
    ((missing)) || return 0
    log "installing ${PKGS[*]} (apt-get)"
    local aptlog=/tmp/slurm-apt.log
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${PKGS[@]}"; } >"$aptlog" 2>&1; then
        tail -n 30 "$aptlog" >&2
        die "apt-get install failed (full log: $aptlog)"
    fi
}

start_munge() {
    local key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile="$key" 2>/dev/null ||
            dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
        log "created munge key $key"
    fi
    chown munge:munge "$key" /etc/munge
    chmod 0400 "$key"
    chmod 0700 /etc/munge
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    if ! pid_alive /run/munge/munged.pid; then
        runuser -u munge -- /usr/sbin/munged || die "munged failed to start (see /var/log/munge/munged.log)"
    fi
    munge -n | unmunge >/dev/null || die "munge credential round trip failed"
}

mysql_up() { mariadb --socket="$MYSQL_SOCK" -e 'SELECT 1' >/dev/null 2>&1; }

start_mariadb() {
    mkdir -p /run/mysqld "$LOG_DIR"
    chown mysql:mysql /run/mysqld
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null 2>&1 ||
            die "mariadb-install-db failed"
    fi
    if ! mysql_up; then
        # unix socket only; InnoDB settings slurmdbd asks for
        setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
            --socket="$MYSQL_SOCK" --pid-file=/run/mysqld/mysqld.pid \
            --log-error="$LOG_DIR/mariadb.log" \
            --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
            </dev/null >/dev/null 2>&1 &
        local i
        for ((i = 0; i < 2 * WAIT_S; i++)); do mysql_up && break; sleep 0.5; done
        mysql_up || die "mariadb did not come up"
    fi
    mariadb --socket="$MYSQL_SOCK" -e "
        CREATE DATABASE IF NOT EXISTS $DB_NAME;
        CREATE USER IF NOT EXISTS '$DB_USER'@'localhost';
        ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';" || die "mariadb: cannot create $DB_NAME"
}

# write FILE MODE: install stdin as FILE if different; return 0 if it changed
write_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    install -m "$mode" -o root -g root "$tmp" "$file"
    rm -f "$tmp"
    return 0
}

# Fills HOST CPUS MEM and the slurm.conf NodeName line from `slurmd -C`
NODE_LINE=""
probe_node() {
    local hw kv
    HOST=$(hostname -s)
    hw=$(slurmd -C 2>/dev/null | head -n 1) || die "slurmd -C failed"
    declare -A H=()
    for kv in $hw; do H[${kv%%=*}]=${kv#*=}; done
    CPUS=${H[CPUs]:-$(nproc)}
    # leave a little headroom: a node whose RealMemory exceeds what slurmd
    # finds is drained
    MEM=$((${H[RealMemory]:-1024} * 97 / 100))
    [[ ${H[NodeName]:-$HOST} == "$HOST" ]] || HOST=${H[NodeName]}
    if [[ ${H[ThreadsPerCore]:-1} == 1 && -n ${H[CoresPerSocket]:-} ]]; then
        NODE_LINE="CPUs=$CPUS Boards=${H[Boards]:-1} SocketsPerBoard=${H[SocketsPerBoard]:-1} CoresPerSocket=${H[CoresPerSocket]} ThreadsPerCore=1"
    else
        # With hyper-threads and a full topology, CR_CPU would still give each
        # job a whole core; CPUs alone makes every logical CPU schedulable.
        NODE_LINE="CPUs=$CPUS"
    fi
}

write_configs() {
    local changed=1
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
    write_if_changed "$CONF_DIR/slurm.conf" 0644 <<EOF && changed=0
# Generated by scripts/slurm.sh (modeconn): one node on localhost.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups (container/VM without systemd)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# a job without --mem gets one CPU's share, not the whole node
DefMemPerCPU=$((MEM / CPUS))
# accounting through slurmdbd, so that sacct (used by submitit) works
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdTimeout=60
MinJobAge=300
KillWait=5
InactiveLimit=0
NodeName=$HOST NodeAddr=127.0.0.1 $NODE_LINE RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    write_if_changed "$CONF_DIR/slurmdbd.conf" 0600 <<EOF && changed=0
# Generated by scripts/slurm.sh (modeconn)
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
    return $changed
}

smoke_test() {
    # sbatch --wait polls with a growing interval (~10 s for a fresh cluster),
    # so submit and poll sacct, which also proves the job reached slurmdbd
    local jid state="" i
    jid=$(timeout 20 sbatch --parsable -J slurm-smoke -t 1 -o /dev/null -e /dev/null \
        --wrap 'echo ok' 2>&1) || die "smoke job submission failed: $jid"
    jid=${jid%%;*}
    for ((i = 0; i < 4 * WAIT_S; i++)); do
        state=$(sacct -n -X -P -o State -j "$jid" 2>/dev/null | head -n 1)
        case $state in
        COMPLETED) return 0 ;;
        PENDING | RUNNING | COMPLETING | CONFIGURING | "") sleep 0.25 ;;
        *) break ;;
        esac
    done
    scancel "$jid" 2>/dev/null || true
    die "smoke job $jid: sacct state '${state:-nothing}', expected COMPLETED"
}

report() {
    local line
    line=$(timeout 10 sinfo -h -N -o '%N %T %c %m' | head -n 1)
    read -r n t c m <<<"$line"
    echo "slurm: node $n $t ($c CPUs, $m MB)"
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    install_if_missing
    probe_node
    local changed=0
    write_configs && changed=1
    if ((changed == 0)) && pid_alive /run/slurmctld.pid && pid_alive /run/slurmd.pid &&
        pid_alive /run/slurmdbd.pid && node_ok && accounting_ok; then
        report
        return 0
    fi
    start_munge
    start_mariadb
    if ((changed)); then
        stop_pid slurmd /run/slurmd.pid
        stop_pid slurmctld /run/slurmctld.pid
        stop_pid slurmdbd /run/slurmdbd.pid
    fi
    local i
    if ! pid_alive /run/slurmdbd.pid; then
        /usr/sbin/slurmdbd || die "slurmdbd failed to start"
    fi
    for ((i = 0; i < 2 * WAIT_S; i++)); do
        timeout 5 sacctmgr -n show cluster >/dev/null 2>&1 && break
        sleep 0.5
    done
    timeout 5 sacctmgr -n show cluster >/dev/null 2>&1 || die "slurmdbd not answering"
    accounting_ok || timeout 10 sacctmgr -i add cluster "$CLUSTER" >/dev/null ||
        die "cannot register cluster $CLUSTER in slurmdbd"
    if ! pid_alive /run/slurmctld.pid; then
        /usr/sbin/slurmctld || die "slurmctld failed to start"
    fi
    if ! pid_alive /run/slurmd.pid; then
        /usr/sbin/slurmd || die "slurmd failed to start"
    fi
    local state=""
    for ((i = 0; i < 2 * WAIT_S; i++)); do
        state=$(node_state)
        case $state in
        idle | mixed | allocated | completing | planned) break ;;
        drain* | down* | fail* | inval*)
            # ReturnToService=2 normally clears this once slurmd registers
            scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    sleep 1 # slurmd exits soon after daemonizing if it cannot bind its port
    pid_alive /run/slurmd.pid || die "slurmd exited"
    pid_alive /run/slurmctld.pid || die "slurmctld exited"
    node_ok || die "node $HOST not idle after ${WAIT_S}s (state: '${state:-no answer}'; $(scontrol show node "$HOST" 2>/dev/null | grep -o 'Reason=.*' || true))"
    smoke_test
    report
}

cmd_stop() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    stop_pid slurmd /run/slurmd.pid
    stop_pid slurmctld /run/slurmctld.pid
    stop_pid slurmdbd /run/slurmdbd.pid
    stop_pid mariadb /run/mysqld/mysqld.pid
    stop_pid munged /run/munge/munged.pid
}

cmd_status() {
    if pid_alive /run/slurmctld.pid && pid_alive /run/slurmd.pid && node_ok && accounting_ok; then
        report
        return 0
    fi
    echo "slurm: not up (node state: '$(node_state)')" >&2
    return 1
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
