#!/usr/bin/env bash
# Start a real, offline IPFS daemon (js-ipfs, kubo RPC API) for the tests.
#   tests/ipfsd/start.sh REPO_DIR API_PORT
# Inits a repo in REPO_DIR (if it has none), serves the RPC API on 127.0.0.1:API_PORT with no
# gateway, no swarm, no bootstrap peers, starts the daemon in the background (log in
# REPO_DIR/daemon.log, pid in REPO_DIR/daemon.pid) and returns once /api/v0/id answers.
# Needs node >= 20 and `npm ci` in this folder.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="${1:?usage: start.sh REPO_DIR API_PORT}"
port="${2:?usage: start.sh REPO_DIR API_PORT}"
cli="$here/node_modules/ipfs/src/cli.js"
[[ -f "$cli" ]] || { echo "start.sh: $cli missing; run npm ci in $here" >&2; exit 2; }
export IPFS_PATH="$repo"
jsipfs() { node --require "$here/polyfill.cjs" "$cli" "$@"; }

if [[ ! -f "$repo/config" ]]; then
  jsipfs init --empty-repo >"$repo.init.log" 2>&1 || { cat "$repo.init.log" >&2; exit 1; }
fi
node - "$repo/config" "$port" <<'JS'
const fs = require('fs')
const [file, port] = process.argv.slice(2)
const config = JSON.parse(fs.readFileSync(file, 'utf8'))
config.Addresses = { ...config.Addresses, API: `/ip4/127.0.0.1/tcp/${port}`, Gateway: [], Swarm: [], Announce: [], NoAnnounce: [], Delegates: [] }
delete config.Addresses.RPC // no gRPC server
config.Bootstrap = []
config.Discovery = { MDNS: { Enabled: false }, webRTCStar: { Enabled: false } }
fs.writeFileSync(file, JSON.stringify(config, null, 2))
JS

# node itself in the background (not a function), so $! is the daemon's own pid
node --require "$here/polyfill.cjs" "$cli" daemon --offline >"$repo/daemon.log" 2>&1 &
pid=$!
echo "$pid" >"$repo/daemon.pid"
for _ in $(seq 1 600); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "start.sh: the daemon exited:" >&2; cat "$repo/daemon.log" >&2; exit 1
  fi
  if node -e "fetch('http://127.0.0.1:$port/api/v0/id', {method: 'POST'}).then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))" 2>/dev/null; then
    echo "$pid"
    exit 0
  fi
  sleep 0.1
done
echo "start.sh: the daemon did not answer on 127.0.0.1:$port within 60 s" >&2
kill "$pid" 2>/dev/null || true
exit 1
