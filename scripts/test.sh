#!/usr/bin/env bash
# Run the whole test suite: set-up, the export check, every notebook
# (nbdev-test), pytest over tests/, and the offline docs build.
#
# Usage: bash scripts/test.sh [--run-slow] [extra pytest arguments]
# --run-slow also runs notebook cells flagged `#| slow` and pytest tests
# marked slow (large downloads or several minutes each).
set -uo pipefail
cd "$(dirname "$0")/.."

run_slow=0
pytest_args=()
for argument in "$@"; do
  if [[ $argument == --run-slow ]]; then run_slow=1; else pytest_args+=("$argument"); fi
done

# The test command also sets up the browser tests (Debian chromium, node, playwright-core).
export RC_NBKIT_BROWSER_TESTS=${RC_NBKIT_BROWSER_TESTS:-1}
bash scripts/setup.sh || { echo "test: set-up failed"; exit 1; }
# shellcheck disable=SC1091
source .venv/bin/activate

# Keep Jupyter, IPython and the kit's caches out of the home folder.
scratch=$PWD/.cache
export JUPYTER_CONFIG_DIR=$scratch/jupyter/config JUPYTER_DATA_DIR=$scratch/jupyter/data
export JUPYTER_RUNTIME_DIR=$scratch/jupyter/runtime IPYTHONDIR=$scratch/ipython
export RC_NBKIT_CACHE=${RC_NBKIT_CACHE:-$scratch/rc_nbkit} MPLCONFIGDIR=$scratch/matplotlib
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
export PYTHONHASHSEED=0

failed_steps=()
start=$(date +%s)

echo "== notebooks (nbdev-test)"
notebook_flags=""
[[ $run_slow == 1 ]] && notebook_flags="slow"
notebook_count=$(find nbs -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' -not -name '_*' | wc -l)
# The notebooks run from a copy at the same depth as nbs/ (relative paths keep
# working) so that their outputs can be saved for the docs without touching nbs/.
executed=$PWD/_executed_nbs
rm -rf "$executed" && cp -r nbs "$executed"
if nbdev-test "$executed" --flags "$notebook_flags" --n-workers 2 --timing --save; then
  notebooks_passed=$notebook_count notebooks_failed=0
else
  notebooks_passed=0 notebooks_failed=$notebook_count
  failed_steps+=("nbdev-test")
fi

pytest_flags=(-q -p no:cacheprovider --durations=15)
[[ $run_slow == 1 ]] && pytest_flags+=(--run-slow)
echo "== docs"
if [[ $notebooks_failed -gt 0 ]]; then
  echo "docs: skipped because a notebook failed"
  failed_steps+=("docs")
elif ! RC_NBKIT_EXECUTED_NBS=$executed bash scripts/docs.sh; then
  failed_steps+=("docs")
fi

# pytest runs after the docs build, so the browser test of the site checks this build.
echo "== pytest"
pytest "${pytest_flags[@]}" "${pytest_args[@]}" 2>&1 | tee "$scratch/pytest.log"
pytest_status=${PIPESTATUS[0]}
# Exit code 5 means that no test was collected, which is not a failure here.
if [[ $pytest_status -ne 0 && $pytest_status -ne 5 ]]; then failed_steps+=("pytest"); fi

summary=$(grep -E '^[=]* *[0-9]+ (passed|failed|error|errors|skipped)|^[=]* *no tests ran' "$scratch/pytest.log" | tail -n 1)
count() { echo "$summary" | grep -oE "[0-9]+ $1" | grep -oE '[0-9]+' || echo 0; }
passed=$(( $(count passed) + notebooks_passed ))
failed=$(( $(count failed) + $(count error) + notebooks_failed ))
skipped=$(count skipped)

echo
echo "notebooks: $notebooks_passed of $notebook_count passed; pytest: ${summary:-no summary}"
echo "time: $(( $(date +%s) - start )) s"
if [[ ${#failed_steps[@]} -gt 0 ]]; then
  echo "FAILED steps: ${failed_steps[*]}"
  [[ $failed -eq 0 ]] && failed=1
fi
echo "rc_nbkit: $passed passed, $failed failed, $skipped skipped"
[[ ${#failed_steps[@]} -eq 0 ]]
