# Emulated hosts on one machine, for tests that need several hosts (sourced; needs root).
# Host N is a network namespace with eth0 = $hosts_net.(10+N)/24, its own hostname (UTS) and
# its own IPC namespace, so a program that asks "is this peer on my host?" (hostname, IPC and
# mount namespaces: worker/comm/handshake.c) sees different hosts. The hosts are wired to a
# switch namespace, through a kernel bridge (hosts_bridge) or through the userspace switch
# linkswitch (hosts_uswitch: one-way delay, rate and drops per host pair, because this
# kernel has no sch_netem). Every interface is created inside a namespace of ours, never in the
# caller's, and the addresses exist only there. The state (tag, pids, the switch's log) lives
# in a directory of the caller's, so that tests running at once never share anything.
#
#   hosts_init DIR [NET]      state in DIR; NET the first three octets (default 10.213.7)
#   hosts_probe               0 if namespaces can be made here; else 1, the reason in $hosts_why
#   hosts_up N                hosts 0..N-1 and the switch namespace (ports not yet attached)
#   hosts_bridge              attach every port to a kernel bridge (no shaping)
#   hosts_uswitch [LINKS]     attach them to linkswitch, reading the links file LINKS
#   hosts_links               reload the links file (SIGHUP)
#   hosts_addr N, hosts_name N      host N's address and hostname
#   hosts_run N CMD...        run CMD on host N, in the foreground
#   hosts_start N LOG CMD...  start CMD on host N in the background, output to LOG; its pid in
#                             $hosts_pid
#   hosts_procs               the pids of every process on the hosts (but their anchors)
#   hosts_down                stop every process in the namespaces, by pid (SIGTERM, then after
#                             20 s SIGKILL), the switch, and delete the namespaces
#
# links file lines: "IN OUT DELAY_US RATE_MBIT DROP", IN/OUT host numbers or '*'; later lines
# win. 5 ms each way and 1 Gbit/s between hosts 1 and 2: "1 2 5000 1000 0" and "2 1 5000 1000 0";
# DROP 1 cuts the pair (a partition) until the next reload.
# Namespaces are named moeh<PID>-h<N> and moeh<PID>-sw, PID the process that made them: hosts_up
# first removes those of a process that no longer runs (a run killed before its cleanup).

hosts_init() {
  hosts_dir=$1
  hosts_net=${2:-10.213.7}
  mkdir -p "$hosts_dir"
  [ -s "$hosts_dir/tag" ] || echo "moeh$$" >"$hosts_dir/tag"
  hosts_tag=$(cat "$hosts_dir/tag")
  echo "$hosts_net" >"$hosts_dir/net"
}

hosts_ns() { echo "$hosts_tag-h$1"; }
hosts_addr() { echo "$hosts_net.$((10 + $1))"; }
hosts_name() { echo "$hosts_tag-h$1"; }
hosts_anchor() { cat "$hosts_dir/anchor-h$1.pid"; }
# a process that runs and is no zombie
hosts_alive() { local s; s=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ -n "$s" ] && [ "$s" != Z ]; }
hosts_wait() { # SECONDS CONDITION
  local end=$((SECONDS + $1))
  until eval "$2"; do [ $SECONDS -ge $end ] && return 1; sleep 0.1; done
}

hosts_probe() {
  hosts_why=""
  local t p=$hosts_tag-probe err=$hosts_dir/probe.err
  [ "$(id -u)" = 0 ] || { hosts_why="not root"; return 1; }
  for t in ip unshare nsenter; do
    command -v $t >/dev/null || { hosts_why="no '$t' command"; return 1; }
  done
  if ! ip netns add "$p" 2>"$err"; then
    hosts_why="ip netns add: $(head -n 1 "$err")"
    return 1
  fi
  if ! ip -n "$p" link add name probe0 type veth peer name probe1 2>"$err"; then
    hosts_why="no veth pair inside a namespace: $(head -n 1 "$err")"
  elif ! ip netns exec "$p" unshare --uts --ipc true 2>"$err"; then
    hosts_why="unshare --uts --ipc: $(head -n 1 "$err")"
  fi
  ip netns del "$p" 2>/dev/null
  [ -z "$hosts_why" ]
}

# Every process in namespace NS (ip netns pids), killed by its pid; then NS deleted.
hosts_remove_ns() {
  local pid end=$((SECONDS + 10))
  while :; do
    local left=""
    for pid in $(ip netns pids "$1" 2>/dev/null); do kill -9 "$pid" 2>/dev/null && left=1; done
    [ -z "$left" ] || [ $SECONDS -ge $end ] && break
    sleep 0.1
  done
  ip netns del "$1" 2>/dev/null
}

# Namespaces of a run whose process is gone (killed before it could clean up).
hosts_sweep_stale() {
  local ns owner
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    [[ "$ns" =~ ^moeh([0-9]+)-(h[0-9]+|sw|probe)$ ]] || continue
    owner=${BASH_REMATCH[1]}
    [ "moeh$owner" = "$hosts_tag" ] && continue
    kill -0 "$owner" 2>/dev/null || hosts_remove_ns "$ns"
  done
}

hosts_up() {
  local n N=$1 sw=$hosts_tag-sw
  hosts_sweep_stale
  echo "$N" >"$hosts_dir/nhosts"
  ip netns add "$sw" || return 1
  ip -n "$sw" link set lo up
  for ((n = 0; n < N; n++)); do
    local ns; ns=$(hosts_ns $n)
    ip netns add "$ns" || return 1
    ip -n "$ns" link set lo up
    ip -n "$sw" link add name p$n mtu 9000 type veth peer name eth0 mtu 9000 netns "$ns" || return 1
    ip -n "$ns" addr add "$(hosts_addr $n)/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$sw" link set p$n up
    # the anchor: holds host n's hostname and IPC namespace (and the mount namespace that
    # `ip netns exec` makes); every process of host n joins its namespaces
    ip netns exec "$ns" unshare --uts --ipc sh -c 'hostname "$0" && exec sleep 86400' \
      "$(hosts_name $n)" </dev/null >/dev/null 2>&1 &
    echo $! >"$hosts_dir/anchor-h$n.pid"
    disown $! # its end by SIGKILL is no news
  done
  for ((n = 0; n < N; n++)); do
    hosts_wait 10 '[ "$(nsenter -t "$(hosts_anchor $n)" -u hostname 2>/dev/null)" = "$(hosts_name $n)" ]' ||
      { echo "hosts_up: host $n's anchor did not take its hostname" >&2; return 1; }
  done
}

hosts_bridge() {
  local n N sw=$hosts_tag-sw
  N=$(cat "$hosts_dir/nhosts")
  hosts_stop_switch
  ip -n "$sw" link show br0 >/dev/null 2>&1 || ip -n "$sw" link add br0 type bridge || return 1
  ip -n "$sw" link set br0 up
  for ((n = 0; n < N; n++)); do ip -n "$sw" link set p$n master br0 || return 1; done
}

# The switch's helpers: built with the project (MOE_BUILD_DIR/tests), else compiled here.
hosts_tool() {
  local built=${MOE_BUILD_DIR:-}/tests/$1 src
  src=$(dirname "${BASH_SOURCE[0]}")/$1.c
  if [ -n "${MOE_BUILD_DIR:-}" ] && [ -x "$built" ]; then echo "$built"; return; fi
  [ -x "$hosts_dir/$1" ] || cc -O2 -Wall -o "$hosts_dir/$1" "$src" || return 1
  echo "$hosts_dir/$1"
}

hosts_uswitch() {
  local n N sw=$hosts_tag-sw links=${1:-$hosts_dir/links.conf} ports=() ethoff lsw
  N=$(cat "$hosts_dir/nhosts")
  ethoff=$(hosts_tool ethoff) && lsw=$(hosts_tool linkswitch) || return 1
  [ -f "$links" ] || echo "# IN OUT DELAY_US RATE_MBIT DROP" >"$links"
  echo "$links" >"$hosts_dir/links"
  for ((n = 0; n < N; n++)); do
    ip -n "$sw" link set p$n nomaster 2>/dev/null
    # a userspace switch forwards whole frames only: no offloads on either end
    ip netns exec "$sw" "$ethoff" p$n && ip netns exec "$(hosts_ns $n)" "$ethoff" eth0 || return 1
    ports+=(p$n)
  done
  hosts_stop_switch
  : >"$hosts_dir/linkswitch.log"
  ip netns exec "$sw" "$lsw" "$links" "${ports[@]}" >>"$hosts_dir/linkswitch.log" 2>&1 &
  echo $! >"$hosts_dir/linkswitch.pid"
  disown $!
  hosts_wait 10 'grep -q "linkswitch: loaded" "$hosts_dir/linkswitch.log"'
}

hosts_links() { kill -HUP "$(cat "$hosts_dir/linkswitch.pid")"; }

hosts_stop_switch() {
  local pid
  pid=$(cat "$hosts_dir/linkswitch.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null && hosts_wait 5 '! hosts_alive "$pid"'
  rm -f "$hosts_dir/linkswitch.pid"
}

hosts_run() {
  local n=$1; shift
  nsenter -t "$(hosts_anchor "$n")" -n -u -i -m --wd="$PWD" -- "$@"
}

hosts_start() {
  local n=$1 log=$2; shift 2
  nsenter -t "$(hosts_anchor "$n")" -n -u -i -m --wd="$PWD" -- "$@" </dev/null >>"$log" 2>&1 &
  hosts_pid=$!
  disown "$hosts_pid" # a test's kill -9 is no news either
}

# The pids in the hosts' namespaces but the anchors: what was started there, and its children.
hosts_procs() {
  local n N pid
  N=$(cat "$hosts_dir/nhosts" 2>/dev/null || echo 0)
  for ((n = 0; n < N; n++)); do
    for pid in $(ip netns pids "$(hosts_ns $n)" 2>/dev/null); do
      [ "$pid" = "$(hosts_anchor $n 2>/dev/null)" ] || echo "$pid"
    done
  done
}

hosts_down() {
  local pid n N
  [ -n "${hosts_dir:-}" ] && [ -d "$hosts_dir" ] || return 0
  # by pid, found in our namespaces (never a pid remembered from before: it may be reused);
  # first asked to stop (a daemon writes its last lines, and a sanitizer its report)
  for pid in $(hosts_procs); do kill -TERM "$pid" 2>/dev/null; done
  hosts_wait 20 '[ -z "$(hosts_procs)" ]'
  hosts_stop_switch
  N=$(cat "$hosts_dir/nhosts" 2>/dev/null || echo 0)
  for ((n = 0; n < N; n++)); do
    hosts_remove_ns "$(hosts_ns $n)" # the anchor and anything left, SIGKILL
    rm -f "$hosts_dir/anchor-h$n.pid"
  done
  hosts_remove_ns "$hosts_tag-sw"
  rm -f "$hosts_dir/nhosts"
}
