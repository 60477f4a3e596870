#!/usr/bin/env bash
# CI-optional smoke test of `make sam-local`: keeps the sam local path from rotting.
#
#   scripts/sam_local/smoke.sh
#
# Not part of `make test` (it needs root or sudo for Docker, a Debian mirror and PyPI on
# the first run, and a minute or more). Passes when `make sam-local` exits 0 and its
# summary shows, independently of the run's own verdict:
#   * `sam local invoke` of events/stream_insert.json: exactly one CRM request, status ok;
#   * start-lambda invoke of the EventBridge event: exactly one CRM request, status ok;
#   * the same EventBridge event for the call already pushed: no CRM request.
# A dockerd this script caused to start is stopped again at the end (a CI runner is left
# as found); set SAM_LOCAL_KEEP_DOCKER=1 to keep it for a next run.
set -euo pipefail
cd "$(dirname "$0")/../.."

docker_was_up=no
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    docker_was_up=yes
fi
log=$(mktemp /tmp/sam-local-smoke.XXXXXX)
finish() {
    if [ "$docker_was_up" = no ] && [ "${SAM_LOCAL_KEEP_DOCKER:-0}" != 1 ]; then
        scripts/sam_local/docker_host.sh stop || true
    fi
    rm -f "$log"
}
trap finish EXIT

started=$SECONDS
set +e
make sam-local 2>&1 | tee "$log"
make_status=${PIPESTATUS[0]}
set -e
echo "smoke: make sam-local exited $make_status after $((SECONDS - started)) s"

summary=$(sed -n 's/^sam-local summary: //p' "$log" | tail -n 1)
if [ -z "$summary" ]; then
    echo "smoke: FAIL, no summary line" >&2
    exit 1
fi
.venv/bin/python - "$summary" "$make_status" <<'EOF'
import json
import sys

summary, make_status = json.loads(sys.argv[1]), int(sys.argv[2])
expected = [  # (name prefix, CRM requests, status of the call afterwards)
    ("sam local invoke (stream INSERT)", 1, "ok"),
    ("start-lambda invoke (EventBridge)", 1, "ok"),
    ("start-lambda invoke (EventBridge, repeat)", 0, "ok"),
]
invokes = summary["invokes"]
problems = [] if make_status == 0 else [f"make sam-local exited {make_status}"]
if [invoke["invoke"] for invoke in invokes] != [name for name, _, _ in expected]:
    problems.append(f"invokes {[invoke['invoke'] for invoke in invokes]}")
for invoke, (name, requests, status) in zip(invokes, expected):
    if invoke["crm_requests"] != requests or invoke["status"] != status or invoke["function_error"]:
        problems.append(f"{name}: {invoke['crm_requests']} CRM request(s), status {invoke['status']}, "
                        f"error {invoke['function_error']}; expected {requests} and {status}")
for problem in problems:
    print(f"smoke: FAIL, {problem}", file=sys.stderr)
if not problems:
    print(f"smoke: ok ({summary['image']}, {summary['architecture']}, timings {summary['timings']})")
sys.exit(1 if problems else 0)
EOF
