#!/usr/bin/env bash
# Start a Dask cluster over several machines with ssh: the scheduler here, one worker per listed host.
#
#   pipelines/start_workers.sh host1 host2 host3            # prints the scheduler address, then waits
#   geoembed run -c CONFIG --scheduler tcp://$(hostname -f):8786     # in another shell
#
# Each host needs the same Python environment (the same geoembed and pinned packages) at the same path
# (VENV, default: this checkout's .venv) and the run's files at the same paths. Workers run one process
# with THREADS threads each (default 2). Ctrl-C stops the scheduler; the workers then exit by themselves.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: start_workers.sh HOST [HOST ...]" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}
port=${PORT:-8786}
threads=${THREADS:-2}
address="tcp://$(hostname -f):$port"
"$venv/bin/dask" scheduler --port "$port" --no-dashboard &
scheduler=$!
trap 'kill $scheduler 2>/dev/null' EXIT
sleep 3
for host in "$@"; do
  ssh -n "$host" "$venv/bin/dask worker $address --nworkers 1 --nthreads $threads --death-timeout 60" \
    > "worker-$host.log" 2>&1 &
done
echo "$address"
wait "$scheduler"
