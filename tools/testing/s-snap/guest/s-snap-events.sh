# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,8M
# Device-mapper events for monitors (`dmsetup wait`, dmeventd): with the
# feature argument `low_water <free chunks>` after the chunk size, free space
# falling to the mark raises one event (and again after space came back and
# fell again); the COW device becoming full raises one; the space of a
# deleted snapshot coming back raises one; the store failing raises one.  Malformed feature arguments are refused with a log line, and
# `dmsetup table` gives the arguments back.
. /tests/lib
modprobe dm_s_snap || fail "cannot load dm_s_snap"
n=$(blockdev --getsz /dev/vda)
cow_sectors=$(blockdev --getsz /dev/vdb)
echo "0 $cow_sectors linear /dev/vdb 0" | dmsetup create cowdev || fail "cowdev"
base="0 $n s-snap-origin /dev/vda /dev/mapper/cowdev S 128"


# Bad feature arguments: each refused, nothing created.
bad_features "1 low_water" "Feature low_water needs a number of free chunks"
bad_features "2 low_water 0" "Invalid low_water"
bad_features "2 low_water x" "Invalid low_water"
bad_features "2 low_water +5" "Invalid low_water"
bad_features "2 low_water 99999999999999999999999" "Invalid low_water"
bad_features "3 low_water 5" "Invalid feature argument count"
bad_features "x" "Invalid feature argument count"
bad_features "2 high_water 5" "Unknown feature argument"
bad_features "4 low_water 5 low_water 6" "Feature low_water given twice"
dmsetup info work >/dev/null 2>&1 && fail "a refused table left a device"

# The posting's table line still has no feature arguments and no mark.
echo "$base" | dmsetup create work || fail "load without features"
[ "$(dmsetup table work | wc -w)" = 7 ] || fail "table: $(dmsetup table work)"
[ "$(usage_field low_water)" = 0 ] || fail "usage without a mark: $(msg usage)"
free=$(usage_field free_chunks)
dmsetup remove work

# 16 chunks above the mark.
low=$((free - 16))
echo "$base 2 low_water $low" | dmsetup create work || fail "load with low_water $low"
[ "$(dmsetup table work | cut -d' ' -f8-)" = "2 low_water $low" ] ||
	fail "table does not give the features back: $(dmsetup table work)"
[ "$(usage_field low_water)" = "$low" ] || fail "usage: $(msg usage)"
msg snapshot create 1 || fail "create"
ev0=$(events)
# A monitor waits for the next event.
rm -f /tmp/wait.rc
(
	timeout 120 dmsetup wait work "$ev0" >/dev/null 2>&1
	echo $? >/tmp/wait.rc
) &
# Four first writes: above the mark, no event.
dd if=/dev/urandom of=/dev/mapper/work bs=64k count=4 oflag=direct 2>/dev/null || fail "write"
sleep 1
[ "$(events)" = "$ev0" ] || fail "an event above the mark: $(events) after $ev0 ($(msg usage))"
[ ! -e /tmp/wait.rc ] || fail "dmsetup wait returned before the mark"
# Thirty more: the mark is reached, once.
dd if=/dev/urandom of=/dev/mapper/work bs=64k seek=4 count=30 oflag=direct 2>/dev/null ||
	fail "write to the mark"
i=0
while [ ! -e /tmp/wait.rc ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ "$(cat /tmp/wait.rc 2>/dev/null)" = 0 ] || fail "dmsetup wait did not return on the mark"
ev1=$(events)
[ "$ev1" -gt "$ev0" ] || fail "no event at the mark"
expect_log "free space reached the low-water mark"
echo "ok: the low-water mark raised event $ev1"
dd if=/dev/urandom of=/dev/mapper/work bs=64k seek=34 count=4 oflag=direct 2>/dev/null ||
	fail "write below the mark"
[ "$(events)" = "$ev1" ] || fail "a second event below the mark: $(events)"

# Filling the COW device: one event when it is full.
dd if=/dev/urandom of=/dev/mapper/work bs=64k seek=38 oflag=direct 2>/dev/null &&
	fail "filling the COW device did not fail"
[ "$(usage_field cow_full)" = 1 ] || fail "not full: $(msg usage)"
ev2=$(events)
[ "$ev2" = $((ev1 + 1)) ] || fail "COW full raised events $ev1 -> $ev2, want one"
expect_log "COW device full"
echo "ok: the COW device becoming full raised event $ev2"

# Deleting the snapshot: one event when its space is back, so that a monitor
# need not poll usage.
ev=$(events)
msg snapshot delete 1 || fail "delete"
timeout 60 dmsetup wait work "$ev" >/dev/null 2>&1 ||
	fail "no event when the deleted snapshot's space came back: $(msg usage)"
[ "$(usage_field deleting_snapshots)" = 0 ] ||
	fail "the event came before the space was back: $(msg usage)"
[ "$(events)" = $((ev + 1)) ] || fail "the delete raised events $ev -> $(events), want one"
echo "ok: the deleted snapshot's space coming back raised event $(events)"

# Space comes back above the mark, then falls to it again: a new event.
ev2=$(events)
msg snapshot create 2 || fail "create 2"
dd if=/dev/urandom of=/dev/mapper/work bs=64k count=40 oflag=direct 2>/dev/null || fail "write again"
ev3=$(events)
[ "$ev3" -gt "$ev2" ] || fail "no event at the second crossing of the mark"
echo "ok: crossing the mark again raised event $ev3"

# The store fails (its device starts failing): one event.
echo "0 $cow_sectors error" | dmsetup load cowdev && dmsetup suspend cowdev &&
	dmsetup resume cowdev || fail "cannot fail cowdev"
expect_fail "snapshot create on a failing COW device" msg snapshot create 3
[ "$(usage_field failed)" = 1 ] || fail "store not failed: $(msg usage)"
ev4=$(events)
[ "$ev4" -gt "$ev3" ] || fail "no event when the store failed"
echo "ok: the store failing raised event $ev4"
dmsetup remove work
dmsetup remove cowdev
echo "ok: space and failure events"
