# SPDX-License-Identifier: GPL-2.0
# vm: disks=512M,640M timeout=600
# A flush to a snapshot device completes while other writers keep sending
# whole-chunk writes to fresh chunks of it (each one a new plan): new plans
# wait while a commit is wanted, so the commit the flush needs comes.  So does
# a snapshot creation, which waits for outstanding plans to drain.
. /tests/lib
load_origin 16
msg snapshot create 1 || fail "create 1"
snapshot_device 1
chunks=$(($(blockdev --getsz /dev/vda) / 16))
writers=8
per=$((chunks / writers))
# Each writer writes every chunk of its range once, 8 KiB (one chunk) at a
# time: every write is a whole-chunk first write.
pids=
for w in $(seq 0 $((writers - 1))); do
	dd if=/dev/zero of=/dev/mapper/snap1 bs=8k seek=$((w * per)) count=$per \
		oflag=direct 2>/dev/null &
	pids="$pids $!"
done
sleep 1
t0=$(date +%s)
timeout 60 dd if=/dev/urandom of=/dev/mapper/snap1 bs=4k count=1 seek=1 \
	oflag=direct 2>/dev/null || fail "a snapshot write did not complete"
echo "write: $(($(date +%s) - t0)) s"
timeout 60 dd if=/dev/urandom of=/dev/mapper/snap1 bs=4k count=1 seek=1 \
	oflag=direct conv=fsync 2>/dev/null || fail "a flushed snapshot write did not complete"
echo "flush: $(($(date +%s) - t0)) s"
timeout 60 dmsetup message work 0 snapshot create 2 || fail "snapshot create did not complete"
t1=$(date +%s)
running=0
for p in $pids; do
	kill -0 "$p" 2>/dev/null && running=$((running + 1))
done
echo "flush and create took $((t1 - t0)) s; $running of $writers writers still running"
[ "$running" -gt 0 ] ||
	fail "the writers finished before the flush: the test proves nothing (make the ranges longer)"
for p in $pids; do
	wait "$p" || fail "a whole-chunk writer failed"
done
[ "$(usage_field failed)" = 0 ] || fail "the store failed: $(msg usage)"
dmsetup remove snap1
dmsetup remove work
echo "ok: flushes and snapshot creation complete under a stream of whole-chunk writes"
