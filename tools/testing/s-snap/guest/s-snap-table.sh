# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# dmsetup table prints each table back (devices as major:minor, like every dm
# target), and the usage message replies with the space figures.
. /tests/lib
load_origin 32
n=$(blockdev --getsz /dev/vda)
vda=$(cat /sys/block/vda/dev)
vdb=$(cat /sys/block/vdb/dev)
want="0 $n s-snap-origin $vda $vdb S 32"
[ "$(dmsetup table work)" = "$want" ] || fail "origin table '$(dmsetup table work)', want '$want'"
msg snapshot create 7 || fail "create"
snapshot_device 7
want="0 $n s-snap $vda 7"
[ "$(dmsetup table snap7)" = "$want" ] || fail "snapshot table '$(dmsetup table snap7)', want '$want'"
[ "$(dmsetup status snap7)" = "0 $n s-snap Unknown" ] || fail "status '$(dmsetup status snap7)'"
# dmsetup deps prints devices as "(major, minor)".
dmsetup deps snap7 | grep -qF "($(echo $vdb | sed 's/:/, /'))" ||
	fail "the snapshot does not hold the COW device: $(dmsetup deps snap7)"
msg usage >/tmp/usage || fail "usage message"
cat /tmp/usage
head -n 1 /tmp/usage | grep -q "^chunk_sectors 32 total_chunks [0-9]* used_chunks [0-9]* " ||
	fail "usage line"
grep -qx "snapshot 7 chunks 0 active 1" /tmp/usage || fail "per-snapshot usage line"
# A table reload of the active origin shares the open store.
origin_table 32 | dmsetup load work || fail "reload"
dmsetup resume work || fail "resume after reload"
[ "$(dmsetup status work | cut -d' ' -f4-)" = "1 7" ] || fail "status after reload"
dmsetup remove snap7
dmsetup remove work
# Every pool is gone with its targets: the module unloads.
rmmod dm_s_snap || fail "module unload"
echo "s-snap-table: ok"
