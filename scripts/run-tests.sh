#!/usr/bin/env bash
# `make test`: the suite as two serial pytest runs side by side on a 2-core machine.
#
# Much of the suite waits on other processes (sshd, Chromium, ranks, ansible), so two runs
# finish far sooner than one. The files that drive a real model hard run in one of them, one
# after another: two such tests at once on two cores ran a 50 s SmolLM2 batch for 15 minutes.
# Each process gets one OpenBLAS thread (its threads spin while they wait). The model-heavy
# run's output is printed when both are done; the other streams as it goes.
#
#   TEST_JOBS=1 scripts/run-tests.sh     the whole suite in one process
#   extra arguments go to both pytest runs
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# --durations: every log says where the 15 minutes went (the suite's budget on a fresh machine)
PYTEST=("$PY" -m pytest -q -p no:cacheprovider --durations=15)

if [[ "${TEST_JOBS:-2}" == 1 ]]; then
    exec "${PYTEST[@]}" "$@"
fi

# Every file that serves SmolLM2 (the session's smol_server) is here: the other run then never
# loads it, and its half of the machine goes to the work that waits on other processes. One file
# that loads no model (test_ansible_pair.py, 34 s) is here too, so the two runs end together:
# on 2026-12-04's clean clone the other run took 694 s and this one 599 s.
HEAVY=(tests/test_admission_server.py tests/test_ansible_pair.py tests/test_constrained.py
       tests/test_demo.py tests/test_distributed.py tests/test_gguf.py tests/test_isolation.py
       tests/test_qwen.py tests/test_run_on_defaults.py tests/test_schemas.py
       tests/test_smollm2.py tests/test_speculative.py tests/test_structured.py)
IGNORE=()
for f in "${HEAVY[@]}"; do IGNORE+=(--ignore "$f"); done

export OPENBLAS_NUM_THREADS=1
log=$(mktemp)
warm_log=$(mktemp)
trap 'rm -f "$log" "$warm_log"' EXIT
start=$SECONDS
# Qwen's install (a minute on a fresh checkout) runs beside both; test_qwen.py waits for it.
"$PY" tests/warm_models.py >"$warm_log" 2>&1 &
warm=$!
"${PYTEST[@]}" "${HEAVY[@]}" "$@" >"$log" 2>&1 &
heavy=$!
"${PYTEST[@]}" "${IGNORE[@]}" "$@"
rest_rc=$?
wait "$heavy"
heavy_rc=$?
wait "$warm"
echo
echo "== the model-heavy files (${HEAVY[*]#tests/}):"
cat "$log"
echo "== beside them: $(tail -n 1 "$warm_log")"
echo "== make test: $((SECONDS - start)) s; rest exit $rest_rc, model-heavy exit $heavy_rc"
(( rest_rc == 0 && heavy_rc == 0 ))
