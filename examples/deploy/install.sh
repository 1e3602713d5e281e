#!/usr/bin/env bash
# Installs superpeer as a systemd service on this machine:
#   sudo examples/deploy/install.sh --port 8080
# builds the binary from this checkout (or takes --binary), installs it, creates the
# `superpeer` system user, writes /etc/superpeer/.env (keeping an existing one's other
# keys, and its token unless --token is given), installs the unit, then enables and
# starts the service and waits until it answers on /health.
# Run it again to upgrade: the binary and unit are replaced, the .env is kept.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: install.sh [options]
  --port N          listenPort: the REST API and monitor port (default 8080, or the .env's)
  --token TOKEN     accessToken (default: the .env's, else a new random one)
  --signal URL      signal1: the default tracker (ws:// or wss://)
  --public-ip IP    publicIp: the address viewers reach this machine on
  --etcd URLS       etcdEndpoints: join the fleet whose seed list is in this etcd
                    (http://host:2379, comma-separated)
  --node-name NAME  nodeName: this machine's name in the fleet (default: host name)
  --candidates URL  candidatesUrl: seed the busiest of the channels this URL lists
                    (automatic seeding)
  --binary FILE     install this superpeer binary instead of building one
  --prefix DIR      where the binary goes: DIR/bin (default /usr/local)
  --root DIR        install into DIR as if it were / (for images and packaging);
                    implies --no-start and creates no user
  --no-start        install and enable, but do not start the service
  -h, --help        this text
USAGE
}

port="" token="" signal="" public_ip="" etcd="" node_name="" candidates="" binary="" prefix=/usr/local root="" start=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --token) token=${2:?--token needs a value}; shift 2 ;;
    --signal) signal=${2:?--signal needs a value}; shift 2 ;;
    --public-ip) public_ip=${2:?--public-ip needs a value}; shift 2 ;;
    --etcd) etcd=${2:?--etcd needs a value}; shift 2 ;;
    --node-name) node_name=${2:?--node-name needs a value}; shift 2 ;;
    --candidates) candidates=${2:?--candidates needs a value}; shift 2 ;;
    --binary) binary=${2:?--binary needs a value}; shift 2 ;;
    --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
    --root) root=${2:?--root needs a value}; start=no; shift 2 ;;
    --no-start) start=no; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$port" in
  0|0*) echo "install.sh: --port must be a port a service can keep (1-65535)" >&2; exit 2 ;;
  ""|[0-9]|[0-9][0-9]|[0-9][0-9][0-9]|[0-9][0-9][0-9][0-9]|[0-9][0-9][0-9][0-9][0-9]) ;;
  *) echo "install.sh: --port must be a number" >&2; exit 2 ;;
esac
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo), or use --root DIR to stage the files" >&2
  exit 1
fi

here=$(cd "$(dirname "$0")" && pwd)
bin_dir="$root$prefix/bin"
config_dir="$root/etc/superpeer"
env_file="$config_dir/.env"
unit_file="$root/etc/systemd/system/superpeer.service"
state_dir=/var/lib/superpeer

# 1. The binary: given, or built from this checkout (as the user who ran sudo, whose
# cargo it is and whose checkout it is).
if [ -z "$binary" ]; then
  checkout=$(cd "$here/../.." && pwd)
  [ -f "$checkout/Cargo.toml" ] || { echo "install.sh: not in a checkout; pass --binary" >&2; exit 1; }
  echo "building superpeer (release)..." >&2
  build="cd '$checkout' && scripts/setup-rust.sh && cargo build --release --locked -p superpeer"
  if [ -z "$root" ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    runuser -u "$SUDO_USER" -- bash -lc "$build" ||
      { echo "install.sh: building as $SUDO_USER failed; build it yourself and pass --binary" >&2; exit 1; }
  else
    command -v cargo >/dev/null || { echo "install.sh: cargo not found; install Rust (rustup) or pass --binary" >&2; exit 1; }
    bash -c "$build"
  fi
  binary="$checkout/target/release/superpeer"
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }

# 2. The .env, written beside the old one and checked by the new binary before either
# replaces anything: keys given here replace the file's, everything else is kept.
install -d -m 0750 "$config_dir"
staged_env="$env_file.new"
if [ -f "$env_file" ]; then cp -p "$env_file" "$staged_env"; else : > "$staged_env"; fi
trap 'rm -f "$staged_env"' EXIT
set_key() {
  local key=$1 value=$2 rest
  rest=$(grep -v -E "^[[:space:]]*(export[[:space:]]+)?$key[[:space:]]*=" "$staged_env" || true)
  { [ -n "$rest" ] && printf '%s\n' "$rest"; printf '%s=%s\n' "$key" "$value"; } > "$staged_env.tmp"
  mv -f "$staged_env.tmp" "$staged_env"
}
has_key() { grep -q -E "^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=" "$staged_env"; }
if [ -n "$port" ]; then set_key listenPort "$port"; elif ! has_key listenPort; then set_key listenPort 8080; fi
if [ -n "$token" ]; then
  set_key accessToken "$token"
elif ! has_key accessToken; then
  set_key accessToken "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
fi
has_key dataDir || set_key dataDir "$state_dir"
[ -z "$signal" ] || set_key signal1 "$signal"
[ -z "$public_ip" ] || set_key publicIp "$public_ip"
[ -z "$etcd" ] || set_key etcdEndpoints "$etcd"
[ -z "$node_name" ] || set_key nodeName "$node_name"
[ -z "$candidates" ] || set_key candidatesUrl "$candidates"
chmod 0640 "$staged_env"
# The new binary checks the result the way it will at start-up.
if ! "$binary" serve --check --env-file "$staged_env" >/dev/null; then
  echo "install.sh: the configuration above was refused; nothing was changed" >&2
  exit 1
fi

# 3. The user the service runs as, with a group of its own.
if [ -z "$root" ] && ! id superpeer >/dev/null 2>&1; then
  useradd --system --user-group --home-dir "$state_dir" --no-create-home \
    --shell /usr/sbin/nologin superpeer
fi

# 4. Binary and .env into place. The binary through a temporary name: a running one
# cannot be overwritten in place (the running master keeps its own copy).
install -d "$bin_dir"
install -m 0755 "$binary" "$bin_dir/superpeer.new"
mv -f "$bin_dir/superpeer.new" "$bin_dir/superpeer"
[ -n "$root" ] || chown root:superpeer "$config_dir" "$staged_env"
mv -f "$staged_env" "$env_file"
trap - EXIT

# 5. The unit, pointing at where the binary went.
install -d "$(dirname "$unit_file")"
sed "s#/usr/local/bin/superpeer#$prefix/bin/superpeer#" "$here/superpeer.service" > "$unit_file"
chmod 0644 "$unit_file"

# What the health check asks: the .env's port, on its bind address unless that is
# every address.
env_value() {
  sed -n -E "s/^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=[[:space:]]*[\"']?([^\"']*)[\"']?[[:space:]]*\$/\2/p" "$env_file" | tail -n 1
}
listen_port=$(env_value listenPort)
listen_host=$(env_value bindAddress)
case "$listen_host" in ""|0.0.0.0|::|"[::]") listen_host=127.0.0.1 ;; *:*) listen_host="[$listen_host]" ;; esac
if [ -n "$root" ]; then
  echo "staged superpeer in $root (binary, $env_file, $unit_file)"
  exit 0
fi

# 6. Enable, and start unless told not to.
if [ ! -d /run/systemd/system ]; then
  echo "installed; systemd is not running here, so start it yourself:" >&2
  echo "  sudo -u superpeer $bin_dir/superpeer serve --env-file $env_file" >&2
  exit 0
fi
systemctl daemon-reload
if [ "$start" = yes ]; then
  systemctl enable superpeer >/dev/null
  # restart, not start: an upgrade must run the new binary.
  systemctl restart superpeer
  for _ in $(seq 1 50); do
    if command -v curl >/dev/null 2>&1; then
      answered() { curl -fsS "http://$listen_host:$listen_port/health" >/dev/null 2>&1; }
    else
      answered() { systemctl is-active --quiet superpeer; }
    fi
    if answered; then
      echo "superpeer is running: monitor at http://$(hostname -f 2>/dev/null || hostname):$listen_port/"
      echo "access token: in $env_file (accessToken)"
      exit 0
    fi
    sleep 0.2
  done
  echo "superpeer did not answer on $listen_host:$listen_port; see: journalctl -u superpeer" >&2
  exit 1
else
  systemctl enable superpeer >/dev/null
  echo "installed and enabled; start with: systemctl start superpeer"
fi
