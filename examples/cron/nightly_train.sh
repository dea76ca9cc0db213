#!/usr/bin/env bash
# Nightly distml training (and optional scoring) from cron, or any scheduler that runs a command.
#
#   # crontab -e
#   15 2 * * *  DISTML_ADDRESS=http://ray-head:8265 /opt/distml/examples/cron/nightly_train.sh \
#                 >> /var/log/distml/nightly.log 2>&1
#
# The integration contract (docs/batch_platforms.md):
#   exit 0  the run finished; its run directory holds _SUCCESS (checked below when visible here)
#   exit 2  invalid spec or input data: fix the input, retrying cannot help
#   exit 3  cluster unreachable or the submission refused (token?): retry later
#   exit 4  the job ran and failed (or was stopped)
#   exit 1  a bug in distml: report it
# Rerunning is safe: the run id is the date, and a finished run id is reported, not run again.
#
# Settings (environment):
#   DISTML_SPEC     spec file                       (default jobs/quickstart.yaml)
#   DISTML_RUN_ID   run / submission id             (default nightly-YYYY-MM-DD, UTC)
#   DISTML_OUTPUT   output root, shared storage for a cluster   (default /mnt/distml/runs)
#   DISTML_ADDRESS  http://HEAD:8265 to submit to a Ray cluster; empty: run on this machine
#   DISTML_SCORE_INPUT / DISTML_SCORE_OUTPUT   after training, score this input into
#                   DISTML_SCORE_OUTPUT/RUN_ID  (DISTML_SCORE_ADDRESS: the Ray GCS to score on)
#   DISTML          the distml command          (default distml)
#   RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH        the cluster's token, when it has token auth
# Extra arguments are passed to distml run / submit (e.g. --set model.params.max_depth=6).
set -uo pipefail

SPEC="${DISTML_SPEC:-jobs/quickstart.yaml}"
RUN_ID="${DISTML_RUN_ID:-nightly-$(date -u +%Y-%m-%d)}"
OUTPUT="${DISTML_OUTPUT:-/mnt/distml/runs}"
ADDRESS="${DISTML_ADDRESS:-}"
DISTML="${DISTML:-distml}"
RESULT="$(mktemp "${TMPDIR:-/tmp}/distml-${RUN_ID}.XXXXXX.json")"
trap 'rm -f "$RESULT"' EXIT

log() { printf '%s nightly_train %s: %s\n' "$(date -u +%FT%TZ)" "$RUN_ID" "$*" >&2; }

if [[ -n "$ADDRESS" ]]; then
  log "submitting $SPEC to $ADDRESS"
  "$DISTML" submit "$SPEC" --address "$ADDRESS" --submission-id "$RUN_ID" \
      --output "$OUTPUT" --wait --json "$@" > "$RESULT"
else
  log "running $SPEC on this machine"
  "$DISTML" run "$SPEC" --run-id "$RUN_ID" --output "$OUTPUT" --json "$@" > "$RESULT"
fi
rc=$?

case "$rc" in
  0) ;;
  2) log "invalid spec or input data (exit 2); not retrying: fix the input"; exit 2 ;;
  3) log "cluster unreachable or submission refused (exit 3); retry later"; exit 3 ;;
  4) log "the job failed (exit 4); see: $DISTML logs $RUN_ID --address $ADDRESS"; exit 4 ;;
  *) log "distml failed unexpectedly (exit $rc)"; exit "$rc" ;;
esac

# `--json` printed exactly one object on stdout: the run directory is in it.
run_dir="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["run_dir"])' "$RESULT")"
if [[ -d "$run_dir" ]]; then
  if [[ ! -f "$run_dir/_SUCCESS" ]]; then
    log "exit 0 but no _SUCCESS in $run_dir"; exit 1
  fi
  log "finished: $run_dir"
else
  log "finished on the cluster: $run_dir (not visible from this host)"
fi

if [[ -n "${DISTML_SCORE_INPUT:-}" ]]; then
  scores="${DISTML_SCORE_OUTPUT:?set DISTML_SCORE_OUTPUT with DISTML_SCORE_INPUT}/$RUN_ID"
  score_args=()
  [[ -n "${DISTML_SCORE_ADDRESS:-}" ]] && score_args=(--address "$DISTML_SCORE_ADDRESS")
  log "scoring $DISTML_SCORE_INPUT into $scores"
  "$DISTML" predict "$run_dir" --input "$DISTML_SCORE_INPUT" --output "$scores" \
      "${score_args[@]}" --json > "$RESULT" || exit $?
  [[ -f "$scores/_SUCCESS" ]] || { log "no _SUCCESS in $scores"; exit 1; }
  log "scored: $scores"
fi
echo "$run_dir"
