#!/usr/bin/env bash
# Provision the faultlab lab gateway (the Vagrant VM, or any Debian 12 machine that the test Wi-Fi's
# phones use as their router): install faultlab in a virtualenv, install its systemd units, turn on IPv4
# forwarding, and hand the phones' SIP for the PBX to faultlab (transparent interception).
#
#   sudo FAULTLAB_PBX=192.168.50.10 deploy/provision.sh             # do it
#   FAULTLAB_PBX=192.168.50.10 deploy/provision.sh --dry-run        # only print what it would do
#
# Configuration, all through environment variables (the Vagrantfile passes the FAULTLAB_* ones it is
# given through to here; deploy/README.md explains each):
#
#   FAULTLAB_PBX               the PBX's IPv4 address (required)
#   FAULTLAB_PBX_PORTS         the PBX's SIP ports, comma-separated              (default 5060,5061)
#   FAULTLAB_PBX_TLS_PORTS     which of those carry TLS, or none                 (default 5061)
#   FAULTLAB_WIFI_IF           the gateway's interface toward the Wi-Fi          (default eth1)
#   FAULTLAB_TRANSPARENT       1: intercept the phones' SIP for the PBX; 0: relay mode, the phones
#                              use the gateway's address as their SIP server     (default 1)
#   FAULTLAB_SPOOF_SOURCE      1: the PBX sees each phone's own address (needs a route back to the
#                              phones through the gateway; not with masquerade)  (default 0)
#   FAULTLAB_LISTEN            where faultlab listens, space-separated TRANSPORT:HOST:PORT
#                              (default "udp:0.0.0.0:5060 tcp:0.0.0.0:5060 tls:0.0.0.0:5061")
#   FAULTLAB_API               the control API's HOST:PORT                       (default 0.0.0.0:5099)
#   FAULTLAB_API_TOKEN         its bearer token (default: generated once, kept in /etc/faultlab/faultlab.env)
#   FAULTLAB_PROFILE           fault profile from the start, a name or a file    (default: none)
#   FAULTLAB_UPSTREAM_CA       PEM file (on the gateway) to verify the PBX's TLS certificate with
#   FAULTLAB_UPSTREAM_INSECURE 1: do not verify the PBX's TLS certificate        (default 0)
#   FAULTLAB_PUSH              1: also run the push gateway                      (default 1)
#   FAULTLAB_PUSH_LISTEN       its HOST:PORT for APNs requests                   (default 0.0.0.0:2197)
#   FAULTLAB_PUSH_TLS          1: serve it over TLS with the lab CA              (default 0)
#   FAULTLAB_PUSH_RELAY        the APNs URL to relay pushes to, e.g. https://api.sandbox.push.apple.com
#                              (default: none: pushes reach only faultlab's simulated devices, and a real
#                              phone's token gets 410 Unregistered, which makes many PBXs drop it)
#   FAULTLAB_APNS_KEY          the team's APNs auth key (.p8) on this machine: the relay signs the pushes
#                              with it; copied to /etc/faultlab/apns-key.p8 (mode 0600, root)
#   FAULTLAB_APNS_KEY_ID       its Key ID (10 letters or digits)   } all three APNs settings or none;
#   FAULTLAB_APNS_TEAM_ID      the app's Team ID (10 letters/digits) } they need FAULTLAB_PUSH_RELAY
#   FAULTLAB_EVENTS            HOST:PORT of the device-event collector, or none  (default 0.0.0.0:8090)
#   FAULTLAB_MASQUERADE        1: NAT what the phones send out of other interfaces (default 1)
#   FAULTLAB_SRC               the faultlab checkout to install   (default: the one holding this script)
#   DRY_RUN                    1: same as --dry-run
#
# Dry run: validates the configuration, then prints every command (prefixed "+ ") and every file with its
# contents instead of running or writing anything; needs neither root nor Debian. Running it for real twice
# gives the same result; each run reinstalls faultlab from the checkout and restarts its services.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true  # bash 5.2: '&' in ${x//a/b} is literal again

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX=/opt/faultlab
VENV=$PREFIX/venv
FAULTLAB=$VENV/bin/faultlab
ETC=/etc/faultlab
STATE=/var/lib/faultlab          # FAULTLAB_HOME: the lab CA
LOGS=/var/log/faultlab           # traces
UNITS=/etc/systemd/system
SYSCTL_FILE=/etc/sysctl.d/60-faultlab-gateway.conf
TABLE=faultlab_gw                # nftables table of the interception (inet family)
NAT_TABLE=faultlab_gw_nat        # nftables table of the masquerade (ip family)
PACKAGES=(python3 python3-venv python3-pip nftables iproute2 procps ca-certificates)

# ---------------------------------------------------------------------------------------------------
# arguments

DRY=${DRY_RUN:-0}
for arg in "$@"; do
  case $arg in
    --dry-run|-n) DRY=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "provision.sh: unknown argument '$arg' (use --dry-run, or --help)" >&2; exit 2 ;;
  esac
done
case $DRY in 0|1) ;; *) echo "provision.sh: DRY_RUN='$DRY': use 1 (dry run) or 0" >&2; exit 2 ;; esac

# ---------------------------------------------------------------------------------------------------
# configuration and its validation: every problem is reported (what is wrong, how to fix it), then exit 2

PBX=${FAULTLAB_PBX:-}
PBX_PORTS=${FAULTLAB_PBX_PORTS:-5060,5061}
PBX_TLS_PORTS=${FAULTLAB_PBX_TLS_PORTS-5061}; [[ $PBX_TLS_PORTS != none ]] || PBX_TLS_PORTS=
WIFI_IF=${FAULTLAB_WIFI_IF:-eth1}
TRANSPARENT=${FAULTLAB_TRANSPARENT:-1}
SPOOF_SOURCE=${FAULTLAB_SPOOF_SOURCE:-0}
LISTEN=${FAULTLAB_LISTEN:-udp:0.0.0.0:5060 tcp:0.0.0.0:5060 tls:0.0.0.0:5061}
API=${FAULTLAB_API:-0.0.0.0:5099}
API_TOKEN=${FAULTLAB_API_TOKEN:-}
PROFILE=${FAULTLAB_PROFILE:-}
UPSTREAM_CA=${FAULTLAB_UPSTREAM_CA:-}
UPSTREAM_INSECURE=${FAULTLAB_UPSTREAM_INSECURE:-0}
PUSH=${FAULTLAB_PUSH:-1}
PUSH_LISTEN=${FAULTLAB_PUSH_LISTEN:-0.0.0.0:2197}
PUSH_TLS=${FAULTLAB_PUSH_TLS:-0}
PUSH_RELAY=${FAULTLAB_PUSH_RELAY:-}
APNS_KEY=${FAULTLAB_APNS_KEY:-}
APNS_KEY_ID=${FAULTLAB_APNS_KEY_ID:-}
APNS_TEAM_ID=${FAULTLAB_APNS_TEAM_ID:-}
APNS_KEY_DEST=$ETC/apns-key.p8   # where the units read the key (root only)
EVENTS=${FAULTLAB_EVENTS-0.0.0.0:8090}; [[ $EVENTS != none ]] || EVENTS=
MASQUERADE=${FAULTLAB_MASQUERADE:-1}
SRC=${FAULTLAB_SRC:-$(dirname "$HERE")}

ERRORS=()
bad() { ERRORS+=("$1"); }

is_ipv4() {
  local IFS=. octets o
  [[ $1 =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || return 1
  read -ra octets <<<"$1"
  for o in "${octets[@]}"; do ((10#$o <= 255)) || return 1; done
}
is_port() { [[ $1 =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
is_port_list() {
  local IFS=, p
  [[ -n $1 ]] || return 1
  for p in $1; do is_port "$p" || return 1; done
}
is_hostport() { [[ $1 =~ ^([0-9.]+):([0-9]+)$ ]] && is_port "${1##*:}" && is_ipv4 "${1%:*}"; }
is_flag() { [[ $1 == 0 || $1 == 1 ]]; }

if [[ -z $PBX ]]; then
  bad "FAULTLAB_PBX is not set: give the PBX's IPv4 address, e.g. FAULTLAB_PBX=192.168.50.10"
elif ! is_ipv4 "$PBX"; then
  bad "FAULTLAB_PBX='$PBX' is not an IPv4 address: give the PBX's address as the phones dial it, e.g. 192.168.50.10 (not a name, not IPv6: interception matches addresses, IPv4 only)"
fi
is_port_list "$PBX_PORTS" || bad "FAULTLAB_PBX_PORTS='$PBX_PORTS': comma-separated port numbers 1-65535, e.g. 5060,5061"
if [[ -n $PBX_TLS_PORTS ]] && ! is_port_list "$PBX_TLS_PORTS"; then
  bad "FAULTLAB_PBX_TLS_PORTS='$PBX_TLS_PORTS': comma-separated port numbers, e.g. 5061, or none"
fi
[[ $WIFI_IF =~ ^[A-Za-z0-9_.:@-]{1,15}$ ]] ||
  bad "FAULTLAB_WIFI_IF='$WIFI_IF' is not an interface name (1-15 letters, digits, '_.:@-'): see 'ip -br link' on the gateway (in the Vagrant VM the bridged interface is usually eth1)"
for flag in TRANSPARENT SPOOF_SOURCE UPSTREAM_INSECURE PUSH PUSH_TLS MASQUERADE; do
  is_flag "${!flag}" || bad "FAULTLAB_$flag='${!flag}': use 1 (yes) or 0 (no)"
done
is_hostport "$API" || bad "FAULTLAB_API='$API': HOST:PORT with an IPv4 host, e.g. 0.0.0.0:5099 (all interfaces) or 127.0.0.1:5099"
if [[ $PUSH == 1 ]]; then
  is_hostport "$PUSH_LISTEN" || bad "FAULTLAB_PUSH_LISTEN='$PUSH_LISTEN': HOST:PORT with an IPv4 host, e.g. 0.0.0.0:2197"
  [[ -z $EVENTS ]] || is_hostport "$EVENTS" || bad "FAULTLAB_EVENTS='$EVENTS': HOST:PORT with an IPv4 host, e.g. 0.0.0.0:8090, or none (no event collector)"
fi
if [[ -n $API_TOKEN && ! $API_TOKEN =~ ^[A-Za-z0-9._~+/=-]{8,}$ ]]; then
  bad "FAULTLAB_API_TOKEN: at least 8 characters from letters, digits and ._~+/=- (or leave it unset to have one generated)"
fi
if [[ -n $PROFILE && ! $PROFILE =~ ^[A-Za-z0-9_./-]+$ ]]; then
  bad "FAULTLAB_PROFILE='$PROFILE': a profile name from 'faultlab profiles list' or a file path (letters, digits, '_./-')"
fi
if [[ -n $PUSH_RELAY && ! $PUSH_RELAY =~ ^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$ ]]; then
  bad "FAULTLAB_PUSH_RELAY='$PUSH_RELAY': the APNs URL, scheme and host only, e.g. https://api.sandbox.push.apple.com (debug builds) or https://api.push.apple.com (release builds)"
fi
apns_given=() apns_missing=()
for setting in APNS_KEY APNS_KEY_ID APNS_TEAM_ID; do
  if [[ -n ${!setting} ]]; then apns_given+=("FAULTLAB_$setting"); else apns_missing+=("FAULTLAB_$setting"); fi
done
if ((${#apns_given[@]} && ${#apns_missing[@]})); then
  bad "FAULTLAB_APNS_KEY, FAULTLAB_APNS_KEY_ID and FAULTLAB_APNS_TEAM_ID go together (the push gateway signs relayed pushes with that key): $(IFS=,; echo "${apns_given[*]}" | sed 's/,/, /g') given, $(IFS=,; echo "${apns_missing[*]}" | sed 's/,/, /g') missing; set all three, or none"
fi
if ((${#apns_given[@]})) && [[ -z $PUSH_RELAY ]]; then
  bad "FAULTLAB_APNS_KEY/_KEY_ID/_TEAM_ID sign the pushes the gateway relays to APNs: they need FAULTLAB_PUSH_RELAY, e.g. https://api.sandbox.push.apple.com"
fi
for setting in APNS_KEY_ID APNS_TEAM_ID; do
  if [[ -n ${!setting} && ! ${!setting} =~ ^[A-Za-z0-9]{10}$ ]]; then
    bad "FAULTLAB_$setting='${!setting}' is not 10 letters or digits: $([[ $setting == APNS_KEY_ID ]] &&
      echo "the Key ID of the .p8 key (the KEYID of AuthKey_KEYID.p8)" ||
      echo "the Team ID of the app's developer team (Apple Developer > Membership)")"
  fi
done
if [[ -n $APNS_KEY && ! $APNS_KEY =~ ^/[A-Za-z0-9_./-]+$ ]]; then
  bad "FAULTLAB_APNS_KEY='$APNS_KEY': an absolute path on this machine (letters, digits, '_./-'), e.g. /root/AuthKey_ABC123DEFG.p8"
elif [[ -n $APNS_KEY && ! -f $APNS_KEY ]]; then
  bad "FAULTLAB_APNS_KEY='$APNS_KEY' does not exist on this machine: give the path of the team's .p8 key here (with Vagrant: the path on the host; the Vagrantfile uploads it)"
elif [[ -n $APNS_KEY && ! -r $APNS_KEY ]]; then
  bad "FAULTLAB_APNS_KEY='$APNS_KEY' is not readable by $(id -un): run provisioning as root (sudo)"
fi
if [[ -n $UPSTREAM_CA && $UPSTREAM_INSECURE == 1 ]]; then
  bad "FAULTLAB_UPSTREAM_CA and FAULTLAB_UPSTREAM_INSECURE=1 contradict each other: verify with the CA, or do not verify"
fi
if [[ -n $UPSTREAM_CA && ! $UPSTREAM_CA =~ ^/[A-Za-z0-9_./-]+$ ]]; then
  bad "FAULTLAB_UPSTREAM_CA='$UPSTREAM_CA': an absolute path on the gateway, e.g. /vagrant/pbx-ca.pem"
fi
if [[ $DRY == 0 && -n $UPSTREAM_CA && ! -f $UPSTREAM_CA ]]; then
  bad "FAULTLAB_UPSTREAM_CA='$UPSTREAM_CA' does not exist on this machine: copy the PBX's CA into the checkout (it is synced to the VM) and give its path there"
fi
if [[ $SPOOF_SOURCE == 1 && $TRANSPARENT != 1 ]]; then
  bad "FAULTLAB_SPOOF_SOURCE=1 needs FAULTLAB_TRANSPARENT=1 (relay mode always talks to the PBX from the gateway's address)"
fi
if [[ $SPOOF_SOURCE == 1 && $MASQUERADE == 1 ]]; then
  bad "FAULTLAB_SPOOF_SOURCE=1 with FAULTLAB_MASQUERADE=1: masquerading would hide the phones' addresses that spoofing shows the PBX; set FAULTLAB_MASQUERADE=0 and give the PBX a route to the phones via the gateway"
fi

# the listeners: one per transport, at most
declare -A LISTEN_PORT=()
read -ra LISTENS <<<"$LISTEN"
((${#LISTENS[@]})) || bad "FAULTLAB_LISTEN is empty: give e.g. 'udp:0.0.0.0:5060 tcp:0.0.0.0:5060 tls:0.0.0.0:5061'"
for spec in "${LISTENS[@]}"; do
  if [[ $spec =~ ^(udp|tcp|tls):([0-9.]+:[0-9]+)$ ]] && transport=${BASH_REMATCH[1]} &&
    is_hostport "${BASH_REMATCH[2]}"; then
    if [[ -n ${LISTEN_PORT[$transport]:-} ]]; then
      bad "FAULTLAB_LISTEN: two $transport listeners ('$spec'): give one per transport"
    fi
    LISTEN_PORT[$transport]=${spec##*:}
  else
    bad "FAULTLAB_LISTEN: '$spec' is not TRANSPORT:HOST:PORT (udp|tcp|tls, IPv4 host), e.g. udp:0.0.0.0:5060"
  fi
done

# the PBX's port per transport, for relay mode's --upstream: the first plain port, the first TLS port
PLAIN_PORT='' TLS_PORT=''
IFS=, read -ra _ports <<<"$PBX_PORTS"
for p in "${_ports[@]}"; do
  if [[ ,$PBX_TLS_PORTS, == *,$p,* ]]; then TLS_PORT=${TLS_PORT:-$p}; else PLAIN_PORT=${PLAIN_PORT:-$p}; fi
done
if [[ $TRANSPARENT == 0 ]] && ((${#ERRORS[@]} == 0)); then
  for transport in "${!LISTEN_PORT[@]}"; do
    if [[ $transport == tls && -z $TLS_PORT ]]; then
      bad "relay mode: a tls listener but no TLS port in FAULTLAB_PBX_PORTS/FAULTLAB_PBX_TLS_PORTS to forward it to"
    elif [[ $transport != tls && -z $PLAIN_PORT ]]; then
      bad "relay mode: a $transport listener but no plain (non-TLS) port in FAULTLAB_PBX_PORTS to forward it to"
    fi
  done
fi

if [[ ! -f $SRC/pyproject.toml || ! -f $SRC/faultlab/labnet/intercept.py ]]; then
  bad "FAULTLAB_SRC='$SRC' is not a faultlab checkout (no pyproject.toml / faultlab/): point it at the synced checkout, e.g. /opt/faultlab/src"
fi

if ((${#ERRORS[@]})); then
  echo "provision.sh: the configuration is not valid, nothing was done:" >&2
  printf '  - %s\n' "${ERRORS[@]}" >&2
  echo "Set these environment variables (for Vagrant: on the host, before 'vagrant up' / 'vagrant provision'); see deploy/README.md." >&2
  exit 2
fi

if [[ $DRY == 0 && $(id -u) != 0 ]]; then
  echo "provision.sh: needs root (it installs packages and systemd units): run it with sudo, or use --dry-run" >&2
  exit 1
fi

# ---------------------------------------------------------------------------------------------------
# doing (or, in a dry run, printing)

section() { printf '\n== %s\n' "$*"; }

# run CMD...: run it, or print it (shell-quoted) in a dry run
run() {
  if [[ $DRY == 1 ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# write_file PATH MODE [SHOWN]: the contents come on stdin; written only when different (atomically).
# SHOWN, when given, is what a dry run prints instead of the contents (to keep secrets off the screen).
write_file() {
  local path=$1 mode=$2 shown=${3:-} content
  content=$(cat; echo x); content=${content%x}
  if [[ $DRY == 1 ]]; then
    local text=${shown:-$content}
    [[ $text == *$'\n' ]] || text+=$'\n'
    printf -- '--- %s (mode %s)\n%s--- end of %s\n' "$path" "$mode" "$text" "$path"
    return
  fi
  if [[ -f $path ]] && [[ $(cat "$path"; echo x) == "${content}x" ]] && [[ $(stat -c %a "$path") == "${mode#0}" ]]; then
    echo "unchanged: $path"
    return
  fi
  install -d -m 0755 "$(dirname "$path")"
  local tmp
  tmp=$(mktemp "$path.XXXXXX")
  printf '%s' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
  echo "wrote: $path"
}

# render TEMPLATE KEY=VALUE...: the template from deploy/systemd with each @KEY@ replaced
render() {
  local text kv
  text=$(cat "$HERE/systemd/$1"; echo x); text=${text%x}
  shift
  for kv in "$@"; do text=${text//@${kv%%=*}@/${kv#*=}}; done
  if [[ $text =~ @[A-Z_]+@ ]]; then
    echo "provision.sh: ${BASH_REMATCH[0]} left unfilled in a unit template (a bug in provision.sh)" >&2
    exit 3
  fi
  printf '%s' "$text"
}

# remove_unit NAME: stop, disable and delete a unit a previous configuration installed
remove_unit() {
  if [[ -f $UNITS/$1 ]]; then
    run systemctl disable --now "$1" || true   # already stopped, or never enabled: fine
    run rm -f "$UNITS/$1"
  fi
}

# the command line of a unit's ExecStart, each word quoted for systemd ("..." with \ and " escaped)
exec_line() {
  local out='' word
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:,=@+-]+$ ]]; then out+=" $word"; else
      word=${word//\\/\\\\}; out+=" \"${word//\"/\\\"}\""
    fi
  done
  printf '%s' "${out# }"
}

echo "faultlab gateway: PBX $PBX (ports $PBX_PORTS, TLS $PBX_TLS_PORTS), Wi-Fi side $WIFI_IF," \
  "$([[ $TRANSPARENT == 1 ]] && echo transparent interception || echo relay mode), checkout $SRC" \
  "$([[ $DRY == 1 ]] && echo '(dry run: nothing is run or written)')"

section "Debian packages"
run env DEBIAN_FRONTEND=noninteractive apt-get update -q
run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

section "faultlab in $VENV"
run install -d -m 0755 "$PREFIX" "$ETC"
run install -d -m 0700 "$STATE"
run install -d -m 0750 "$LOGS"
if [[ ! -x $VENV/bin/python ]]; then
  run python3 -m venv "$VENV"
fi
run "$VENV/bin/pip" install -q --upgrade pip
# Installed as a user's `pip install .` is: a wheel built from the checkout (never editable), so the gateway
# runs what ships, and the checkout can change or go without changing the installed faultlab.
run "$VENV/bin/pip" install -q "$SRC"                                 # faultlab and its dependencies
run "$VENV/bin/pip" install -q --force-reinstall --no-deps "$SRC"      # this checkout, even at the same version
run "$FAULTLAB" profiles list   # the built-in profile library came with it (an install without it fails here)
run ln -sfn "$FAULTLAB" /usr/local/bin/faultlab
if [[ -n $PROFILE ]]; then
  run "$FAULTLAB" profiles show "$PROFILE"   # a bad profile fails here, not at every service start
fi
if [[ ! -f $STATE/ca.crt ]]; then
  run "$FAULTLAB" ca init --confdir "$STATE"
fi

section "settings (secrets in $ETC/faultlab.env, mode 0600)"
TOKEN_SHOWN=
if [[ -z $API_TOKEN && -f $ETC/faultlab.env ]]; then
  API_TOKEN=$(sed -n 's/^FAULTLAB_API_TOKEN=//p' "$ETC/faultlab.env")   # keep the one already handed out
fi
if [[ -z $API_TOKEN ]]; then
  if [[ $DRY == 1 ]]; then API_TOKEN=dry-run-token; TOKEN_SHOWN="(generated at provisioning: 32 random characters)"
  else API_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))'); fi
fi
write_file "$ETC/faultlab.env" 0600 "$(printf '# read by the faultlab-* units\nFAULTLAB_HOME=%s\nFAULTLAB_API_TOKEN=%s\n' \
  "$STATE" "${TOKEN_SHOWN:-******** (hidden; sudo cat $ETC/faultlab.env on the gateway)}")" <<EOF
# read by the faultlab-* units
FAULTLAB_HOME=$STATE
FAULTLAB_API_TOKEN=$API_TOKEN
EOF

section "APNs key (for the push gateway's relay)"
if [[ $PUSH == 1 && -n $APNS_KEY ]]; then
  # the contents are never printed: the path and size only
  echo "APNs key: $APNS_KEY ($(wc -c <"$APNS_KEY" | tr -d ' ') bytes) -> $APNS_KEY_DEST (mode 0600, root)"
  run install -m 0600 -o root -g root "$APNS_KEY" "$APNS_KEY_DEST"
  # a key that cannot sign fails here, not at every service start
  run "$VENV/bin/python" -c 'import sys; from faultlab.lab.push.auth import ApnsSigner; ApnsSigner.from_file(*sys.argv[1:]).token()' \
    "$APNS_KEY_DEST" "$APNS_KEY_ID" "$APNS_TEAM_ID"
else
  if [[ $PUSH == 0 ]]; then echo "FAULTLAB_PUSH=0: no push gateway, no APNs key"
  else echo "no APNs key: relayed pushes (if any) keep the PBX's own authorization"; fi
  [[ ! -f $APNS_KEY_DEST ]] || run rm -f "$APNS_KEY_DEST"
fi

section "IPv4 forwarding"
write_file "$SYSCTL_FILE" 0644 <<'EOF'
# faultlab gateway: route the test Wi-Fi's traffic (deploy/provision.sh)
net.ipv4.ip_forward = 1
EOF
run sysctl -q -p "$SYSCTL_FILE"

section "transparent interception"
if [[ $TRANSPARENT == 1 ]]; then
  # faultlab gateway intercept: faultlab's own ruleset (what faultlab net intercept installs in a namespace
  # lab), each rule toward the PBX restricted to $WIFI_IF, plus the policy route; --off removes all of it
  intercept_args=(gateway intercept --pbx "$PBX" --ports "$PBX_PORTS" --tls-ports "${PBX_TLS_PORTS:-none}"
    --iface "$WIFI_IF" --table "$TABLE" --proxy-udp-port "${LISTEN_PORT[udp]:-0}"
    --proxy-tcp-port "${LISTEN_PORT[tcp]:-0}" --proxy-tls-port "${LISTEN_PORT[tls]:-0}")
  [[ $SPOOF_SOURCE == 0 ]] || intercept_args+=(--spoof-source)
  run "$FAULTLAB" "${intercept_args[@]}" --dry-run   # bad values fail here, not at every service start
  # an installation by an earlier provision.sh kept its rules in a file
  [[ ! -f $ETC/intercept.nft ]] || run rm -f "$ETC/intercept.nft"
  write_file "$UNITS/faultlab-intercept.service" 0644 < <(render faultlab-intercept.service \
    EXEC_START="$(exec_line "$FAULTLAB" "${intercept_args[@]}")" \
    EXEC_STOP="$(exec_line "$FAULTLAB" gateway intercept --off --table "$TABLE")" \
    TABLE="$TABLE" PBX="$PBX" WIFI_IF="$WIFI_IF")
  PROXY_DEPS="Wants=faultlab-intercept.service"
else
  echo "FAULTLAB_TRANSPARENT=0: no interception (relay mode: the phones use this gateway's address as their SIP server)"
  remove_unit faultlab-intercept.service
  [[ ! -f $ETC/intercept.nft ]] || run rm -f "$ETC/intercept.nft"
  PROXY_DEPS="# relay mode: no interception"
fi

section "masquerade (what the phones send out of other interfaces)"
if [[ $MASQUERADE == 1 ]]; then
  write_file "$ETC/masquerade.nft" 0644 <<EOF
#!/usr/sbin/nft -f
# faultlab gateway: traffic forwarded from the Wi-Fi ($WIFI_IF) out of any other interface leaves with
# this gateway's address, so the answers come back here (e.g. through the VM's NAT uplink).
table ip $NAT_TABLE
delete table ip $NAT_TABLE
table ip $NAT_TABLE {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    iifname "$WIFI_IF" oifname != "$WIFI_IF" masquerade
  }
}
EOF
  write_file "$UNITS/faultlab-nat.service" 0644 < <(render faultlab-nat.service \
    NFT_FILE="$ETC/masquerade.nft" NAT_TABLE="$NAT_TABLE" WIFI_IF="$WIFI_IF")
else
  remove_unit faultlab-nat.service
  [[ ! -f $ETC/masquerade.nft ]] || run rm -f "$ETC/masquerade.nft"
fi

section "systemd units"
proxy_args=(proxy)
for spec in "${LISTENS[@]}"; do proxy_args+=(--listen "$spec"); done
if [[ $TRANSPARENT == 1 ]]; then
  proxy_args+=(--transparent)
  [[ $SPOOF_SOURCE == 0 ]] || proxy_args+=(--spoof-source)
else
  for spec in "${LISTENS[@]}"; do
    transport=${spec%%:*}
    proxy_args+=(--upstream "$transport:$PBX:$([[ $transport == tls ]] && echo "$TLS_PORT" || echo "$PLAIN_PORT")")
  done
fi
[[ -z $UPSTREAM_CA ]] || proxy_args+=(--upstream-ca "$UPSTREAM_CA")
[[ $UPSTREAM_INSECURE == 0 ]] || proxy_args+=(--upstream-insecure)
[[ -z $PROFILE ]] || proxy_args+=(--profile "$PROFILE")
# the token comes from FAULTLAB_API_TOKEN in faultlab.env (not on the command line, where ps shows it)
proxy_args+=(--api "$API" --confdir "$STATE" --trace "$LOGS/proxy.jsonl")
write_file "$UNITS/faultlab-proxy.service" 0644 < <(render faultlab-proxy.service \
  EXEC_START="$(exec_line "$FAULTLAB" "${proxy_args[@]}")" ENV_FILE="$ETC/faultlab.env" LOGS="$LOGS" \
  DEPS="$PROXY_DEPS" MODE="$([[ $TRANSPARENT == 1 ]] && echo "transparent, PBX $PBX" || echo "relay to $PBX")")

if [[ $PUSH == 1 ]]; then
  push_args=(push-gateway --listen "$PUSH_LISTEN" --confdir "$STATE" --trace "$LOGS/push.jsonl")
  [[ $PUSH_TLS == 0 ]] || push_args+=(--tls)
  [[ -z $EVENTS ]] || push_args+=(--events "$EVENTS")
  [[ -z $PUSH_RELAY ]] || push_args+=(--relay "$PUSH_RELAY")
  [[ -z $APNS_KEY ]] || push_args+=(--apns-key "$APNS_KEY_DEST" --apns-key-id "$APNS_KEY_ID" --apns-team-id "$APNS_TEAM_ID")
  if [[ -z $PUSH_RELAY ]]; then
    echo "warning: FAULTLAB_PUSH_RELAY is not set: the push gateway delivers only to faultlab's simulated devices" \
      "and answers 410 Unregistered for a real phone's token (many PBXs then delete it); do not point a" \
      "production PBX at it"
  fi
  write_file "$UNITS/faultlab-push-gateway.service" 0644 < <(render faultlab-push-gateway.service \
    EXEC_START="$(exec_line "$FAULTLAB" "${push_args[@]}")" ENV_FILE="$ETC/faultlab.env" LOGS="$LOGS")
else
  remove_unit faultlab-push-gateway.service
fi

section "start"
run systemctl daemon-reload
enabled=(faultlab-proxy.service)
[[ $MASQUERADE == 0 ]] || enabled+=(faultlab-nat.service)
[[ $PUSH == 0 ]] || enabled+=(faultlab-push-gateway.service)
run systemctl enable "${enabled[@]}"
run systemctl restart "${enabled[@]}"
[[ $TRANSPARENT == 0 ]] || run systemctl restart faultlab-intercept.service

if [[ $DRY == 1 ]]; then
  echo; echo "dry run: nothing was run or written"
else
  echo
  echo "faultlab gateway ready: control API on $API (token: sudo cat $ETC/faultlab.env)," \
    "CA for the phones: $STATE/ca.crt; logs: journalctl -u 'faultlab-*' -f; traces in $LOGS"
  systemctl --no-pager --lines=0 status "${enabled[@]}" || true
fi
