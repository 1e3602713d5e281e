# Shell functions the demos share. Sourced; they use the caller's $work (a scratch
# directory) and $helpers (pids to stop at exit).

# Starts `node tests/support/NAME ARGS...` held open on an fd of this script (it exits
# when its stdin closes, so it cannot outlive the demo) and sets $port to the port it
# listens on.
start_helper() {
  local name=$1 log="$work/$1-$RANDOM.log" fifo="$work/$1-$RANDOM.in" fd
  shift
  mkfifo "$fifo"
  node "tests/support/$name" "$@" <"$fifo" >"$log" 2>&1 &
  helpers+=($!)
  exec {fd}>"$fifo"
  port=""
  for _ in $(seq 1 600); do
    port=$(sed -n 's/^listening \([0-9]*\)$/\1/p' "$log")
    [ -n "$port" ] && return 0
    sleep 0.1
  done
  cat "$log" >&2
  echo "$name $* did not start" >&2
  exit 1
}

# Waits until the superpeer with pid $1 logs (to file $2) the address it listens on,
# and sets $url to it; exits if it dies first or takes over a minute.
wait_listening() {
  local pid=$1 log=$2
  url=""
  for _ in $(seq 1 600); do
    url=$(sed -n 's/.*superpeer listening on \(http:[^ ]*\).*/\1/p' "$log" | head -n1)
    [ -n "$url" ] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$log" >&2
      echo "superpeer exited before it was ready" >&2
      exit 1
    fi
    sleep 0.1
  done
  cat "$log" >&2
  echo "superpeer did not start in 60 s" >&2
  exit 1
}
