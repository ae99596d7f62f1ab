#!/usr/bin/env bash
# retry-failed.sh: queue failed mrictl jobs again, once each, and log one summary line.
#
# Nightly, for hospital IT: finds the failed jobs (`mrictl recon status --state failed --json`),
# retries each with `mrictl recon retry`, and keeps a ledger of what it retried so that a job
# that fails again is left for a person (see --max-retries) instead of looping every night.
# With job ids as arguments, it retries exactly those (still counted in the ledger).
#
# Usage: retry-failed.sh [--since HOURS] [--max-retries N] [--ledger FILE] [JOB_ID ...]
#   --since HOURS     only jobs that failed within the last HOURS (default: any age)
#   --max-retries N   retries this script makes per job, ever (default 1; 0 = report only)
#   --ledger FILE     the retry ledger (default $MRICTL_OPS_STATE_DIR/retried.txt,
#                     MRICTL_OPS_STATE_DIR defaulting to $XDG_STATE_HOME/mrictl-ops)
# Environment: MRICTL_BIN (the mrictl command, default `mrictl`), PYTHON (default python3),
# and every MRICTL_* setting mrictl itself reads (MRICTL_HOME, MRICTL_BACKEND, MRICTL_CONFIG ...).
#
# Output: one summary line on stdout, e.g.
#   2026-12-06T02:00:03Z retry-failed: found=3 retried=2 skipped=1 refused=0 retried_ids=job-..,job-..
# (counts and job ids only: never a file name or patient data); errors, one line each, on stderr.
#
# Exit codes: 0 every retry was accepted (or there was nothing to retry); 2 bad usage or a
# missing tool; 6 another run holds the ledger's lock; otherwise mrictl's own code
# (docs/exit-codes.md): the listing's (e.g. 7: backend unreachable), or that of the first
# refused retry (4 no such job, 6 not failed any more, 7 backend) after trying every job.
#
# Cron (as the mrictl user, at 02:00, appending to a log file that holds job ids only):
#   0 2 * * * /opt/mrictl/scripts/ops/retry-failed.sh --since 24 >>/var/log/mrictl/retry-failed.log 2>&1
set -euo pipefail

readonly NAME="retry-failed"
MRICTL_BIN="${MRICTL_BIN:-mrictl}"
PYTHON="${PYTHON:-python3}"
STATE_DIR="${MRICTL_OPS_STATE_DIR:-${XDG_STATE_HOME:-${HOME:-/tmp}/.local/state}/mrictl-ops}"

die() { # die CODE MESSAGE: one line on stderr, then exit CODE
  echo "$NAME: error: $2" >&2
  exit "$1"
}

since=""
max_retries=1
ledger="$STATE_DIR/retried.txt"
explicit_ids=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --since) [ "$#" -ge 2 ] || die 2 "--since needs HOURS"; since="$2"; shift 2 ;;
    --max-retries) [ "$#" -ge 2 ] || die 2 "--max-retries needs N"; max_retries="$2"; shift 2 ;;
    --ledger) [ "$#" -ge 2 ] || die 2 "--ledger needs FILE"; ledger="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --*) die 2 "unknown option $1 (see --help)" ;;
    job-*) explicit_ids+=("$1"); shift ;;
    *) die 2 "not a job id: $1 (job ids start with job-)" ;;
  esac
done
[[ "$max_retries" =~ ^[0-9]+$ ]] || die 2 "--max-retries must be a whole number, not $max_retries"
[[ -z "$since" || "$since" =~ ^[0-9]+([.][0-9]+)?$ ]] || die 2 "--since must be hours, not $since"
command -v "$PYTHON" >/dev/null 2>&1 || die 2 "$PYTHON not found (set PYTHON)"
command -v "$MRICTL_BIN" >/dev/null 2>&1 || die 2 "$MRICTL_BIN not found (set MRICTL_BIN)"

mkdir -p "$(dirname "$ledger")" || die 2 "cannot create the ledger's folder"
touch "$ledger" || die 2 "cannot write the ledger $(basename "$ledger")"
if command -v flock >/dev/null 2>&1; then # two overlapping runs would retry a job twice
  exec 9>"$ledger.lock"
  flock -n 9 || die 6 "another run holds $(basename "$ledger").lock"
fi

if [ "${#explicit_ids[@]}" -gt 0 ]; then
  candidates=$(printf '%s\n' "${explicit_ids[@]}")
else
  status_rc=0
  listing=$("$MRICTL_BIN" recon status --state failed --json) || status_rc=$?
  [ "$status_rc" -eq 0 ] || die "$status_rc" "mrictl recon status failed (exit $status_rc)"
  # The jobs that failed within --since hours, oldest first (updated_at is ISO 8601 UTC).
  candidates=$("$PYTHON" -c '
import json, sys
from datetime import datetime, timedelta, timezone
since = sys.argv[1]
cutoff = ""
if since:
    moment = datetime.now(timezone.utc) - timedelta(hours=float(since))
    cutoff = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
for job in json.load(sys.stdin)["jobs"]:
    if job["state"] == "failed" and job["updated_at"] >= cutoff:
        print(job["job_id"])
' "$since" <<<"$listing") || die 2 "could not read the job list mrictl printed"
fi

found=0 retried=0 skipped=0 refused=0 first_refusal=0
retried_ids=() refused_ids=()
while IFS= read -r job_id; do
  [ -n "$job_id" ] || continue
  found=$((found + 1))
  times=$(grep -cxF "$job_id" "$ledger" || true)
  if [ "$times" -ge "$max_retries" ]; then
    skipped=$((skipped + 1))
    continue
  fi
  retry_rc=0
  "$MRICTL_BIN" recon retry "$job_id" --json >/dev/null || retry_rc=$?
  if [ "$retry_rc" -eq 0 ]; then
    retried=$((retried + 1))
    retried_ids+=("$job_id")
    # The ledger is rewritten whole under a temporary name, then renamed: never half-written.
    { cat "$ledger"; echo "$job_id"; } >"$ledger.tmp.$$" && mv -f "$ledger.tmp.$$" "$ledger"
  else
    refused=$((refused + 1))
    refused_ids+=("$job_id")
    [ "$first_refusal" -ne 0 ] || first_refusal=$retry_rc
  fi
done <<<"$candidates"

join() { local IFS=,; echo "$*"; }
summary="found=$found retried=$retried skipped=$skipped refused=$refused"
summary+=" retried_ids=$(join "${retried_ids[@]}") refused_ids=$(join "${refused_ids[@]}")"
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $NAME: $summary"
exit "$first_refusal"
