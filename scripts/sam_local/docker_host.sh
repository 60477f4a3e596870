#!/usr/bin/env bash
# The Docker engine `make sam-local` needs, on a Debian machine without one.
#
#   scripts/sam_local/docker_host.sh ensure   # install docker.io/iptables/debootstrap if missing, start dockerd if down
#   scripts/sam_local/docker_host.sh stop     # stop dockerd, only if `ensure` started it
#   scripts/sam_local/docker_host.sh status
#
# `ensure` leaves dockerd running so the next `make sam-local` starts in seconds; it
# records the pid it started in $STATE_DIR, and `stop` ends that process and nothing
# else: a dockerd the user started themselves is never touched.
set -euo pipefail

STATE_DIR=${SAM_LOCAL_STATE_DIR:-/run/post-call-push-sam-local}
PID_FILE=$STATE_DIR/dockerd.pid
LOG_FILE=${SAM_LOCAL_DOCKERD_LOG:-/var/log/post-call-push-dockerd.log}
READY_TIMEOUT_SECONDS=60

say() { echo "sam-local: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        say "needs root for: $*"
        exit 1
    fi
}

install_missing_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        say "missing ${missing[*]} and no apt-get here: install Docker yourself, then rerun"
        exit 1
    fi
    say "installing ${missing[*]} (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

daemon_answers() { docker info >/dev/null 2>&1; }

started_pid() {
    [ -f "$PID_FILE" ] || return 1
    local pid
    pid=$(cat "$PID_FILE")
    # A stale file from a reboot may name a pid now used by something else.
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
        echo "$pid"
        return 0
    fi
    return 1
}

start_daemon() {
    if ! command -v docker >/dev/null; then
        say "no docker client on PATH"
        exit 1
    fi
    say "starting dockerd (log: $LOG_FILE)"
    as_root mkdir -p "$STATE_DIR"
    # setsid: the daemon must outlive make and not receive its Ctrl-C.
    as_root setsid dockerd >>"$LOG_FILE" 2>&1 </dev/null &
    local launcher=$!
    local waited=0
    until daemon_answers; do
        if ! kill -0 "$launcher" 2>/dev/null && ! pgrep -x dockerd >/dev/null; then
            say "dockerd exited; last lines of $LOG_FILE:"
            tail -n 20 "$LOG_FILE" >&2
            exit 1
        fi
        if [ "$waited" -ge $((READY_TIMEOUT_SECONDS * 10)) ]; then
            say "dockerd did not answer within ${READY_TIMEOUT_SECONDS}s; see $LOG_FILE"
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    # dockerd writes its own pid file; keep our copy as the mark that we started it.
    as_root cp /var/run/docker.pid "$PID_FILE"
    say "dockerd $(cat "$PID_FILE") is up; 'make sam-local-stop' stops it"
}

case "${1:-}" in
ensure)
    install_missing_packages
    daemon_answers || start_daemon
    ;;
stop)
    if pid=$(started_pid); then
        say "stopping dockerd $pid (started by make sam-local)"
        as_root kill -TERM "$pid"
        for _ in $(seq 1 150); do
            [ -d "/proc/$pid" ] || break
            sleep 0.1
        done
        as_root rm -f "$PID_FILE"
    elif daemon_answers; then
        say "dockerd is running but was not started by make sam-local: left alone"
    else
        say "dockerd is not running"
    fi
    ;;
status)
    if pid=$(started_pid); then
        echo "dockerd $pid, started by make sam-local"
    elif daemon_answers; then
        echo "dockerd running, not started by make sam-local"
    else
        echo "dockerd not running"
    fi
    ;;
*)
    echo "usage: $0 ensure|stop|status" >&2
    exit 2
    ;;
esac
