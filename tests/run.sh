#!/usr/bin/env bash
# Runs each test given (a unit-test binary or an integration script), keeps
# its output in build/test-logs/, and ends with the line "N passed, N failed".
# Exit status is non-zero when anything failed.
set -u
cd "$(dirname "$0")/.."
mkdir -p build/test-logs
passed=0 failed=0 failed_names=()
for t in "$@"; do
    name=$(echo "$t" | sed 's|^build/||; s|/|_|g')
    log="build/test-logs/$name.log"
    start=$(date +%s)
    if "./$t" >"$log" 2>&1 || { [ "${t#/}" != "$t" ] && "$t" >"$log" 2>&1; }; then
        passed=$((passed + 1))
        printf 'PASS %-50s %4ss\n' "$t" "$(( $(date +%s) - start ))"
    else
        failed=$((failed + 1))
        failed_names+=("$t")
        printf 'FAIL %-50s %4ss  (log: %s)\n' "$t" "$(( $(date +%s) - start ))" "$log"
        tail -n 30 "$log" | sed 's/^/    | /'
    fi
done
echo
[ ${#failed_names[@]} -gt 0 ] && printf 'failed: %s\n' "${failed_names[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
