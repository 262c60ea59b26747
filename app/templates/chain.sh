# ---- chaining: run, then resubmit until the deck is complete (docs/jobscripts.md) ------
# `trivhmc run --status` prints {"done": N, "total": M, ...} and exits 0 when the run is
# complete, 3 when more trajectories are needed; `trivhmc run` resumes from the last
# checkpoint by itself and stops cleanly (exit 0) after run.max_runtime seconds.
DECK={{deck}}
SCRIPT={{script}}
SETS=({{overrides}})
RUNTIME=({{runtime_set}})
CHAIN_INDEX=${TRIVHMC_CHAIN_INDEX:-1}
MAX_JOBS={{max_jobs}}

check_status() {
    local out rc
    out=$(trivhmc run --status "$DECK" "${SETS[@]}")
    rc=$?
    case $rc in
        0) COMPLETE=1 ;;
        3) COMPLETE=0 ;;
        *) echo "trivhmc run --status failed (exit $rc)" >&2; return 1 ;;
    esac
    DONE=$(printf '%s\n' "$out" | python3 -c 'import json, sys; print(json.load(sys.stdin)["done"])')
}

check_status || exit 1
if [ "$COMPLETE" = 1 ]; then
    echo "trivhmc: $DECK is complete ($DONE trajectories); nothing to do"
    exit 0
fi
BEFORE=$DONE
echo "trivhmc: job $CHAIN_INDEX of at most $MAX_JOBS, starting after trajectory $BEFORE"
launch
RC=$?
if [ "$RC" -ne 0 ]; then
    echo "trivhmc: run failed (exit $RC); not resubmitting" >&2
    exit "$RC"
fi
check_status || exit 1
if [ "$COMPLETE" = 1 ]; then
    echo "trivhmc: $DECK is complete ($DONE trajectories)"
    exit 0
fi
if [ "$DONE" -le "$BEFORE" ]; then
    echo "trivhmc: no progress in this job ($DONE trajectories); not resubmitting" >&2
    exit 1
fi
if [ "$CHAIN_INDEX" -ge "$MAX_JOBS" ]; then
    echo "trivhmc: reached $MAX_JOBS chained jobs at $DONE trajectories; not resubmitting" >&2
    exit 1
fi
echo "trivhmc: $DONE trajectories done; resubmitting"
resubmit
