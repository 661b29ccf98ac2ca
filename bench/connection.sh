#!/usr/bin/env bash
# Measures the server's idle memory and the duration of a repository connection test against a
# local `git daemon`, compared with `git ls-remote` of the same URL (the same exchange done by git).
#
#   cargo build --release --bin ruleyard && bash bench/connection.sh [path/to/ruleyard]
set -euo pipefail
bin=${1:-target/release/ruleyard}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

git -c init.defaultBranch=main init -q "$work/src"
echo 'rule r { condition: true }' > "$work/src/r.yar"
git -C "$work/src" add -A
git -C "$work/src" -c user.name=b -c user.email=b@b commit -qm r
git clone -q --bare "$work/src" "$work/repo.git"
daemon_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$(git --exec-path)/git-daemon" --reuseaddr --export-all --listen=127.0.0.1 --port="$daemon_port" \
  --base-path="$work" "$work" &
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RULEYARD_LISTEN=127.0.0.1:$port RULEYARD_DATA_DIR=$work/data RULEYARD_ADMIN_PASSWORD=pw \
  RULEYARD_LOG=warn "$bin" serve > "$work/server.log" 2>&1 &
server=$!
until curl -sf "http://127.0.0.1:$port/readyz" > /dev/null; do sleep 0.1; done
sleep 2
echo "idle memory after start (VmRSS): $(awk '/VmRSS/ {print $2/1024 " MiB"}' /proc/$server/status)"
token=$(curl -s -X POST "http://127.0.0.1:$port/api-token-auth/" -d username=admin -d password=pw |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
url="git://127.0.0.1:$daemon_port/repo.git"
n=20
total=0
for i in $(seq 1 $n); do
  t=$(curl -s -o "$work/out.json" -w '%{time_total}' -X POST "http://127.0.0.1:$port/api/yara/repositories/" \
    -H "Authorization: Token $token" -H 'Content-Type: application/json' \
    -d "{\"url\": \"$url\", \"name\": \"r$i\"}")
  id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$work/out.json")
  curl -s -o /dev/null -X DELETE "http://127.0.0.1:$port/api/yara/repositories/$id/" -H "Authorization: Token $token"
  total=$(python3 -c "print($total + $t)")
done
start=$(date +%s.%N)
for i in $(seq 1 $n); do git ls-remote "$url" > /dev/null; done
end=$(date +%s.%N)
python3 - "$total" "$start" "$end" "$n" <<'PY'
import sys
api, start, end, n = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
ls = end - start
print(f"create with connection test: {api / n * 1000:.1f} ms per repository (HTTP round trip included)")
print(f"git ls-remote of the same URL: {ls / n * 1000:.1f} ms per call; ratio {api / ls:.2f}")
PY
echo "memory after $n creates (VmRSS): $(awk '/VmRSS/ {print $2/1024 " MiB"}' /proc/$server/status)"
