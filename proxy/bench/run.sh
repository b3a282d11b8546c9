#!/usr/bin/env bash
# Proxy overhead, side by side: the credential-proxy vs Debian's nginx doing the
# same header injection (Authorization: Bearer <token>, Host rewrite) to the same
# local HTTPS upstream, measured by the same load generator in the same run.
#
#   proxy/bench/run.sh [seconds per run, default 10] [connections, default 16]
#   BERTH_PROXY_PROFILE=image proxy/bench/run.sh   # the build the images carry
#
# Needs: nginx (nginx-light is enough: proxy and ssl modules), wrk, openssl.
# Everything listens on 127.0.0.1. Prints a Markdown table for docs/BENCHMARKS.md.
#
# Layout (each server pinned to one core where two exist, like a sidecar):
#   wrk ──▶ nginx :18081 ─┐
#   wrk ──▶ proxy :18082 ─┼─TLS─▶ upstream nginx :18443 (return 200)
#   wrk ──TLS────────────▶┘       (the "direct" baseline for added latency)
set -euo pipefail

DURATION=${1:-10}
CONNS=${2:-16}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/berth-proxy-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in nginx wrk openssl; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
NGINX=$(command -v nginx)

PROFILE=${BERTH_PROXY_PROFILE:-release}
echo "building the proxy ($PROFILE profile)…" >&2
(cd "$ROOT" && cargo build --profile "$PROFILE" -q -p berth-proxy --bin credential-proxy)
PROXY_BIN=$TARGET/$PROFILE/credential-proxy

# --- a CA and the upstream's certificate ---
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench CA" -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=upstream.bench.test" -keyout up.key -out up.csr 2>/dev/null
printf 'subjectAltName=DNS:upstream.bench.test,IP:127.0.0.1\n' > ext.cnf
openssl x509 -req -in up.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile ext.cnf -out up.pem 2>/dev/null
TOKEN=bench-token-$(openssl rand -hex 12)
printf '%s' "$TOKEN" > token

CPU_SERVER="" ; CPU_OTHER=""
if [ "$(nproc)" -ge 2 ]; then CPU_SERVER="taskset -c 0"; CPU_OTHER="taskset -c 1"; fi

# --- upstream: nginx answering 200 over TLS ---
mkdir -p up peer
cat > up/nginx.conf <<EOF
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/up; proxy_temp_path $WORK/up; fastcgi_temp_path $WORK/up;
    uwsgi_temp_path $WORK/up; scgi_temp_path $WORK/up;
    server {
        listen 127.0.0.1:18443 ssl;
        ssl_certificate $WORK/up.pem;
        ssl_certificate_key $WORK/up.key;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
$CPU_OTHER "$NGINX" -c "$WORK/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

# --- the peer: nginx injecting the same header ---
cat > peer/nginx.conf <<EOF
worker_processes 1;
pid $WORK/peer/nginx.pid;
error_log $WORK/peer/error.log warn;
events { worker_connections 4096; }
http {
    access_log $WORK/peer/access.log;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/peer; proxy_temp_path $WORK/peer; fastcgi_temp_path $WORK/peer;
    uwsgi_temp_path $WORK/peer; scgi_temp_path $WORK/peer;
    upstream up { server 127.0.0.1:18443; keepalive 32; }
    server {
        listen 127.0.0.1:18081;
        location /mcp/ {
            proxy_pass https://up/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host upstream.bench.test;
            proxy_set_header Authorization "Bearer $TOKEN";
            proxy_set_header Cookie "";
            proxy_set_header Proxy-Authorization "";
            proxy_ssl_server_name on;
            proxy_ssl_name upstream.bench.test;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $WORK/ca.pem;
            proxy_ssl_session_reuse on;
        }
    }
}
EOF
$CPU_SERVER "$NGINX" -c "$WORK/peer/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

# --- the credential-proxy, one thread, same route ---
cat > proxy.toml <<EOF
listen = "127.0.0.1:18082"
dns = "hosts-only"
workspace_id = "ws-bench"
[hosts]
"upstream.bench.test" = ["127.0.0.1"]
[tls]
roots = "none"
extra_ca_files = ["$WORK/ca.pem"]
[secrets.token]
file = "$WORK/token"
[[routes]]
name = "mcp"
prefix = "/mcp/"
upstream = "https://upstream.bench.test:18443"
auth = "bearer"
secret = "token"
allow_private_upstream = ["127.0.0.1/32"]
EOF
BERTH_LOG=${BERTH_LOG:-info} $CPU_SERVER "$PROXY_BIN" --config proxy.toml 2> proxy.log &
PROXY_PID=$!
PIDS+=($PROXY_PID)

# Wait for the listeners without connecting to them, so that the idle figure is
# the proxy before its first connection (a warm slot's proxy).
for port in 18443 18081 18082; do
    for _ in $(seq 100); do
        if ss -ltnH "sport = :$port" | grep -q .; then break; fi
        sleep 0.05
    done
done
sleep 1
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
IDLE_RSS=$(rss_kib "$PROXY_PID")

# Both proxies must actually inject the token (checked through the upstream's
# answer and the absence of errors).
for url in http://127.0.0.1:18081/mcp/x http://127.0.0.1:18082/mcp/x; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url" || echo 000)
    [ "$code" = 200 ] || { echo "$url answered $code" >&2; cat proxy.log peer/error.log >&2; exit 1; }
done

run_wrk() { # name url
    $CPU_OTHER wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$2" > "wrk-$1-$3.txt"
}
# wrk prints "50%  123.00us"; convert to microseconds.
pct() { # file percentile
    awk -v p="$2%" '$1 == p {
        v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        if (u == "ms") v *= 1000; else if (u == "s") v *= 1000000;
        print v }' "$1"
}
rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }

echo "warming up…" >&2
for url in https://127.0.0.1:18443/x http://127.0.0.1:18081/mcp/x http://127.0.0.1:18082/mcp/x; do
    $CPU_OTHER wrk -t1 -c"$CONNS" -d2s "$url" > /dev/null
done
# Two rounds, alternating order, so drift on a shared machine hits both.
for round in 1 2; do
    echo "round $round…" >&2
    if [ "$round" = 1 ]; then order="direct nginx proxy"; else order="proxy nginx direct"; fi
    for name in $order; do
        case $name in
            direct) run_wrk direct https://127.0.0.1:18443/x "$round" ;;
            nginx) run_wrk nginx http://127.0.0.1:18081/mcp/x "$round" ;;
            proxy) run_wrk proxy http://127.0.0.1:18082/mcp/x "$round" ;;
        esac
    done
done
LOADED_RSS=$(rss_kib "$PROXY_PID")

avg() { echo "$1 $2" | awk '{printf "%.1f", ($1 + $2) / 2}'; }
declare -A RPS P50 P99
for name in direct nginx proxy; do
    RPS[$name]=$(avg "$(rps wrk-$name-1.txt)" "$(rps wrk-$name-2.txt)")
    P50[$name]=$(avg "$(pct wrk-$name-1.txt 50)" "$(pct wrk-$name-2.txt 50)")
    P99[$name]=$(avg "$(pct wrk-$name-1.txt 99)" "$(pct wrk-$name-2.txt 99)")
done
added() { echo "$1 $2" | awk '{printf "%.0f", $1 - $2}'; }
RATIO=$(echo "${RPS[proxy]} ${RPS[nginx]}" | awk '{printf "%.2f", $1 / $2}')
ERRORS=$(grep -h -E 'Non-2xx|Socket errors' wrk-*.txt || true)

cat <<EOF

Machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), load average before: $(cut -d' ' -f1-3 /proc/loadavg)
Command: BERTH_PROXY_PROFILE=$PROFILE proxy/bench/run.sh $DURATION $CONNS   (wrk -t1 -c$CONNS -d${DURATION}s --latency, 2 rounds, averaged)

| path | req/s | p50 µs | p99 µs | added p50 µs | added p99 µs |
| --- | ---: | ---: | ---: | ---: | ---: |
| direct to upstream (TLS) | ${RPS[direct]} | ${P50[direct]} | ${P99[direct]} | — | — |
| nginx, proxy_set_header | ${RPS[nginx]} | ${P50[nginx]} | ${P99[nginx]} | $(added "${P50[nginx]}" "${P50[direct]}") | $(added "${P99[nginx]}" "${P99[direct]}") |
| credential-proxy (1 thread) | ${RPS[proxy]} | ${P50[proxy]} | ${P99[proxy]} | $(added "${P50[proxy]}" "${P50[direct]}") | $(added "${P99[proxy]}" "${P99[direct]}") |

credential-proxy / nginx req/s: **${RATIO}×**
credential-proxy RSS: idle (before its first connection) $((IDLE_RSS)) KiB, after load $((LOADED_RSS)) KiB
${ERRORS:+wrk reported: $ERRORS}
EOF
