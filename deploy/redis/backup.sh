#!/bin/sh
# One backup of fencex's Redis: an RDB snapshot taken over the network (redis-cli --rdb, as a
# replica's first sync: Redis forks, nothing is paused), checked, kept under a UTC timestamp,
# and only the newest BACKUP_KEEP snapshots kept. POSIX sh (the redis image's busybox).
# Run by the CronJob redis-backup (Kubernetes) and the redis-backup service (compose).
#
#   REDIS_HOST (redis)  REDIS_PORT (6379)  BACKUP_DIR (/backup)  BACKUP_KEEP (24)
#
# A snapshot is written to a .part file and renamed when complete and checked
# (redis-check-rdb, where installed), so a file named redis-*.rdb is always a whole one; a failed
# run prunes nothing. Restore one with deploy/redis/restore.sh (deploy/README.md says how).
set -eu

host=${REDIS_HOST:-redis}
port=${REDIS_PORT:-6379}
dir=${BACKUP_DIR:-/backup}
keep=${BACKUP_KEEP:-24}

case $keep in
'' | *[!0-9]* | 0) echo "backup: BACKUP_KEEP must be a whole number of at least 1, not '$keep'" >&2; exit 2 ;;
esac

stamp=$(date -u +%Y%m%dT%H%M%SZ)
file="$dir/redis-$stamp.rdb"
part="$file.part"
if [ -e "$file" ]; then
    echo "backup: $file exists already (two runs in one second?)" >&2
    exit 1
fi
trap 'rm -f "$part"' EXIT

redis-cli -h "$host" -p "$port" --rdb "$part" >&2
if command -v redis-check-rdb >/dev/null 2>&1; then
    redis-check-rdb "$part" >/dev/null || { echo "backup: $part does not check (redis-check-rdb)" >&2; exit 1; }
fi
mv "$part" "$file"
trap - EXIT

# the newest $keep stay: the names sort by time
ls -1 "$dir" | grep -E '^redis-[0-9]{8}T[0-9]{6}Z\.rdb$' | sort -r | tail -n +"$((keep + 1))" | while read -r old; do
    rm -f "$dir/$old"
done
echo "backup: $file ($(wc -c <"$file" | tr -d ' ') bytes); $(ls -1 "$dir" | grep -cE '^redis-.*\.rdb$') kept in $dir"
