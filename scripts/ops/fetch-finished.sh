#!/usr/bin/env bash
# fetch-finished.sh: deliver every finished reconstruction once: into a folder, or to the PACS.
#
# For hospital IT (cron or a systemd timer): lists the succeeded reconstruction jobs
# (`mrictl recon status --state succeeded --json`, stage recon), skips those its ledger says
# were delivered before, and fetches each of the others with `mrictl fetch`: into
# OUT/<job_id>/ (one folder per study, named by job id, never by patient), or with --to-pacs
# to a DICOM node by C-STORE (only where this mrictl's `fetch --help` offers --to-pacs; an
# older mrictl can fetch into a folder only, and the script says so).
#
# Usage: fetch-finished.sh --out DIR [--format LIST] [--ledger FILE]
#        fetch-finished.sh --to-pacs HOST:PORT --aet AE --called-aet AE [--ledger FILE]
#   --out DIR           the folder that receives one sub-folder per job
#   --format LIST       with --out: mrictl fetch's --format (e.g. dicom,report; default all)
#   --to-pacs HOST:PORT, --aet AE (ours), --called-aet AE (the PACS's): send the DICOM series
#   --ledger FILE       the job ids delivered so far, one a line (default
#                       $MRICTL_OPS_STATE_DIR/fetched-to-folder.txt or sent-to-pacs.txt,
#                       MRICTL_OPS_STATE_DIR defaulting to $XDG_STATE_HOME/mrictl-ops);
#                       use one ledger per destination
# Environment: MRICTL_BIN (the mrictl command, default `mrictl`), PYTHON (default python3),
# and every MRICTL_* setting mrictl itself reads (MRICTL_HOME, MRICTL_BACKEND, MRICTL_CONFIG ...).
#
# Output: one summary line on stdout, e.g.
#   2026-12-06T03:00:02Z fetch-finished: found=4 delivered=1 before=3 failed=0 delivered_ids=job-.. failed_ids=
# (counts and job ids only: never a file name or patient data); errors, one line each, on stderr.
# The ledger is rewritten whole under a temporary name and renamed after each delivery, so a
# crash leaves it as it was before or after that job, never half-written.
#
# Exit codes: 0 every finished job is delivered (or there was none); 2 bad usage, a missing
# tool, or --to-pacs with an mrictl that has no such option; 6 another run holds the ledger's
# lock; otherwise mrictl's own code (docs/exit-codes.md): the listing's (e.g. 7: backend
# unreachable), or that of the first failed delivery after trying every job (e.g. 7: a stored
# object failed its checksum, or the PACS did not answer).
#
# Cron (as the mrictl user, every 10 minutes):
#   */10 * * * * /opt/mrictl/scripts/ops/fetch-finished.sh --out /srv/mrictl/results >>/var/log/mrictl/fetch-finished.log 2>&1
set -euo pipefail

readonly NAME="fetch-finished"
MRICTL_BIN="${MRICTL_BIN:-mrictl}"
PYTHON="${PYTHON:-python3}"
STATE_DIR="${MRICTL_OPS_STATE_DIR:-${XDG_STATE_HOME:-${HOME:-/tmp}/.local/state}/mrictl-ops}"

die() { # die CODE MESSAGE: one line on stderr, then exit CODE
  echo "$NAME: error: $2" >&2
  exit "$1"
}

out="" formats="" pacs="" aet="" called_aet="" ledger=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --out | --format | --to-pacs | --aet | --called-aet | --ledger)
      [ "$#" -ge 2 ] || die 2 "$1 needs a value"
      case "$1" in
        --out) out="$2" ;;
        --format) formats="$2" ;;
        --to-pacs) pacs="$2" ;;
        --aet) aet="$2" ;;
        --called-aet) called_aet="$2" ;;
        --ledger) ledger="$2" ;;
      esac
      shift 2
      ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die 2 "unknown argument $1 (see --help)" ;;
  esac
done
if [ -n "$pacs" ]; then
  [[ -z "$out" && -z "$formats" ]] || die 2 "--to-pacs sends DICOM only: leave out --out and --format"
  [[ -n "$aet" && -n "$called_aet" ]] || die 2 "--to-pacs needs --aet and --called-aet"
  ledger="${ledger:-$STATE_DIR/sent-to-pacs.txt}"
else
  [ -n "$out" ] || die 2 "give --out DIR (a folder) or --to-pacs HOST:PORT"
  [[ -z "$aet" && -z "$called_aet" ]] || die 2 "--aet and --called-aet go with --to-pacs"
  ledger="${ledger:-$STATE_DIR/fetched-to-folder.txt}"
fi
command -v "$PYTHON" >/dev/null 2>&1 || die 2 "$PYTHON not found (set PYTHON)"
command -v "$MRICTL_BIN" >/dev/null 2>&1 || die 2 "$MRICTL_BIN not found (set MRICTL_BIN)"
if [ -n "$pacs" ] && ! "$MRICTL_BIN" fetch --help 2>/dev/null | grep -q -- "--to-pacs"; then
  die 2 "this mrictl cannot send to a PACS (its fetch has no --to-pacs): use --out DIR"
fi

mkdir -p "$(dirname "$ledger")" || die 2 "cannot create the ledger's folder"
touch "$ledger" || die 2 "cannot write the ledger $(basename "$ledger")"
if command -v flock >/dev/null 2>&1; then # two overlapping runs would deliver a study twice
  exec 9>"$ledger.lock"
  flock -n 9 || die 6 "another run holds $(basename "$ledger").lock"
fi
if [ -n "$out" ]; then
  mkdir -p "$out" || die 2 "cannot create the folder $(basename "$out")"
fi

list_rc=0
listing=$("$MRICTL_BIN" recon status --state succeeded --json) || list_rc=$?
[ "$list_rc" -eq 0 ] || die "$list_rc" "mrictl recon status failed (exit $list_rc)"
# Finished reconstructions only: a succeeded preprocess job is a step, not a study.
finished=$("$PYTHON" -c '
import json, sys
for job in json.load(sys.stdin)["jobs"]:
    if job["state"] == "succeeded" and job["stage"] == "recon":
        print(job["job_id"])
' <<<"$listing") || die 2 "could not read the job list mrictl printed"

found=0 delivered=0 before=0 failed=0 first_failure=0
delivered_ids=() failed_ids=()
while IFS= read -r job_id; do
  [ -n "$job_id" ] || continue
  found=$((found + 1))
  if grep -qxF "$job_id" "$ledger"; then
    before=$((before + 1))
    continue
  fi
  fetch_rc=0
  if [ -n "$pacs" ]; then
    "$MRICTL_BIN" fetch "$job_id" --to-pacs "$pacs" --aet "$aet" --called-aet "$called_aet" \
      --json >/dev/null || fetch_rc=$?
  elif [ -n "$formats" ]; then
    "$MRICTL_BIN" fetch "$job_id" --out "$out/$job_id" --format "$formats" --json >/dev/null \
      || fetch_rc=$?
  else
    "$MRICTL_BIN" fetch "$job_id" --out "$out/$job_id" --json >/dev/null || fetch_rc=$?
  fi
  if [ "$fetch_rc" -eq 0 ]; then
    delivered=$((delivered + 1))
    delivered_ids+=("$job_id")
    { cat "$ledger"; echo "$job_id"; } >"$ledger.tmp.$$" && mv -f "$ledger.tmp.$$" "$ledger"
  else
    failed=$((failed + 1))
    failed_ids+=("$job_id")
    [ "$first_failure" -ne 0 ] || first_failure=$fetch_rc
  fi
done <<<"$finished"

join() { local IFS=,; echo "$*"; }
summary="found=$found delivered=$delivered before=$before failed=$failed"
summary+=" delivered_ids=$(join "${delivered_ids[@]}") failed_ids=$(join "${failed_ids[@]}")"
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $NAME: $summary"
exit "$first_failure"
