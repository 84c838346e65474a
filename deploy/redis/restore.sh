#!/bin/sh
# Restore fencex's Redis from a snapshot of backup.sh into the data directory of a STOPPED
# Redis, in the form the production configuration (appendonly yes) loads at its next start.
#
#   restore.sh BACKUP.rdb [DATA_DIR]     (DATA_DIR: /data by default)
#
# The trap it avoids: with appendonly yes, Redis loads the append-only file and ignores an RDB
# beside it, so copying the snapshot in as dump.rdb restores nothing (or, with no AOF, nothing
# that lasts). Instead, in a staging directory on the same file system, a private redis-server
# (no TCP port: a unix socket) loads the snapshot with AOF off; CONFIG SET appendonly yes
# writes the whole data set as a new append-only file; a second start with appendonly yes
# proves that file loads to the same number of keys. Only then is the data directory's old
# persistence (appendonly.aof*, appendonlydir, dump.rdb) moved aside into .replaced-<time>/
# (delete it once the restored Redis is verified) and the new one moved in.
# Needs redis-server and redis-cli of the same Redis version as (or newer than) the one that
# wrote the snapshot (REDIS_SERVER, REDIS_CLI override the names). POSIX sh (busybox).
set -eu

die() {
    echo "restore: $*" >&2
    if [ -n "${stage:-}" ] && [ -f "$stage/restore.log" ]; then tail -n 20 "$stage/restore.log" >&2; fi
    exit 1
}

[ $# -ge 1 ] || die "usage: restore.sh BACKUP.rdb [DATA_DIR]"
rdb=$1
data=${2:-${DATA_DIR:-/data}}
server=${REDIS_SERVER:-redis-server}
cli=${REDIS_CLI:-redis-cli}
[ -s "$rdb" ] || die "no snapshot at $rdb"
[ -d "$data" ] || die "no data directory $data"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
stage="$data/.restore-$stamp"
if ! mkdir "$stage"; then
    busy=$stage stage=
    die "$busy exists: another restore is running, or left it behind"
fi
run=$(mktemp -d)  # the socket's path must stay short (108 bytes)
sock="$run/redis.sock"
pid=
moving=
cleanup() {  # on failure before the move, nothing is left behind (the log's tail was printed)
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$run"
    if [ -z "$moving" ]; then rm -rf "$stage"; fi
}
trap cleanup EXIT
cp "$rdb" "$stage/dump.rdb"

start() {  # start a private redis-server on the staging directory: $1 is appendonly yes|no
    "$server" --port 0 --unixsocket "$sock" --unixsocketperm 700 --dir "$stage" --dbfilename dump.rdb \
        --appendonly "$1" --save "" --daemonize no --logfile "$stage/restore.log" &
    pid=$!
    tries=0
    until [ "$("$cli" -s "$sock" ping 2>/dev/null)" = PONG ]; do  # LOADING ... until it has read its files
        kill -0 "$pid" 2>/dev/null || die "redis-server exited (its log follows)"
        tries=$((tries + 1))
        [ "$tries" -lt 3000 ] || die "redis-server did not load within 10 minutes (its log follows)"
        sleep 0.2
    done
}

stop() {
    "$cli" -s "$sock" shutdown nosave >/dev/null 2>&1 || true
    wait "$pid" 2>/dev/null || true
    pid=
}

field() {  # a field of INFO persistence
    "$cli" -s "$sock" info persistence | tr -d '\r' | sed -n "s/^$1://p"
}

start no
keys=$("$cli" -s "$sock" dbsize)
[ "$(field loading)" = 0 ] || die "the snapshot did not load"
"$cli" -s "$sock" config set appendonly yes >/dev/null
tries=0
while [ "$(field aof_rewrite_in_progress)" != 0 ] || [ "$(field aof_rewrite_scheduled)" != 0 ]; do
    tries=$((tries + 1))
    [ "$tries" -lt 3000 ] || die "the append-only file was not written within 10 minutes"
    sleep 0.2
done
[ "$(field aof_last_bgrewrite_status)" = ok ] || die "writing the append-only file failed (its log follows)"
stop
rm "$stage/dump.rdb"

start yes  # what production will do: load the append-only file alone
again=$("$cli" -s "$sock" dbsize)
stop
[ "$again" = "$keys" ] || die "the new append-only file loads $again keys, the snapshot has $keys"

moving=1
aside="$data/.replaced-$stamp"
mkdir "$aside"
for f in "$data"/appendonly.aof* "$data"/appendonlydir "$data"/dump.rdb; do
    if [ -e "$f" ]; then mv "$f" "$aside/"; fi
done
for f in "$stage"/appendonly.aof* "$stage"/appendonlydir; do
    if [ -e "$f" ]; then mv "$f" "$data/"; fi
done
rm -rf "$stage"
echo "restore: $keys keys from $rdb in $data; the previous files are in $aside (delete them once verified)"
