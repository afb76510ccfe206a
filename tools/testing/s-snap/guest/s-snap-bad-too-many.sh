# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,320K timeout=900
# Bad input: more snapshots than the store can hold. The COW device is tiny,
# so the snapshot table runs out of metadata space; the origin stays usable.
. /tests/lib
load_origin 8
i=0
while msg snapshot create $i 2>/tmp/err; do
	i=$((i + 1))
	[ $i -lt 20000 ] || fail "20000 snapshots fit in 320 KiB?"
done
cat /tmp/err
echo "created $i snapshots before the store was full"
[ $i -gt 64 ] || fail "only $i snapshots fit"
grep -q "No space left on device" /tmp/err || fail "wrong error"
expect_log "does not fit in the exception store"
count=$(dmsetup status work | cut -d' ' -f4)
[ "$count" = "$i" ] || fail "status counts $count snapshots, created $i"
# A full store must still be able to give its space back.
j=0
while [ $j -lt $i ]; do
	msg snapshot delete $j || fail "delete $j of a full store"
	j=$((j + 1))
done
[ "$(dmsetup status work | cut -d' ' -f4-)" = ": no snapshot" ] || fail "status: $(dmsetup status work)"
# The space of deleted snapshots comes back in the background.
wait_reclaimed
msg snapshot create 0 || fail "create after emptying the store"
dmsetup remove work
