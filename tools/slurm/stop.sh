#!/usr/bin/env bash
# Stop the single-node Slurm started by tools/slurm/start.sh (slurmd, slurmctld, munged), by the
# process ids they recorded under STATE_DIR. Removes STATE_DIR with --purge.
#
# usage: tools/slurm/stop.sh [--purge] [STATE_DIR]   (default: $BIDS_SYNTH_SLURM_DIR or /tmp/bids_synth_slurm)
set -uo pipefail
purge=""; state=""
for arg in "$@"; do
  case "$arg" in
    --purge) purge=1 ;;
    *) state="$arg" ;;
  esac
done
state="${state:-${BIDS_SYNTH_SLURM_DIR:-/tmp/bids_synth_slurm}}"
[ -d "$state" ] || exit 0
stop_pid() {  # stop_pid NAME: TERM, wait up to 10 s, then KILL
  local f="$state/$1.pid" pid
  [ -s "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
}
if [ -f "$state/slurm.conf" ] && command -v scancel >/dev/null; then
  SLURM_CONF="$state/slurm.conf" timeout 10 scancel --full --quiet -u root 2>/dev/null || true
fi
stop_pid slurmd
stop_pid slurmctld
stop_pid munged
rm -f "$state/munge/munged.pid"
[ -n "$purge" ] && rm -rf "$state"
exit 0
