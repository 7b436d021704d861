#!/usr/bin/env bash
# Start a loopback, single-node Slurm (slurmctld + slurmd + munged) for tests and .ci/run.
#
# usage: tools/slurm/start.sh [STATE_DIR]        (default: $BIDS_SYNTH_SLURM_DIR or /tmp/bids_synth_slurm)
#
# - installs Debian's slurm-wlm and munge with apt-get when they are missing (root only);
# - creates a munge key when there is none, starts munged (socket under STATE_DIR);
# - writes STATE_DIR/slurm.conf: one node (this host, NodeAddr 127.0.0.1, all CPUs, most memory),
#   one partition `debug`, proctrack/linuxproc and task/none (no cgroups: works in containers),
#   spool/state/logs under STATE_DIR; ports BIDS_SYNTH_SLURMCTLD_PORT / BIDS_SYNTH_SLURMD_PORT
#   (default 6817 / 6818);
# - starts slurmctld and slurmd as root with -c (clean state) and waits until the node is idle.
# Idempotent: when the cluster of STATE_DIR is already up it only re-checks it. Prints the
# environment to use it (SLURM_CONF=...) on stdout; exits 0 when the node is idle, 69 when Slurm
# cannot be installed/started here (the reason on stderr). Stop with tools/slurm/stop.sh.
set -euo pipefail
state="${1:-${BIDS_SYNTH_SLURM_DIR:-/tmp/bids_synth_slurm}}"
ctld_port="${BIDS_SYNTH_SLURMCTLD_PORT:-6817}"
slurmd_port="${BIDS_SYNTH_SLURMD_PORT:-6818}"
timeout_s="${BIDS_SYNTH_SLURM_TIMEOUT:-60}"
die() { echo "tools/slurm/start.sh: $*" >&2; exit 69; }
log() { echo "tools/slurm/start.sh: $*" >&2; }

[ "$(id -u)" = 0 ] || die "needs root (slurmd must run as root to start jobs as their users)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "slurm-wlm/munge missing and no apt-get to install them"
  log "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >"${TMPDIR:-/tmp}/bids_synth_slurm_apt.log" 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    apt-get install -y -q --no-install-recommends slurm-wlm munge >"${TMPDIR:-/tmp}/bids_synth_slurm_apt.log" 2>&1 \
      || die "apt-get install slurm-wlm munge failed (see ${TMPDIR:-/tmp}/bids_synth_slurm_apt.log)"
  fi
fi

mkdir -p "$state"
exec 9>"$state/.lock"
flock -w 120 9 || die "could not lock $state/.lock"

conf="$state/slurm.conf"
export SLURM_CONF="$conf"
alive() { [ -s "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }
node_idle() { sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

if alive slurmctld && alive slurmd && alive munged && node_idle; then
  echo "SLURM_CONF=$conf"
  exit 0
fi
# something is half up: stop it and start afresh
"$(dirname "${BASH_SOURCE[0]}")/stop.sh" "$state" >/dev/null 2>&1 || true

# --- munge -------------------------------------------------------------------------------------
mkdir -p "$state/munge"
chown munge:munge "$state/munge" 2>/dev/null || true
chmod 0755 "$state/munge"
key=/etc/munge/munge.key
if [ ! -s "$key" ]; then
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then mungekey --create --keyfile="$key" --force >/dev/null
  else dd if=/dev/urandom of="$key" bs=1 count=1024 status=none; fi
  chown munge:munge "$key" 2>/dev/null || true
  chmod 0400 "$key"
fi
mkdir -p /var/log/munge /var/lib/munge /run/munge
chown munge:munge /var/log/munge /var/lib/munge /run/munge 2>/dev/null || true
sock="$state/munge/munge.socket.2"
# munged runs as the munge user (as Debian's service does)
runuser -u munge -- /usr/sbin/munged --socket="$sock" --pid-file="$state/munge/munged.pid" \
  --log-file="$state/munge/munged.log" --seed-file="$state/munge/munged.seed" \
  || die "munged did not start (see $state/munge/munged.log)"
for _ in $(seq 50); do [ -s "$state/munge/munged.pid" ] && break; sleep 0.1; done
cp "$state/munge/munged.pid" "$state/munged.pid"
munge -S "$sock" -n | unmunge -S "$sock" >/dev/null || die "munge round trip failed"

# --- slurm.conf --------------------------------------------------------------------------------
host="$(hostname -s)"
cpus="$(nproc --all)"
mem_mb="$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)"
mem_mb=$(( mem_mb > 2048 ? mem_mb - 1024 : mem_mb ))   # leave some for the daemons
mkdir -p "$state/spool" "$state/state" "$state/log"
# bind the daemons to the address the host name resolves to instead of INADDR_ANY, when that is a
# loopback address (as in containers and on CI runners with the usual /etc/hosts); otherwise
# Slurm 22.05 has no listen-address option and the two ports listen on every interface.
comm=""
case "$(getent hosts "$host" | awk '{print $1; exit}')" in
  127.*) comm="CommunicationParameters=NoCtldInAddrAny,NoInAddrAny" ;;
  *) log "warning: $host does not resolve to a loopback address; slurmctld/slurmd listen on all interfaces (ports ${ctld_port}/${slurmd_port})" ;;
esac
cat >"$conf" <<CONF
# written by tools/slurm/start.sh: single-node loopback cluster for tests
ClusterName=bidssynth
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${ctld_port}
SlurmdPort=${slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${sock}
MpiDefault=none
${comm}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=${state}/state
SlurmdSpoolDir=${state}/spool
SlurmctldPidFile=${state}/slurmctld.pid
SlurmdPidFile=${state}/slurmd.pid
SlurmctldLogFile=${state}/log/slurmctld.log
SlurmdLogFile=${state}/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
SchedulerParameters=sched_interval=2
MessageTimeout=20
NodeName=${host} NodeAddr=127.0.0.1 NodeHostname=${host} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
# the slurm commands (sinfo, sbatch...) find the conf through SLURM_CONF; processes that do not
# inherit it (e.g. Nipype's SLURM plugin jobs) inherit it from the job environment.

# --- daemons -----------------------------------------------------------------------------------
/usr/sbin/slurmctld -c -f "$conf" || die "slurmctld did not start (see $state/log/slurmctld.log)"
/usr/sbin/slurmd -c -f "$conf" -N "$host" || die "slurmd did not start (see $state/log/slurmd.log)"

deadline=$(( $(date +%s) + timeout_s ))
until node_idle; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    sinfo -N -l >&2 || true
    tail -n 20 "$state/log/slurmctld.log" "$state/log/slurmd.log" >&2 || true
    die "the node did not become idle within ${timeout_s}s"
  fi
  # a node left DOWN from an earlier run: bring it back
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "SLURM_CONF=$conf"
