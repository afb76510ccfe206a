# SPDX-License-Identifier: GPL-2.0
# vm: disks=131078s,64M
# An origin whose size is not a multiple of the chunk size (131078 sectors,
# 8 KiB chunks: the last chunk has 6 sectors, as with the posting's
# 268430022-sector origin). Origin writes and snapshot writes to the last
# chunk copy only the sectors that exist, the store keeps working, and the
# origin and every snapshot read what they must, also after a reload.
. /tests/lib
sectors=$(blockdev --getsz /dev/vda)
[ "$sectors" = 131078 ] || fail "origin has $sectors sectors, want 131078"
last=131072
dd if=/dev/urandom of=/dev/vda bs=512 count="$sectors" oflag=direct 2>/dev/null ||
	fail "cannot fill the origin"

# tail DEVICE FILE: the 6 sectors of the last chunk of DEVICE into FILE.
tail6() {
	dd if="$1" of="$2" bs=512 skip=$last count=6 iflag=direct 2>/dev/null ||
		fail "cannot read the last chunk of $1"
}
# put6 FILE DEVICE: write FILE over the last chunk of DEVICE.
put6() {
	dd if="$1" of="$2" bs=512 seek=$last count=6 oflag=direct 2>/dev/null ||
		fail "write to the last chunk of $2 failed"
}
same() {
	cmp "$1" "$2" >/dev/null || fail "$3"
}

tail6 /dev/vda /tmp/v0
load_origin 16
msg snapshot create 1 || fail "create 1"
msg snapshot create 2 || fail "create 2"
snapshot_device 1

# An origin write to the last chunk copies its 6 sectors for snapshots 1 and 2.
dd if=/dev/urandom of=/tmp/v1 bs=512 count=6 2>/dev/null
put6 /tmp/v1 /dev/mapper/work
tail6 /dev/mapper/work /tmp/r
same /tmp/r /tmp/v1 "origin does not read its new last chunk"
tail6 /dev/mapper/snap1 /tmp/r
same /tmp/r /tmp/v0 "snapshot 1 lost the old last chunk"
[ "$(usage_field failed)" = 0 ] || fail "the store failed: $(msg usage)"
echo "ok: origin write to the partial last chunk"

# Snapshot 1 writes its last chunk (now a COW chunk shared with snapshot 2):
# an unshare from the COW device.
dd if=/dev/urandom of=/tmp/s1 bs=512 count=6 2>/dev/null
put6 /tmp/s1 /dev/mapper/snap1
tail6 /dev/mapper/snap1 /tmp/r
same /tmp/r /tmp/s1 "snapshot 1 does not read its own last chunk"

# Snapshot 3 shares the last chunk with the origin: its write unshares from
# the origin, with the clamped length too.
msg snapshot create 3 || fail "create 3"
snapshot_device 3
dd if=/dev/urandom of=/tmp/s3 bs=512 count=6 2>/dev/null
put6 /tmp/s3 /dev/mapper/snap3
tail6 /dev/mapper/snap3 /tmp/r
same /tmp/r /tmp/s3 "snapshot 3 does not read its own last chunk"
tail6 /dev/mapper/work /tmp/r
same /tmp/r /tmp/v1 "a snapshot write changed the origin"
[ "$(usage_field failed)" = 0 ] || fail "the store failed: $(msg usage)"
echo "ok: snapshot writes to the partial last chunk"

# The rest of the device still works: a first write elsewhere copies.
dd if=/dev/urandom of=/dev/mapper/work bs=4096 count=4 seek=100 oflag=direct 2>/dev/null ||
	fail "origin write after the last-chunk writes"

# Everything persists across a reload.
dmsetup remove snap1
dmsetup remove snap3
dmsetup remove work
load_origin 16
snapshot_device 1
snapshot_device 2
snapshot_device 3
for check in "work v1" "snap1 s1" "snap2 v0" "snap3 s3"; do
	set -- $check
	tail6 "/dev/mapper/$1" /tmp/r
	same /tmp/r "/tmp/$2" "$1 reads the wrong last chunk after a reload"
done
echo "ok: last chunks persist across a reload"
dmsetup remove snap1
dmsetup remove snap2
dmsetup remove snap3
dmsetup remove work
