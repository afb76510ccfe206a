# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,192M,192M,16M,192M timeout=900
# Growing the COW device online: the origin table is loaded again (or
# suspended and resumed) over a larger COW device, and the store uses the new
# space, with writes going on meanwhile and the snapshots intact. Shrinking is
# refused. A power cut at any write of the growth (dm-log-writes, every prefix
# of the log) leaves a store that checks clean at the old size or the new one,
# holds the snapshot's data and finishes the growth when loaded.
. /tests/lib
for m in dm-log-writes dm_s_snap; do
	modprobe "$m" || fail "cannot load $m"
done
n=$(blockdev --getsz /dev/vda)
origin_table() { echo "0 $n s-snap-origin /dev/vda $1 S 128"; }

# 100 MiB of the 192 MiB COW disk, 64 KiB chunks: 1600 chunks, one bitmap
# block (it covers 127 MiB); the whole disk needs a second one.
dmsetup create cow --table "0 204800 linear /dev/vdb 0" || fail "cow slice"
origin_table /dev/mapper/cow | dmsetup create work || fail "load"
dd if=/dev/urandom of=/dev/mapper/work bs=1M count=64 oflag=direct 2>/dev/null || fail "fill origin"
msg snapshot create 1 || fail "create"
[ "$(usage_field total_chunks)" = 1600 ] || fail "usage: $(msg usage)"
snapshot_device 1
sum1=$(md5sum </dev/mapper/snap1)
# Rewriting the origin twice, with a snapshot between, fills the COW device
# (1024 copies each time).
dd if=/dev/urandom of=/dev/mapper/work bs=1M count=64 oflag=direct 2>/dev/null ||
	fail "write before snapshot 2"
msg snapshot create 2 || fail "create 2"
dd if=/dev/urandom of=/dev/mapper/work bs=1M count=64 oflag=direct 2>/dev/null &&
	fail "the COW device did not fill"
[ "$(usage_field cow_full)" = 1 ] || fail "not full: $(msg usage)"
dd if=/dev/mapper/work of=/tmp/origin.before bs=1M count=64 iflag=direct 2>/dev/null

# Online: a writer rewrites chunks that need no copy while the COW device
# grows and the origin table is loaded again.
dd if=/dev/urandom of=/tmp/rewrite bs=64k count=64 2>/dev/null
(
	i=0
	while [ $i -lt 20 ]; do
		dd if=/tmp/rewrite of=/dev/mapper/work bs=64k count=64 oflag=direct 2>/dev/null ||
			{ echo fail >/tmp/writer.rc; exit 1; }
		i=$((i + 1))
	done
	echo ok >/tmp/writer.rc
) &
writer=$!
dmesg -c >/dev/null
dmsetup reload cow --table "0 393216 linear /dev/vdb 0" && dmsetup resume cow || fail "grow cow"
dmsetup table work | dmsetup load work && dmsetup resume work || fail "reload origin"
wait $writer
[ "$(cat /tmp/writer.rc)" = ok ] || fail "a write failed while the store grew"
expect_log "exception store grew from 1600 to 3072 chunks"
[ "$(usage_field total_chunks)" = 3072 ] || fail "usage after growth: $(msg usage)"
# The new space takes copies.
dd if=/dev/urandom of=/tmp/more bs=1M count=32 2>/dev/null
dd if=/tmp/more of=/dev/mapper/work bs=1M seek=8 oflag=direct 2>/dev/null ||
	fail "first writes after growth: $(msg usage)"
[ "$(usage_field cow_full)" = 0 ] || fail "still full: $(msg usage)"
cmp -n 4194304 /tmp/rewrite /dev/mapper/work >/dev/null || fail "origin lacks the writes made during growth"
cmp -n 33554432 /tmp/more /dev/mapper/work 0 8388608 >/dev/null || fail "origin lacks the writes after growth"
[ "$(md5sum </dev/mapper/snap1)" = "$sum1" ] || fail "snapshot 1 changed"
[ "$(dmsetup status work | cut -d' ' -f4-)" = "2 1 2" ] || fail "status: $(dmsetup status work)"
dmsetup remove snap1
dmsetup remove work
s-snap-tool check /dev/mapper/cow || fail "check after growth"

# Shrinking is refused, nothing written.
dmsetup reload cow --table "0 204800 linear /dev/vdb 0" && dmsetup resume cow || fail "shrink cow"
sum_cow=$(md5sum </dev/mapper/cow)
dmesg -c >/dev/null
expect_fail "a store on a shrunk COW device" dmsetup create work --table "$(origin_table /dev/mapper/cow)"
expect_log "COW device is smaller than the exception store needs"
[ "$(md5sum </dev/mapper/cow)" = "$sum_cow" ] || fail "a refused load wrote to the COW device"
dmsetup remove cow
echo "ok: the store grew online from 1600 to 3072 chunks and refuses to shrink"

# Power cuts during growth. A store of 1600 chunks with a snapshot, its COW
# disk copied to /dev/vdc; the growth to 3072 chunks is logged on /dev/vdd.
dd if=/dev/zero of=/dev/vdb bs=1M count=1 oflag=direct 2>/dev/null
dmsetup create cow --table "0 204800 linear /dev/vdb 0" || fail "cow slice"
origin_table /dev/mapper/cow | dmsetup create work || fail "load for the power cuts"
msg snapshot create 1 || fail "create"
dd if=/dev/urandom of=/dev/mapper/work bs=1M count=16 oflag=direct 2>/dev/null || fail "write"
snapshot_device 1
sum1=$(md5sum </dev/mapper/snap1)
dmsetup remove snap1
dmsetup remove work
dmsetup remove cow
dd if=/dev/vdb of=/dev/vdc bs=1M oflag=direct 2>/dev/null || fail "copy the COW disk"
dmsetup create lw --table "0 393216 log-writes /dev/vdb /dev/vdd" || fail "log-writes"
origin_table /dev/mapper/lw | dmsetup create work || fail "load over the log"
[ "$(usage_field total_chunks)" = 3072 ] || fail "not grown: $(msg usage)"
dmsetup remove work
dmsetup remove lw
set -- $(s-snap-powercut replay --log /dev/vdd)
entries=$2
shift 3
echo "ok: the growth wrote $entries log entries, flush points: $*"
[ "$entries" -gt 3 ] || fail "too few log entries"
dd if=/dev/vdc of=/dev/vde bs=1M oflag=direct 2>/dev/null
k=0
old=0
new=0
while [ $k -le "$entries" ]; do
	# The log only adds: each state is the last one plus one entry.
	s-snap-powercut replay --log /dev/vdd --replay /dev/vde --entries $k || fail "replay $k"
	s-snap-tool check /dev/vde >/tmp/check.out 2>&1 || { cat /tmp/check.out; fail "check after $k entries"; }
	chunks=$(s-snap-tool dump /dev/vde | sed -n 's/^  chunks  *//p')
	case "$chunks" in
	1600) old=$((old + 1)) ;;
	3072) new=$((new + 1)) ;;
	*) fail "after $k entries the store has $chunks chunks" ;;
	esac
	k=$((k + 1))
done
[ $old -gt 0 ] && [ $new -gt 0 ] || fail "states: $old old, $new new"
echo "ok: $((entries + 1)) power-cut states check clean: $old at the old size, $new at the new"
# Loading a state cut in the middle: the growth is done again, the snapshot intact.
for k in 1 $((entries / 2)) $((entries - 1)); do
	dd if=/dev/vdc of=/dev/vde bs=1M oflag=direct 2>/dev/null
	s-snap-powercut replay --log /dev/vdd --replay /dev/vde --entries $k || fail "replay $k"
	origin_table /dev/vde | dmsetup create work || fail "load after a cut at $k"
	[ "$(usage_field total_chunks)" = 3072 ] || fail "cut at $k: not grown: $(msg usage)"
	snapshot_device 1
	[ "$(md5sum </dev/mapper/snap1)" = "$sum1" ] || fail "cut at $k: snapshot 1 changed"
	dmsetup remove snap1
	dmsetup remove work
	s-snap-tool check /dev/vde || fail "cut at $k: check after the reload"
done
echo "ok: power cuts during growth"
