#!/usr/bin/env bash
# A Docker engine for fedhn's Docker demo and test, on machines where none runs (as root).
#
#   scripts/docker-engine.sh start   start dockerd in the background; prints DOCKER_HOST=... to export
#                                    and, when it started one, FEDHN_DOCKERD_PID=<its PID>; prints
#                                    nothing when the environment's engine answers (docker info)
#   scripts/docker-engine.sh stop    stop the dockerd that `start` started, by its PID, and nothing else
#
# The engine has its own socket and directories, so that it cannot clash with another Docker on the
# machine: FEDHN_DOCKER_ROOT (default /var/lib/fedhn-docker: images and build cache, kept between
# runs, so the image builds once) and /run/fedhn-docker (socket, PID file, log dockerd.log).
# `start` with the engine already answering does nothing; dockerd (Debian's docker.io) is installed
# with apt-get when missing. `stop` also removes the default bridge docker0 that the engine made.
set -euo pipefail

run_dir=/run/fedhn-docker
socket=unix://$run_dir/docker.sock
pid_file=$run_dir/started.pid
data_root=${FEDHN_DOCKER_ROOT:-/var/lib/fedhn-docker}

answers() { docker -H "$socket" info >/dev/null 2>&1; }

start() {
    if docker info >/dev/null 2>&1; then
        echo "using the Docker engine that answers (docker info)" >&2
        return
    fi
    if answers; then
        echo "DOCKER_HOST=$socket"
        return
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "starting dockerd needs root; or start a Docker engine yourself and set DOCKER_HOST" >&2
        exit 1
    fi
    if ! command -v dockerd >/dev/null; then
        apt-get install -y --no-install-recommends docker.io >&2
    fi
    mkdir -p "$run_dir"
    setsid dockerd --host "$socket" --data-root "$data_root" --exec-root "$run_dir/exec" \
        --pidfile "$run_dir/dockerd.pid" >"$run_dir/dockerd.log" 2>&1 </dev/null &
    echo $! >"$pid_file"
    for _ in $(seq 120); do
        if answers; then
            echo "DOCKER_HOST=$socket"
            echo "FEDHN_DOCKERD_PID=$(cat "$pid_file")"
            return
        fi
        if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
            rm -f "$pid_file"
            echo "dockerd exited at startup; see $run_dir/dockerd.log:" >&2
            tail -5 "$run_dir/dockerd.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "dockerd did not answer within 60 s; see $run_dir/dockerd.log (stop it: $0 stop)" >&2
    exit 1
}

stop() {
    if [[ ! -f $pid_file ]]; then
        echo "no dockerd started by $0"
        return
    fi
    pid=$(cat "$pid_file")
    if kill -TERM "$pid" 2>/dev/null; then
        # dockerd stops its containers (up to 15 s each, in parallel) and its containerd first.
        for _ in $(seq 120); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "dockerd (pid $pid) did not stop within 60 s: killing it" >&2
            kill -KILL "$pid"
        fi
    fi
    rm -f "$pid_file"
    if ip link show docker0 >/dev/null 2>&1; then
        ip link delete docker0
    fi
    echo "stopped dockerd (pid $pid)"
}

case ${1:-} in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
