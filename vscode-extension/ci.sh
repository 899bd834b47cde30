#!/usr/bin/env bash
# Build, test and package the VS Code extension, as CI does. Prints the .vsix path, then the tests' count line last.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT

npm ci --no-audit --no-fund
npm run build
npm test 2>&1 | tee "$test_log"
rm -f ./*.vsix
npm run package
vsix="$(ls -1 "$PWD"/*.vsix)"
echo "vsix: $vsix ($(wc -c < "$vsix") bytes)"
grep -E '^[0-9]+ passed, [0-9]+ failed' "$test_log" | tail -n 1
