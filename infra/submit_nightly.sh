#!/bin/sh
# Submit tonight's job once: `submit_nightly.sh resulic compress SRC ARCHIVE [flags]`.
# The submission id is the night's date (UTC). If a job with that id exists (a retried pod,
# a manual rerun), follow it instead of submitting a second one. Exits with the job's outcome.
# Needs RAY_ADDRESS (the job server) and, on a cluster with token auth, RAY_AUTH_TOKEN.
set -eu
id="resulic-nightly-$(date -u +%Y-%m-%d)"
if ray job status "$id" >/dev/null 2>&1; then
  echo "job $id exists: following it"
  ray job logs --follow "$id"
else
  ray job submit --submission-id "$id" --entrypoint-num-cpus 1 -- "$@"
fi
ray job status "$id" | tee /dev/stderr | grep -q SUCCEEDED
