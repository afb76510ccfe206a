# SPDX-License-Identifier: GPL-2.0
# vm: disks=48M,48M,128M,48M,16M timeout=1500
# A power cut during a rollback's copy back. The origin (8 MiB) and the COW
# device (32 MiB) are two slices of one dm-log-writes device, so every write
# to either is logged in completion order in one log; the rollback to
# snapshot 1 runs over it to the end. Each prefix of the log at a flush or
# FUA entry (and a few in between) is a state a power cut can leave: rebuilt
# on a transient dm-snapshot (so checks never change the replayed disk), the
# store must check clean, the origin table load, the origin read as
# snapshot 1 at once, the rollback finish, and snapshot 2 be unchanged.
# (One log for both slices: a flush of either is a flush of both, so this
# checks the order of the writes, not which device is flushed.)
. /tests/lib
for m in dm-log-writes dm-snapshot dm_s_snap; do
	modprobe "$m" || fail "cannot load $m"
done

# slices DEV: devices "po" (origin, 8 MiB) and "pc" (COW, 32 MiB) on DEV.
slices() {
	dmsetup create po --table "0 16384 linear $1 0" || fail "origin slice"
	dmsetup create pc --table "0 65536 linear $1 16384" || fail "COW slice"
}

unslice() {
	dmsetup remove po
	dmsetup remove pc
}

origin_over_slices() {
	echo "0 16384 s-snap-origin /dev/mapper/po /dev/mapper/pc S 16" | dmsetup create work ||
		fail "cannot load s-snap-origin"
}

# snap_md5 ID: md5 of snapshot ID.
snap_md5() {
	echo "0 16384 s-snap /dev/mapper/po $1" | dmsetup create "snap$1" ||
		fail "cannot load snapshot $1"
	md5sum <"/dev/mapper/snap$1"
	dmsetup remove "snap$1"
}

# The state before the rollback, built without logging on /dev/vda.
dd if=/dev/zero of=/dev/vda bs=1M count=48 oflag=direct 2>/dev/null
slices /dev/vda
dd if=/dev/urandom of=/dev/mapper/po bs=1M count=8 oflag=direct 2>/dev/null || fail "fill origin"
origin_over_slices
msg snapshot create 1 || fail "create 1"
dd if=/dev/urandom of=/dev/mapper/work bs=1M count=6 oflag=direct 2>/dev/null || fail "origin write"
msg snapshot create 2 || fail "create 2"
dd if=/dev/urandom of=/dev/mapper/work bs=1M count=2 seek=5 oflag=direct 2>/dev/null ||
	fail "origin write"
sum1=$(snap_md5 1)
sum2=$(snap_md5 2)
[ "$(md5sum </dev/mapper/work)" != "$sum1" ] || fail "snapshot 1 equals the origin"
dmsetup remove work
unslice
dd if=/dev/vda of=/dev/vdb bs=1M count=48 oflag=direct 2>/dev/null || fail "keep the base"

sum0=$(dd if=/dev/vda bs=1M count=8 iflag=direct 2>/dev/null | md5sum)

# The rollback, logged.
dd if=/dev/zero of=/dev/vdc bs=1M count=1 oflag=direct 2>/dev/null
dmsetup create lw --table "0 98304 log-writes /dev/vda /dev/vdc" || fail "log-writes"
slices /dev/mapper/lw
origin_over_slices
msg snapshot rollback 1 || fail "rollback to 1"
total=$(usage_field rollback_chunks_total)
wait_rollback
[ "$(md5sum </dev/mapper/work)" = "$sum1" ] || fail "the origin is not snapshot 1 after the rollback"
dmsetup remove work
unslice
dmsetup remove lw
set -- $(s-snap-powercut replay --log /dev/vdc)
entries=$2
shift 3
echo "ok: the rollback of $total chunks wrote $entries log entries, $# flush points"
[ $# -gt 4 ] || fail "too few flush points: $*"

# States to check: about 16 flush points spread over the log, and the entry
# halfway to each from the one before.
step=$(($# / 16 + 1))
states=""
prev=0
i=0
for p in "$@"; do
	if [ $((i % step)) = 0 ]; then
		states="$states $(((prev + p) / 2)) $p"
		prev=$p
	fi
	i=$((i + 1))
done
dd if=/dev/vdb of=/dev/vdd bs=1M count=48 oflag=direct 2>/dev/null
applied=0
checked=0
resumed=0
for k in $states; do
	[ "$k" -gt "$applied" ] || continue
	# The log only adds: each state is the last one plus its entries.
	s-snap-powercut replay --log /dev/vdc --replay /dev/vdd --entries "$k" || fail "replay $k"
	applied=$k
	dmsetup create cut --table "0 98304 snapshot /dev/vdd /dev/vde N 8" || fail "scratch at $k"
	slices /dev/mapper/cut
	s-snap-tool check /dev/mapper/pc >/tmp/check.out 2>&1 ||
		{ cat /tmp/check.out; fail "check after $k entries"; }
	origin_over_slices
	now=$(md5sum </dev/mapper/work)
	if [ "$(usage_field rollback_snapshot)" = none ]; then
		# Cut before the message's commit (no rollback), or after the last chunk.
		[ "$now" = "$sum0" ] || [ "$now" = "$sum1" ] ||
			fail "after $k entries, no rollback and the origin is neither before nor after it"
	else
		resumed=$((resumed + 1))
		[ "$now" = "$sum1" ] || fail "after $k entries the origin does not read as snapshot 1"
	fi
	wait_rollback
	now2=$(md5sum </dev/mapper/work)
	[ "$now2" = "$now" ] || fail "after $k entries the origin changed while the rollback finished"
	[ "$(snap_md5 2)" = "$sum2" ] || fail "after $k entries snapshot 2 changed"
	[ "$(snap_md5 1)" = "$sum1" ] || fail "after $k entries snapshot 1 changed"
	dmsetup remove work
	s-snap-tool check /dev/mapper/pc >/tmp/check.out 2>&1 ||
		{ cat /tmp/check.out; fail "check after $k entries and the resumed rollback"; }
	unslice
	dmsetup remove cut
	checked=$((checked + 1))
done
[ "$resumed" -gt 2 ] || fail "only $resumed states cut the rollback in the middle"
echo "ok: $checked power-cut states of the rollback check clean and read as snapshot 1; $resumed resumed it"
