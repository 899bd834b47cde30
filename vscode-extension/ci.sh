#!/usr/bin/env bash
# Build, test and package the VS Code extension, as CI does. Prints the .vsix path last.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

npm ci --no-audit --no-fund
npm run build
npm test
rm -f ./*.vsix
npm run package
vsix="$(ls -1 "$PWD"/*.vsix)"
echo "vsix: $vsix ($(wc -c < "$vsix") bytes)"
