#!/usr/bin/env bash
# Screenshots a Berth page as on-call sees it, with Debian's headless Chromium.
# Usage: tests/screenshot.sh [URL] [OUT.png]
#   URL defaults to hostd's status page of `scheduler dev` (http://127.0.0.1:7701/);
#   the scheduler's fleet page is http://127.0.0.1:7700/.
# Installs chromium (apt) if it is missing. Only the given URL is loaded: the pages
# have no scripts and no external resources.
set -euo pipefail
url="${1:-http://127.0.0.1:7701/}"
out="${2:-berth-page.png}"
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
timeout 60 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$profile" --window-size=1400,1600 --screenshot="$out" "$url" 2>/dev/null
echo "wrote $out ($url)"
