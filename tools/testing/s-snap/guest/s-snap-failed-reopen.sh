# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,32M
# A failed store comes back: the COW device (a linear device here) starts
# failing, a commit fails and the store is marked failed; once the device
# works again, loading the origin table again reopens the store at its last
# commit, with the snapshots and their data intact.
. /tests/lib
modprobe dm_s_snap || fail "cannot load dm_s_snap"
cow_sectors=$(blockdev --getsz /dev/vdb)
echo "0 $cow_sectors linear /dev/vdb 0" | dmsetup create cowdev || fail "cowdev"
table="0 $(blockdev --getsz /dev/vda) s-snap-origin /dev/vda /dev/mapper/cowdev S 16"
dd if=/dev/urandom of=/dev/vda bs=64k count=64 oflag=direct 2>/dev/null || fail "fill origin"
echo "$table" | dmsetup create work || fail "cannot load s-snap-origin"

msg snapshot create 1 || fail "create 1"
dd if=/dev/vda of=/tmp/old bs=4096 count=16 iflag=direct 2>/dev/null
dd if=/dev/urandom of=/dev/mapper/work bs=4096 count=16 oflag=direct conv=fsync 2>/dev/null ||
	fail "origin write"
dd if=/dev/mapper/work of=/tmp/new bs=4096 count=16 iflag=direct 2>/dev/null

# The COW device fails: the next commit fails and the store with it.
swap_cow() {
	dmsetup suspend cowdev && echo "$1" | dmsetup load cowdev && dmsetup resume cowdev ||
		fail "cannot switch cowdev to '$1'"
}
swap_cow "0 $cow_sectors error"
expect_fail "snapshot create on a failing COW device" msg snapshot create 2
expect_log "exception store failed"
[ "$(usage_field failed)" = 1 ] || fail "store not marked failed: $(msg usage)"
expect_fail "origin write needing the failed store" \
	dd if=/dev/zero of=/dev/mapper/work bs=4096 count=1 seek=200 oflag=direct

# The device works again, but the failed store stays failed until the table
# is loaded again.
swap_cow "0 $cow_sectors linear /dev/vdb 0"
[ "$(usage_field failed)" = 1 ] || fail "store recovered without a reload"
# The documented way: load the same table again.
dmsetup table work | dmsetup load work || fail "reload of the origin table refused"
dmsetup resume work || fail "resume after reload"
expect_log "exception store reopened at its last commit"
[ "$(usage_field failed)" = 0 ] || fail "reload did not reopen the store: $(msg usage)"
[ "$(dmsetup status work | cut -d' ' -f4-)" = "1 1" ] ||
	fail "snapshots after reopen: $(dmsetup status work)"
snapshot_device 1
dd if=/dev/mapper/snap1 of=/tmp/r bs=4096 count=16 iflag=direct 2>/dev/null
cmp /tmp/r /tmp/old >/dev/null || fail "snapshot 1 lost its data"
dd if=/dev/mapper/work of=/tmp/r bs=4096 count=16 iflag=direct 2>/dev/null
cmp /tmp/r /tmp/new >/dev/null || fail "origin lost its data"
echo "ok: snapshots and origin intact after reopen"

# And it works as before: writes that copy, a new snapshot.
dd if=/dev/urandom of=/dev/mapper/work bs=4096 count=4 seek=200 oflag=direct 2>/dev/null ||
	fail "origin write after reopen"
msg snapshot create 2 || fail "create 2 after reopen"
dmsetup remove snap1
dmsetup remove work
echo "$table" | dmsetup create work || fail "load after reopen"
[ "$(dmsetup status work | cut -d' ' -f4-)" = "2 1 2" ] ||
	fail "snapshots after a clean reload: $(dmsetup status work)"

# A store that is gone (its superblocks zeroed) is never formatted by a
# reopen: the load is refused and the store stays failed.
swap_cow "0 $cow_sectors error"
expect_fail "snapshot create on a failing COW device" msg snapshot create 3
[ "$(usage_field failed)" = 1 ] || fail "store not marked failed again: $(msg usage)"
dd if=/dev/zero of=/dev/vdb bs=64k count=16 oflag=direct 2>/dev/null || fail "zero the COW"
swap_cow "0 $cow_sectors linear /dev/vdb 0"
expect_fail "reopen over a zeroed COW device" sh -c 'dmsetup table work | dmsetup load work'
expect_log "not an exception store"
[ "$(usage_field failed)" = 1 ] || fail "store no longer failed: $(msg usage)"
dmsetup remove work
dmsetup remove cowdev
