#!/usr/bin/env bash
# Host plumbing of the real test nodes of one local cluster, and its removal.
#
#   node-net.sh up   STATE   create the network of the nodes (netns, veth, routes, guard rules)
#   node-net.sh down STATE   remove everything the nodes left on the host (idempotent)
#   node-net.sh reap STATE   print "reaping", wait until stdin closes (the test process ended,
#                            however it ended), then `down`
#
# STATE is a file of shell variables written by tests/support (node/mod.rs):
#   SLOT         the cluster's slot (0..59): node i of the slot has index IDX = SLOT*4 + i
#   NODES        the number of nodes
#   CLUSTER_DIR  the cluster's directory (node dirs are $CLUSTER_DIR/nodes/n<i>)
#   UPLINKS      the host's interfaces toward the outside (guard rules drop forwarding through them)
#
# Node i: network namespace ncdr-s<SLOT>-n<i>, veth ncdr<IDX>h (host, 10.200.<IDX>.1/24) <->
# ncdr<IDX>n (node, 10.200.<IDX>.2/24), pods 10.244.<IDX>.0/24 routed via the node IP, cgroup
# parent /ncdr-s<SLOT>-n<i> in every cgroup v1 hierarchy. The apiserver listens on 10.201.<SLOT>.1,
# an address on the host's loopback device that pods reach through their node's default route.
#
# Traffic never leaves the machine: forwarding is only switched on after guard rules that drop
# anything forwarded in or out through an uplink, and switched back off before the last guard
# rule (of any slot) goes.
set -u
command=${1:?usage: node-net.sh up|down|reap STATE}
state=${2:?usage: node-net.sh up|down|reap STATE}
# shellcheck disable=SC1090
source "$state"
: "${SLOT:?} ${NODES:?} ${CLUSTER_DIR:?}"
UPLINKS=${UPLINKS:-}

run_dir=/run/nats-cdr
mkdir -p "$run_dir"
guard_tag="nats-cdr-guard s$SLOT"

log() { printf '[node-net %s s%s] %s\n' "$(date +%H:%M:%S)" "$SLOT" "$*" >&2; }

# Serialises the guard rules and the forwarding switch between clusters (and their reapers).
net_lock() { exec 8>"$run_dir/net.lock" && flock 8; }
net_unlock() { flock -u 8; exec 8>&-; }

idx() { echo $((SLOT * 4 + $1)); }
netns() { echo "ncdr-s$SLOT-n$1"; }
cgroup_name() { echo "ncdr-s$SLOT-n$1"; }
# The cgroup v1 hierarchies (where node cgroup parents are made), and with `all` also the v2
# "unified" one of a hybrid host, where runc and the kubelet make cgroups of their own.
cgroup_hierarchies() {
  local h
  for h in /sys/fs/cgroup/*; do
    [ -d "$h" ] || continue
    [ "$(basename "$h")" = unified ] && [ "${1:-}" != all ] && continue
    echo "$h"
  done
}

guard_up() {
  local dev dir
  net_lock
  for dev in $UPLINKS; do
    for dir in -i -o; do
      iptables -C FORWARD "$dir" "$dev" -j DROP -m comment --comment "$guard_tag" 2>/dev/null ||
        iptables -I FORWARD "$dir" "$dev" -j DROP -m comment --comment "$guard_tag" ||
        { net_unlock; return 1; }
    done
  done
  [ -f "$run_dir/ip_forward.orig" ] || cat /proc/sys/net/ipv4/ip_forward > "$run_dir/ip_forward.orig"
  echo 1 > /proc/sys/net/ipv4/ip_forward
  net_unlock
}

guard_down() {
  local total mine line
  net_lock
  total=$(iptables -S FORWARD 2>/dev/null | grep -c -F -- '--comment "nats-cdr-guard s')
  mine=$(iptables -S FORWARD 2>/dev/null | grep -c -F -- "--comment \"$guard_tag\"")
  if [ "$((total - mine))" -le 0 ] && [ -f "$run_dir/ip_forward.orig" ]; then
    # Forwarding goes back off before the last guard rule goes.
    cat "$run_dir/ip_forward.orig" > /proc/sys/net/ipv4/ip_forward
    rm -f "$run_dir/ip_forward.orig"
  fi
  # `iptables -S` prints each rule shell-quoted as it was added: replay it with -D.
  while read -r line; do
    eval "iptables ${line/#-A/-D}"
  done < <(iptables -S FORWARD 2>/dev/null | grep -F -- "--comment \"$guard_tag\"")
  net_unlock
}

up() {
  local i n ip_host ip_node ns
  # Leftovers of an earlier holder of this slot whose reaper was killed.
  if [ -f "$run_dir/slot-$SLOT.env" ]; then
    (down_from "$run_dir/slot-$SLOT.env") || true
  fi
  cp "$state" "$run_dir/slot-$SLOT.env"
  [ -n "$UPLINKS" ] || { log "no uplink named: refusing to enable forwarding without guard rules"; return 1; }
  guard_up || { log "cannot install the guard rules"; return 1; }
  ip addr replace "10.201.$SLOT.1/32" dev lo || return 1
  for ((i = 0; i < NODES; i++)); do
    n=$(idx "$i"); ns=$(netns "$i")
    ip_host=10.200.$n.1; ip_node=10.200.$n.2
    ip netns add "$ns" || return 1
    ip link add "ncdr${n}h" type veth peer name "ncdr${n}n" || return 1
    ip link set "ncdr${n}n" netns "$ns" || return 1
    ip addr add "$ip_host/24" dev "ncdr${n}h" || return 1
    ip link set "ncdr${n}h" up || return 1
    ip -n "$ns" addr add "$ip_node/24" dev "ncdr${n}n" || return 1
    ip -n "$ns" link set lo up || return 1
    ip -n "$ns" link set "ncdr${n}n" up || return 1
    ip -n "$ns" route add default via "$ip_host" || return 1
    ip netns exec "$ns" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward' || return 1
    ip route replace "10.244.$n.0/24" via "$ip_node" || return 1
    local h
    for h in $(cgroup_hierarchies); do
      mkdir -p "$h/$(cgroup_name "$i")"
      if [ -f "$h/cpuset.cpus" ]; then
        cat "$h/cpuset.cpus" > "$h/$(cgroup_name "$i")/cpuset.cpus"
        cat "$h/cpuset.mems" > "$h/$(cgroup_name "$i")/cpuset.mems"
      fi
    done
  done
  log "up: $NODES node(s), api address 10.201.$SLOT.1"
}

# Kills every process whose command line names the cluster dir (containerd, its shims, kubelet,
# kube-proxy) and every process in the nodes' cgroups (the containers), until none is left.
kill_everything() {
  local round pid found h i
  for round in 1 2 3 4 5 6 7 8 9 10; do
    found=0
    for pid in $(grep -l -s -F -- "$CLUSTER_DIR/nodes" /proc/[0-9]*/cmdline | cut -d/ -f3); do
      [ "$pid" = "$$" ] && continue
      kill -9 "$pid" 2>/dev/null && found=1
    done
    for h in $(cgroup_hierarchies all); do
      for ((i = 0; i < NODES; i++)); do
        [ -d "$h/$(cgroup_name "$i")" ] || continue
        for pid in $(find "$h/$(cgroup_name "$i")" -name cgroup.procs -exec cat {} + 2>/dev/null); do
          kill -9 "$pid" 2>/dev/null && found=1
        done
      done
    done
    [ "$found" = 0 ] && return 0
    sleep 0.3
  done
}

unmount_everything() {
  local target round
  for round in 1 2 3; do
    # mountinfo field 5 is the mount point; deepest first.
    while read -r target; do
      umount -l "$target" 2>/dev/null
    done < <(awk -v dir="$CLUSTER_DIR/" 'index($5, dir) == 1 {print length($5) " " $5}' /proc/self/mountinfo |
      sort -rn | cut -d' ' -f2-)
  done
}

remove_cgroups() {
  local h i
  for h in $(cgroup_hierarchies all); do
    for ((i = 0; i < NODES; i++)); do
      [ -d "$h/$(cgroup_name "$i")" ] || continue
      find "$h/$(cgroup_name "$i")" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
  done
}

down_from() {
  # shellcheck disable=SC1090
  source "$1"
  local i n ns
  kill_everything
  unmount_everything
  remove_cgroups
  for ((i = 0; i < NODES; i++)); do
    n=$(idx "$i"); ns=$(netns "$i")
    ip route del "10.244.$n.0/24" 2>/dev/null
    ip link del "ncdr${n}h" 2>/dev/null
    ip netns del "$ns" 2>/dev/null
  done
  ip addr del "10.201.$SLOT.1/32" dev lo 2>/dev/null
  guard_down
  # The kubelet links every container log into /var/log/containers; the CNI library caches results.
  find /var/log/containers -maxdepth 1 -type l -lname "$CLUSTER_DIR/*" -delete 2>/dev/null
  rm -f /var/lib/cni/results/"ncdr-s$SLOT"-* 2>/dev/null
  # Never crosses into a mount that survived (a host path bind-mounted into a container).
  [ -d "$CLUSTER_DIR/nodes" ] && rm -rf --one-file-system "$CLUSTER_DIR/nodes"
  rm -f "$run_dir/slot-$SLOT.env"
  log "down: slot $SLOT released"
}

case $command in
  up) up ;;
  down) down_from "$state" ;;
  reap)
    echo reaping
    # Until the test process closes our stdin: on drop, or when the kernel closes it at its death.
    cat > /dev/null
    down_from "$state"
    ;;
  *) echo "unknown command $command" >&2; exit 2 ;;
esac
