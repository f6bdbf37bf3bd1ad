#!/bin/sh
# Submit one scheduled run's job once: `submit_nightly.sh resulic compress SRC ARCHIVE [flags]`.
# The submission id is $RESULIC_RUN_ID (nightly.yaml sets it to the Kubernetes Job's name, which
# names the scheduled run), else the UTC date. If a job with that id exists (a retried pod),
# follow it instead of submitting a second one. Exits 0 only when the job SUCCEEDED.
# Needs RAY_ADDRESS (the job server) and, on a cluster with token auth, RAY_AUTH_TOKEN.
set -eu
id="${RESULIC_RUN_ID:-resulic-nightly-$(date -u +%Y-%m-%d)}"
if ray job status "$id" >/dev/null 2>&1; then
  echo "job $id exists: following it" >&2
  ray job logs --follow "$id" || true
else
  # a job that fails makes this exit non-zero; its status below is the verdict either way
  ray job submit --submission-id "$id" --entrypoint-num-cpus 1 -- "$@" || true
fi
# The job's status from the job server (not the CLI's wording, which has changed across Ray versions).
status=$(python -c 'import sys
from ray.job_submission import JobSubmissionClient
print(JobSubmissionClient().get_job_status(sys.argv[1]).value)' "$id")
echo "job $id: $status" >&2
[ "$status" = SUCCEEDED ]
