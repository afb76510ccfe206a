# SPDX-License-Identifier: GPL-2.0
# vm: disks=32M,64M
# The answers map() reuses without the worker go stale exactly when the store
# changes them: an origin chunk found unshared is shared again by the next
# snapshot; a snapshot chunk found on the COW device moves when the snapshot
# writes to it; a store without snapshots gains one.  Each step below rewrites
# a chunk whose answer is cached and checks every view of it.
. /tests/lib

# put DEV BLOCK TEXT: write a 4 KiB block of TEXT; get DEV BLOCK: print it.
put() {
	yes "$3" | head -c 4096 | dd of="$1" bs=4096 seek="$2" count=1 oflag=direct \
		conv=notrunc 2>/dev/null || fail "write $3 to $1 block $2"
}
get() {
	dd if="$1" bs=4096 skip="$2" count=1 iflag=direct 2>/dev/null | head -n 1
}
expect() {
	got=$(get "$1" "$2")
	[ "$got" = "$3" ] || fail "$1 block $2 holds '$got', want '$3'"
}

load_origin
origin=/dev/mapper/work
# No snapshot yet: writes go straight through; the first snapshot must still
# see the data of its creation, not what is written after it.
put $origin 10 a0
put $origin 10 a1
msg snapshot create 1 || fail "create 1"
put $origin 10 a2
expect $origin 10 a2
# Chunk 10 is now copied for snapshot 1: rewrites take the cached answer...
put $origin 10 a3
put $origin 10 a4
# ...until snapshot 2 shares the chunk again.
msg snapshot create 2 || fail "create 2"
put $origin 10 a5
snapshot_device 1
snapshot_device 2
expect /dev/mapper/snap1 10 a1
expect /dev/mapper/snap2 10 a4
expect $origin 10 a5
echo "ok: a snapshot created after cached rewrites keeps the data of its creation"

# Snapshot reads of copied chunks are served from the cache after the first
# one; a snapshot write moves (or overwrites) the chunk and is seen at once.
expect /dev/mapper/snap1 10 a1
put /dev/mapper/snap1 10 s1
expect /dev/mapper/snap1 10 s1
expect /dev/mapper/snap2 10 a4
put /dev/mapper/snap2 10 s2
expect /dev/mapper/snap2 10 s2
expect /dev/mapper/snap1 10 s1
put /dev/mapper/snap1 10 s3
expect /dev/mapper/snap1 10 s3
echo "ok: snapshot writes are seen by the cached snapshot reads that follow"

# Delete snapshot 2 and create another with the same id: it must not inherit
# the old snapshot's cached chunks.
dmsetup remove snap2
msg snapshot delete 2 || fail "delete 2"
msg snapshot create 2 || fail "create 2 again"
snapshot_device 2
expect /dev/mapper/snap2 10 a5
dmsetup remove snap2
dmsetup remove snap1

# Deleting every snapshot makes all writes direct; a new snapshot after that
# is protected again.
msg snapshot delete 1 || fail "delete 1"
msg snapshot delete 2 || fail "delete 2"
put $origin 20 b0
msg snapshot create 3 || fail "create 3"
put $origin 20 b1
snapshot_device 3
expect /dev/mapper/snap3 20 b0
expect /dev/mapper/snap3 10 a5
expect $origin 20 b1
dmsetup remove snap3

# Everything above is also what the store committed.
dmsetup remove work
load_origin
snapshot_device 3
expect /dev/mapper/snap3 20 b0
expect $origin 20 b1
dmsetup remove snap3
dmsetup remove work
echo "s-snap-map-cache: ok"
