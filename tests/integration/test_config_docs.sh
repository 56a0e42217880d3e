#!/usr/bin/env bash
# test_config_docs.sh - docs/config.md and the key table in src/lib/conf.c
# must not drift: every key in the table is described in the docs (as
# `key`), and the docs' example haven.conf uses only keys that exist.
set -eu
cd "$(dirname "$0")/../.."

table=src/lib/conf.c
doc=docs/config.md
bad=0

# The table's entries look like:    {"name", "default", "help"},
keys=$(sed -n '/conf_keys\[\] = {/,/^};/p' "$table" | sed -n 's/^[[:space:]]*{"\([a-z0-9_]*\)",.*/\1/p')
[ -n "$keys" ] || { echo "FAIL: no keys found in $table (did its layout change?)" >&2; exit 1; }

for k in $keys; do
    if ! grep -q "\`$k\`" "$doc"; then
        echo "FAIL: key '$k' ($table) is not described in $doc" >&2
        bad=1
    fi
done

# Keys set (or commented out) in the example block must be real keys.
example=$(sed -n '/^```conf$/,/^```$/p' "$doc")
[ -n "$example" ] || { echo "FAIL: no \`\`\`conf example in $doc" >&2; exit 1; }
for k in $(echo "$example" | sed -n 's/^[#[:space:]]*\([a-z0-9_]*\)[[:space:]]*=.*/\1/p'); do
    if ! echo "$keys" | grep -qx "$k"; then
        echo "FAIL: the example in $doc uses '$k', which is not a key in $table" >&2
        bad=1
    fi
done

[ "$bad" -eq 0 ] && echo "PASS: $(echo "$keys" | wc -l) keys documented"
exit "$bad"
