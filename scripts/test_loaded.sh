#!/usr/bin/env bash
# Run a command (`make test-loaded` passes the test suite) while CPU hogs compete for the cores,
# as on a shared CI runner or a busy laptop: the suite must pass like this, only slower.
#
#   scripts/test_loaded.sh [COMMAND...]        CPU_HOGS=2 by default; COMMAND defaults to
#                                              .venv/bin/pytest -q -n 4 --dist loadfile
#
# Each hog is a shell busy loop at normal priority (no dependency); they are stopped by their
# process ids when the command ends, however it ends.
set -uo pipefail

hogs=${CPU_HOGS:-2}
if [ "$#" -eq 0 ]; then
    set -- .venv/bin/pytest -q -n 4 --dist loadfile
fi

pids=()
stop_hogs() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    pids=()
}
trap stop_hogs EXIT
trap 'exit 130' INT TERM

for ((i = 0; i < hogs; i++)); do
    (while :; do :; done) &
    pids+=("$!")
done

echo "test_loaded: $hogs CPU hogs running (pids ${pids[*]}) on $(nproc) cores: $*"
started=$(date +%s)
"$@"
status=$?
elapsed=$(($(date +%s) - started))
stop_hogs
printf 'test_loaded: exit %d after %dm%02ds with %d CPU hogs\n' \
    "$status" $((elapsed / 60)) $((elapsed % 60)) "$hogs"
exit "$status"
