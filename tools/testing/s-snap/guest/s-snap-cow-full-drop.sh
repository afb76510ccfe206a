# SPDX-License-Identifier: GPL-2.0
# vm: disks=96M,16M timeout=600
# The `drop` COW-full policy keeps the origin writable: when a copy finds no
# space, the snapshots that need it are dropped (logged, one event), the
# origin write goes on, the other snapshots keep their data exactly, a dropped
# snapshot's device returns EIO and `usage` marks it until it is deleted.
# The policy is kept on the COW device (message or feature argument), and bad
# values are refused with a log line. Then ext4 on the origin fills the COW
# device many times over without seeing an error.
. /tests/lib
modprobe dm_s_snap || fail "cannot load dm_s_snap"
n=$(blockdev --getsz /dev/vda)
base="0 $n s-snap-origin /dev/vda /dev/vdb S 128"
mib() { echo $(($1 * 1024 * 1024)); }

# Bad feature arguments and messages: refused with a log line.
bad_features "1 cow_full_policy" "Feature cow_full_policy needs error or drop"
bad_features "2 cow_full_policy sometimes" "Invalid cow_full_policy"
bad_features "2 cow_full_policy DROP" "Invalid cow_full_policy"
bad_features "4 cow_full_policy drop cow_full_policy error" "Feature cow_full_policy given twice"
bad_features "3 cow_full_policy drop low_water" "Feature low_water needs"
dmsetup info work >/dev/null 2>&1 && fail "a refused table left a device"

echo "$base" | dmsetup create work || fail "load"
[ "$(usage_field cow_full_policy)" = error ] ||
	fail "default policy: $(msg usage)"
dmesg -c >/dev/null
expect_fail "policy 'sometimes'" msg cow_full_policy sometimes
expect_log "invalid COW-full policy 'sometimes'"
expect_fail "policy without a value" msg cow_full_policy
msg cow_full_policy drop || fail "set the drop policy"
# Kept on the COW device: a table without feature arguments keeps it.
dmsetup remove work
echo "$base" | dmsetup create work || fail "reload"
[ "$(usage_field cow_full_policy)" = drop ] || fail "policy not kept: $(msg usage)"
[ "$(dmsetup table work | wc -w)" = 7 ] || fail "table: $(dmsetup table work)"

# Snapshot 1 gets copies of the first 12 MiB; snapshot 2 then shares all of it
# with the origin. Rewriting the first 4 MiB needs copies for snapshot 2 only,
# more than the COW device has left: snapshot 2 is dropped, snapshot 1 is not.
dd if=/dev/urandom of=/dev/mapper/work bs=1M count=16 oflag=direct 2>/dev/null || fail "fill origin"
msg snapshot create 1 || fail "create 1"
dd if=/dev/urandom of=/dev/mapper/work bs=64k count=192 oflag=direct 2>/dev/null || fail "write 12 MiB"
msg snapshot create 2 || fail "create 2"
snapshot_device 1
snapshot_device 2
sum1=$(md5sum </dev/mapper/snap1)
dd if=/dev/mapper/snap2 of=/dev/null bs=64k count=1 iflag=direct 2>/dev/null || fail "snapshot 2 unreadable before"
ev0=$(events)
rm -f /tmp/wait.rc
(
	timeout 120 dmsetup wait work "$ev0" >/dev/null 2>&1
	echo $? >/tmp/wait.rc
) &
dmesg -c >/dev/null
dd if=/dev/urandom of=/tmp/new bs=64k count=64 2>/dev/null
dd if=/tmp/new of=/dev/mapper/work bs=64k oflag=direct 2>/dev/null ||
	fail "an origin write failed under the drop policy"
sync
cmp /tmp/new /dev/mapper/work -n "$(mib 4)" || fail "origin lacks the writes"
expect_log "dropped snapshot 2"
dmesg | grep -q "dropped snapshot 1" && fail "snapshot 1 was dropped"
i=0
while [ ! -e /tmp/wait.rc ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ "$(cat /tmp/wait.rc 2>/dev/null)" = 0 ] || fail "dmsetup wait did not return on the drop"
[ "$(events)" -gt "$ev0" ] || fail "no event for the drop"
echo "ok: the drop raised event $(events)"
[ "$(usage_field dropped_snapshots)" = 1 ] || fail "usage: $(msg usage)"
[ "$(usage_field snapshots)" = 1 ] || fail "usage: $(msg usage)"
msg usage | grep -q "^snapshot 2 chunks [0-9]* active 1 dropped 1\$" ||
	fail "usage does not mark snapshot 2 dropped: $(msg usage)"
dmsetup status work | grep -q " 1 1\$" || fail "status lists: $(dmsetup status work)"
# The survivor holds its data exactly; the dropped snapshot's device fails.
[ "$(md5sum </dev/mapper/snap1)" = "$sum1" ] || fail "snapshot 1 changed"
expect_fail "a read of dropped snapshot 2" dd if=/dev/mapper/snap2 of=/dev/null bs=4k count=1 iflag=direct
expect_fail "a write to dropped snapshot 2" dd if=/dev/zero of=/dev/mapper/snap2 bs=4k count=1 oflag=direct
# Until deleted: its id is taken, it cannot be activated again, its space stays.
expect_fail "create over a dropped id" msg snapshot create 2
expect_fail "delete while its device is active" msg snapshot delete 2
dmsetup remove snap2
dmesg -c >/dev/null
expect_fail "activating a dropped snapshot" dmsetup create snap2 --table "0 $n s-snap /dev/vda 2"
expect_log "dropped when the COW device was full"
used=$(usage_field data_chunks)
msg snapshot delete 2 || fail "delete dropped snapshot 2"
wait_reclaimed
[ "$(usage_field dropped_snapshots)" = 0 ] || fail "usage: $(msg usage)"
[ "$(usage_field data_chunks)" -lt "$used" ] || fail "no space back: $used -> $(msg usage)"
msg snapshot create 2 || fail "the id of a deleted dropped snapshot is not free"
[ "$(md5sum </dev/mapper/snap1)" = "$sum1" ] || fail "snapshot 1 changed after the delete"
dmsetup remove snap1
dmsetup remove work
echo "ok: the drop policy dropped only the snapshot that needed the copy"

# ext4 on the origin, the policy as a feature argument on a fresh COW device:
# files written until the COW device filled several times over, no error.
dd if=/dev/zero of=/dev/vdb bs=1M count=1 oflag=direct 2>/dev/null
echo "$base 2 cow_full_policy drop" | dmsetup create work || fail "load with the feature"
[ "$(dmsetup table work | cut -d' ' -f8-)" = "2 cow_full_policy drop" ] ||
	fail "table does not give the feature back: $(dmsetup table work)"
[ "$(usage_field cow_full_policy)" = drop ] || fail "feature not applied: $(msg usage)"
mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/mapper/work || fail "mkfs"
mkdir -p /mnt/o
mount /dev/mapper/work /mnt/o || fail "mount"
dmesg -c >/dev/null
# Each round takes a snapshot, writes 20 MiB of files and removes those of
# the round before last, so that ext4 reuses their blocks.
round=0
while [ $round -lt 5 ]; do
	dmsetup suspend work && msg snapshot create $((10 + round)) && dmsetup resume work ||
		fail "snapshot in round $round"
	rm -f /mnt/o/r$((round - 2)).*
	for f in 0 1 2 3 4; do
		dd if=/dev/urandom of=/mnt/o/r$round.$f bs=1M count=4 conv=fsync 2>/dev/null ||
			fail "file write in round $round ($(df -m /mnt/o | tail -n 1))"
	done
	round=$((round + 1))
done
sync || fail "sync"
md5sum /mnt/o/r* >/tmp/sums
dmesg | grep -Ei "EXT4-fs (error|warning)|I/O error|read-only" && fail "ext4 saw an error"
[ "$(usage_field dropped_snapshots)" -ge 1 ] || fail "nothing dropped: $(msg usage)"
[ "$(usage_field cow_full)" = 0 ] || fail "an origin write failed: $(msg usage)"
umount /mnt/o
e2fsck -fn /dev/mapper/work >/tmp/fsck 2>&1 || { cat /tmp/fsck; fail "e2fsck"; }
mount /dev/mapper/work /mnt/o || fail "mount again"
md5sum -c -s /tmp/sums || fail "files changed"
umount /mnt/o
echo "ok: ext4 on the origin wrote $((round * 20)) MiB through a 16 MiB COW device, $(usage_field dropped_snapshots) snapshots dropped, no error"
dmsetup remove work
