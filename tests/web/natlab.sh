#!/usr/bin/env bash
# A small internet on one machine, for the browser tests of direct links
# (tests/web/nat.test.mjs): network namespaces joined by veth pairs, routers
# that translate addresses with nftables. Documentation address ranges only;
# nothing here reaches outside the namespaces. Needs root.
#
#   natlab.sh up NAME      make the lab: both NATs endpoint-independent
#   natlab.sh nat NAME SIDE cone|symmetric
#                          make SIDE's (a or b) router translate that way
#   natlab.sh down NAME    remove it
#
# The lab, for NAME=x:
#   x-pub  the "internet", a bridge (br0), 203.0.113.0/24: the server and coturn
#          listen on 203.0.113.10
#   x-ra   router of network a: 203.0.113.21 outside, 192.0.2.1 inside
#   x-a    a host of network a, 192.0.2.2 (a browser runs here)
#   x-rb   router of network b: 203.0.113.22 outside, 198.51.100.1 inside
#   x-b    a host of network b, 198.51.100.2
# The routers forward only what their inside started (a stateful firewall)
# and have no route to the other inside network: a and b can reach each
# other only through their NATs' outside addresses.
#
# cone: plain masquerade, which keeps a flow's source port where it can: the
#   same outside port for every destination (endpoint-independent mapping),
#   so a server-reflexive candidate learnt from STUN works for the peer too.
# symmetric: masquerade fully-random: a new random outside port for every
#   destination, so what STUN saw is useless to the peer, and only a relay
#   (TURN) connects.
set -euo pipefail

cmd=${1:?usage: natlab.sh up|nat|down NAME ...}
name=${2:?a lab name}

ns() { printf '%s-%s' "$name" "$1"; }
in_ns() { local n; n=$(ns "$1"); shift; ip netns exec "$n" "$@"; }

# A veth pair between two namespaces: veth NS1 NAME1 NS2 NAME2 (made here,
# then moved: names need only be unique inside each namespace).
veth() {
  local tmp1="${name:0:6}$$x" tmp2="${name:0:6}$$y"
  ip link add name "$tmp1" type veth peer name "$tmp2"
  ip link set "$tmp1" netns "$(ns "$1")"
  ip -n "$(ns "$1")" link set "$tmp1" name "$2"
  ip link set "$tmp2" netns "$(ns "$3")"
  ip -n "$(ns "$3")" link set "$tmp2" name "$4"
}

nat_rules() { # side mode
  local random=''
  case $2 in
    cone) ;;
    symmetric) random='fully-random' ;;
    *) echo "natlab: unknown NAT mode $2 (cone or symmetric)" >&2; exit 2 ;;
  esac
  in_ns "r$1" nft -f - <<EOF
flush ruleset
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade $random
  }
}
table ip filter {
  # Unsolicited packets to the router itself are dropped, not answered: a
  # dropped packet's conntrack entry is never confirmed, so a peer's early
  # punch cannot take the outside port this side's own flow will want (Linux
  # would then map that flow to another port, as a symmetric NAT does).
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname { "lo", "lan" } accept
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
  }
}
EOF
  # Mappings made under the old rules would outlive them.
  in_ns "r$1" sh -c 'command -v conntrack >/dev/null && conntrack -F >/dev/null 2>&1 || true'
}

case $cmd in
  up)
    for n in pub ra rb a b; do
      ip netns add "$(ns $n)"
      ip -n "$(ns $n)" link set lo up
    done
    ip -n "$(ns pub)" link add name br0 type bridge
    ip -n "$(ns pub)" addr add 203.0.113.10/24 dev br0
    ip -n "$(ns pub)" link set br0 up
    declare -A outside=([a]=203.0.113.21 [b]=203.0.113.22)
    declare -A gateway=([a]=192.0.2.1 [b]=198.51.100.1)
    declare -A host=([a]=192.0.2.2 [b]=198.51.100.2)
    for side in a b; do
      veth "r$side" wan pub "r$side"
      ip -n "$(ns pub)" link set "r$side" master br0 up
      ip -n "$(ns "r$side")" addr add "${outside[$side]}/24" dev wan
      ip -n "$(ns "r$side")" link set wan up
      veth "r$side" lan "$side" eth0
      ip -n "$(ns "r$side")" addr add "${gateway[$side]}/24" dev lan
      ip -n "$(ns "r$side")" link set lan up
      ip -n "$(ns "$side")" addr add "${host[$side]}/24" dev eth0
      ip -n "$(ns "$side")" link set eth0 up
      ip -n "$(ns "$side")" route add default via "${gateway[$side]}"
      in_ns "r$side" sysctl -qw net.ipv4.ip_forward=1
      nat_rules "$side" cone
    done
    ;;
  nat)
    nat_rules "${3:?a side, a or b}" "${4:?cone or symmetric}"
    ;;
  down)
    for n in a b ra rb pub; do
      ip netns pids "$(ns $n)" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns del "$(ns $n)" 2>/dev/null || true
    done
    ;;
  *)
    echo "usage: natlab.sh up|nat|down NAME ..." >&2
    exit 2
    ;;
esac
