#!/usr/bin/env bash
# A real multi-node Ray cluster on this machine: one Linux network namespace per node, joined by a
# bridge, so every node has its own address and ports (its own HAProxy on :8000, its own replica
# ports) as separate hosts do. Root only (ip netns). Nothing is routed off the machine: the
# namespaces have no default route and this host forwards nothing; the host itself has an address
# on the bridge, so a client here reaches every node's http://<address>:8000.
#
#   scripts/local_cluster.sh up N [--redis]   N nodes (node 0 the head); prints `node <i> <address>`
#   scripts/local_cluster.sh kill I           every process of node I at once, as a lost host
#   scripts/local_cluster.sh start I          node I again (the head too: with --redis it recovers)
#   scripts/local_cluster.sh deploy FILE      deploy_app.py --address on the head; returns once live
#                                             (LOCAL_CLUSTER_DRIVER_NODE=I: on node I instead)
#   scripts/local_cluster.sh exec CMD...      CMD in the head's namespace with the cluster's settings
#   scripts/local_cluster.sh env              the client settings (token, addresses) as exports
#   scripts/local_cluster.sh down             removes everything `up` made, even after a failed run
#
# Ray's token auth is on (RAY_AUTH_MODE=token, a fresh token in the state directory). --redis
# keeps the head's GCS state in Debian's redis-server, in a namespace of its own, so a head that
# is killed and started again recovers the cluster's applications (GCS fault tolerance).
# Settings: LOCAL_CLUSTER_SUBNET (10.213.0, a /24), LOCAL_CLUSTER_HEAD_CPUS (0: the head runs Ray's
# control plane and a proxy, as on KubeRay), LOCAL_CLUSTER_WORKER_CPUS (3, logical: more than the
# cores, so replicas of a small machine fit across nodes), LOCAL_CLUSTER_RESOURCES_<i> (node i's
# custom Ray resources, JSON: '{"ingress": 1}'), LOCAL_CLUSTER_DIR (/tmp/rsp-lc).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PREFIX=rsplc
SUBNET=${LOCAL_CLUSTER_SUBNET:-10.213.0}
STATE=${LOCAL_CLUSTER_DIR:-/tmp/rsp-lc}
BRIDGE=$PREFIX-br
HOST_ADDR=$SUBNET.1
REDIS_ADDR=$SUBNET.5
GCS_PORT=6379
JOIN_TIMEOUT_S=${LOCAL_CLUSTER_JOIN_TIMEOUT_S:-180}
PY=$ROOT/.venv/bin/python

addr() { echo "$SUBNET.$((10 + $1))"; }
ns() { echo "$PREFIX-n$1"; }
die() { echo "local_cluster: $*" >&2; exit 1; }
nodes() { cat "$STATE/nodes" 2>/dev/null || die "no cluster (run: $0 up N)"; }

client_env() { # what a client of the cluster needs: the token, and where the head is
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$STATE/token RAY_USAGE_STATS_ENABLED=0
  export LOCAL_CLUSTER_HEAD=$(addr 0) LOCAL_CLUSTER_GCS=$(addr 0):$GCS_PORT
  export RAY_API_SERVER_ADDRESS=http://$(addr 0):8265 # the dashboard: jobs, state API
}

in_ns() { # run "$@" in namespace $1
  local name=$1
  shift
  ip netns exec "$name" "$@"
}

add_namespace() { # namespace $1 on the bridge with address $2 (veths rsplc-h<tag>, rsplc-e<tag>)
  local name=$1 address=$2 tag=$3
  ip netns add "$name"
  ip link add "$PREFIX-h$tag" type veth peer name "$PREFIX-e$tag" netns "$name"
  ip link set "$PREFIX-h$tag" master "$BRIDGE" up
  in_ns "$name" ip addr add "$address/24" dev "$PREFIX-e$tag"
  in_ns "$name" ip link set "$PREFIX-e$tag" up
  in_ns "$name" ip link set lo up
}

node_env() { # the environment Ray starts in on node $1: Serve's settings, HAProxy's own files
  local i=$1 hap=$STATE/h$i
  mkdir -p "$hap" && chmod 700 "$hap"
  client_env
  export RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=$hap/haproxy.cfg RAY_SERVE_HAPROXY_SOCKET_PATH=$hap/admin.sock
  export RAY_SERVE_HAPROXY_SERVER_STATE_BASE=$hap/ RAY_SERVE_HAPROXY_SERVER_STATE_FILE=$hap/server-state
  export RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH=$hap/metrics.sock HF_HUB_OFFLINE=1
  eval "$("$PY" -m common.serve_env)"
  # A worker's raylet waits this long for a head that is down (Ray's default is 60 s) before
  # it gives up: with GCS fault tolerance the head comes back and the workers keep serving.
  export RAY_gcs_rpc_server_reconnect_timeout_s=600
  if [ -e "$STATE/redis" ]; then
    export RAY_REDIS_ADDRESS=$REDIS_ADDR:6379 RAY_external_storage_namespace=rsp-local-cluster
  fi
}

start_node() {
  local i=$1 cpus
  [ "$(ip netns pids "$(ns "$i")" | wc -l)" -eq 0 ] || die "node $i is running"
  (
    node_env "$i"
    mkdir -p "$STATE/n$i"
    if [ "$i" -eq 0 ]; then
      # A killed head leaves its address in its temp dir's ray_current_cluster (`ray stop` would
      # remove it), and the workers' raylets, in the one process table the namespaces share,
      # still name it in --gcs-address while they wait for it: `ray start --head` takes the two
      # for a head already running here and refuses to start.
      rm -f "$STATE/n$i/ray_current_cluster"
      cpus=${LOCAL_CLUSTER_HEAD_CPUS:-0}
      set -- --head --port "$GCS_PORT" --dashboard-host "$(addr 0)" --include-dashboard true
    else
      cpus=${LOCAL_CLUSTER_WORKER_CPUS:-3}
      set -- --address "$(addr 0):$GCS_PORT"
    fi
    # Custom resources of node i (LOCAL_CLUSTER_RESOURCES_<i>, Ray's JSON): replicas that ask for
    # one land only on the nodes that offer it, as on a cluster with dedicated ingress nodes.
    local resources=LOCAL_CLUSTER_RESOURCES_$i
    [ -z "${!resources:-}" ] || set -- "$@" --resources "${!resources}"
    in_ns "$(ns "$i")" "$ROOT/.venv/bin/ray" start "$@" --node-ip-address "$(addr "$i")" \
      --num-cpus "$cpus" --temp-dir "$STATE/n$i" --disable-usage-stats \
      >"$STATE/n$i.log" 2>&1 || { tail -20 "$STATE/n$i.log" >&2; die "node $i did not start"; }
  )
  wait_alive "$i"
  echo "node $i $(addr "$i")"
}

alive_addresses() { # the addresses of the nodes the head reports alive (none while it is down)
  client_env
  in_ns "$(ns 0)" "$PY" - <<'EOF' 2>/dev/null || true
import os
from ray.util.state import list_nodes
# raise_on_missing_output: with a node dead, the ALIVE ones are fewer than the total it counts
for node in list_nodes(address=os.environ["RAY_API_SERVER_ADDRESS"], filters=[("state", "=", "ALIVE")], timeout=10, raise_on_missing_output=False):
    print(node.node_ip)
EOF
}

wait_alive() { # until node $1 is alive in the head's view
  local deadline=$((SECONDS + JOIN_TIMEOUT_S))
  until alive_addresses | grep -qx "$(addr "$1")"; do
    [ $SECONDS -lt $deadline ] || die "node $1 not alive after ${JOIN_TIMEOUT_S} s"
    sleep 1
  done
}

kill_node() { kill_node_ns "$(ns "$1")"; }

start_redis() {
  command -v redis-server >/dev/null || die "--redis needs Debian's redis-server (apt-get install -y redis-server)"
  add_namespace "$PREFIX-redis" "$REDIS_ADDR" r
  mkdir -p "$STATE/redis"
  in_ns "$PREFIX-redis" redis-server --bind "$REDIS_ADDR" --port 6379 --dir "$STATE/redis" \
    --save "" --appendonly yes --protected-mode no --daemonize yes --logfile "$STATE/redis.log"
  local deadline=$((SECONDS + 30))
  until in_ns "$PREFIX-redis" redis-cli -h "$REDIS_ADDR" ping 2>/dev/null | grep -q PONG; do
    [ $SECONDS -lt $deadline ] || die "redis-server did not start"
    sleep 0.2
  done
}

up() {
  local n=${1:?usage: up N [--redis]} i
  [ "$n" -ge 1 ] || die "N must be at least 1"
  [ "$(id -u)" -eq 0 ] || die "needs root (ip netns)"
  ! ip link show "$BRIDGE" >/dev/null 2>&1 || die "a cluster is up (run: $0 down)"
  ! ip -4 addr | grep -q " $SUBNET\." || die "$SUBNET.0/24 is in use here; set LOCAL_CLUSTER_SUBNET"
  trap 'down >/dev/null 2>&1' EXIT # a failed up leaves nothing
  mkdir -p "$STATE" && chmod 700 "$STATE" && echo "$n" >"$STATE/nodes"
  "$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$STATE/token" && chmod 600 "$STATE/token"
  ip link add "$BRIDGE" type bridge
  ip addr add "$HOST_ADDR/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for ((i = 0; i < n; i++)); do add_namespace "$(ns "$i")" "$(addr "$i")" "$i"; done
  [ "${2:-}" != --redis ] || start_redis
  for ((i = 0; i < n; i++)); do start_node "$i"; done
  echo "host $HOST_ADDR" # this machine on the bridge: where a service the nodes share may listen
  trap - EXIT
}

down() {
  local name
  for name in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-" || true); do
    kill_node_ns "$name"
    ip netns delete "$name"
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  rm -rf "$STATE"
}

kill_node_ns() { # SIGKILL to every process in namespace $1 at once, until none is left
  local pids deadline=$((SECONDS + 30)) shared=""
  while pids=$(ip netns pids "$1" 2>/dev/null) && [ -n "$pids" ]; do
    shared+=" $(shared_memory_of $pids)"
    kill -9 $pids 2>/dev/null || true
    [ $SECONDS -lt $deadline ] || die "processes of $1 survive SIGKILL: $pids"
    sleep 0.1
  done
  # What a killed process cannot unlink itself (vLLM's engine queues, psm_*: 160 MiB each), as the
  # host's reboot would clear it; only the files these processes had mapped.
  rm -f $shared
}

shared_memory_of() { # the /dev/shm files that processes "$@" have mapped
  local pid
  for pid in "$@"; do
    sed -n 's|^.* \(/dev/shm/[^ ]*\)$|\1|p' "/proc/$pid/maps" 2>/dev/null || true
  done | sort -u
}

deploy() {
  local file=${1:?usage: deploy FILE} copy
  copy=$STATE/deploy/$(basename "$file")
  mkdir -p "$STATE/deploy"
  # A proxy on every node (the default config has HeadOnly), each on its own address, port 8000.
  "$PY" - "$file" "$copy" <<'EOF'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
config["http_options"] = {**(config.get("http_options") or {}), "host": "0.0.0.0", "port": 8000}
config["proxy_location"] = "EveryNode"
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
EOF
  shift
  local node=${LOCAL_CLUSTER_DRIVER_NODE:-0}
  # The namespaces share one process table: a driver picks its node among the raylets it sees
  # there, preferring the head's, unless told its node's address.
  run_in_node "$node" "$PY" deploy_app.py --config "$copy" --address "$(addr 0):$GCS_PORT" \
    --node-ip-address "$(addr "$node")" "$@"
}

run_in_node() { # "${@:2}" in node $1's namespace with the cluster's settings
  client_env
  export HF_HUB_OFFLINE=1
  in_ns "$(ns "$1")" "${@:2}"
}

run_in_head() { run_in_node 0 "$@"; } # as a driver on the head

command=${1:-}
shift || true
case $command in
  up) up "$@" ;;
  down) down ;;
  kill) nodes >/dev/null && kill_node "${1:?usage: kill I}" ;;
  start) nodes >/dev/null && start_node "${1:?usage: start I}" ;;
  deploy) nodes >/dev/null && deploy "$@" ;;
  exec) nodes >/dev/null && run_in_head "$@" ;;
  env) client_env && env | grep -E '^(RAY_AUTH_MODE|RAY_AUTH_TOKEN_PATH|LOCAL_CLUSTER_HEAD|LOCAL_CLUSTER_GCS|RAY_API_SERVER_ADDRESS)=' | sed 's/^/export /' ;;
  *) sed -n 2,21p "$0" | sed 's/^# \{0,1\}//' >&2 && exit 2 ;;
esac
