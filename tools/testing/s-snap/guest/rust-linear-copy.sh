# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# The Rust dm-bufio and dm-kcopyd wrappers, through the rust-copy sample target
# (a linear mapping whose messages copy sectors with kcopyd and read and write
# blocks with bufio): data lands where it should and the module unloads.
. /tests/lib

modprobe rust_dm_copy || fail "cannot load rust_dm_copy"
# 16 MiB (32768 sectors) from 1 MiB (2048 sectors) into vdb.
echo "0 32768 rust-copy /dev/vdb 2048" | dmsetup create rc || fail "dmsetup create rust-copy"
dmsetup status rc | grep -qx "0 32768 rust-copy copies=0 errors=0 released=0" || fail "status: $(dmsetup status rc)"

# kcopyd, synchronous: 64 sectors at sector 800 of the mapping to sector 4000.
dd if=/dev/urandom of=/tmp/data bs=4096 count=8 2>/dev/null
dd if=/tmp/data of=/dev/mapper/rc bs=4096 seek=100 oflag=direct 2>/dev/null || fail "write source"
dmsetup message rc 0 copy 800 4000 64 || fail "copy message"
dd if=/dev/mapper/rc of=/tmp/copied bs=512 skip=4000 count=64 iflag=direct 2>/dev/null
cmp /tmp/data /tmp/copied || fail "kcopyd copy differs"
# And on the disk, at the target's offset.
dd if=/dev/vdb of=/tmp/copied bs=512 skip=6048 count=64 iflag=direct 2>/dev/null
cmp /tmp/data /tmp/copied || fail "kcopyd copy not at the offset on vdb"

# kcopyd, asynchronous with a completion closure: wait for the counter.
dmsetup message rc 0 copy-async 800 9000 64 || fail "copy-async message"
for i in $(seq 50); do
	dmsetup status rc | grep -q "copies=2 errors=0" && break
	sleep 0.1
done
dmsetup status rc | grep -q "copies=2 errors=0" || fail "async copy not completed: $(dmsetup status rc)"
dd if=/dev/mapper/rc of=/tmp/copied bs=512 skip=9000 count=64 iflag=direct 2>/dev/null
cmp /tmp/data /tmp/copied || fail "async kcopyd copy differs"

# Bad copies are refused.
expect_fail "copy beyond the target" dmsetup message rc 0 copy 0 32760 64
expect_fail "copy without a count" dmsetup message rc 0 copy 0 100
expect_fail "unknown message" dmsetup message rc 0 frobnicate

# bufio write: block 7 of the mapping filled with 0xa5 (165), then on the disk.
dmsetup message rc 0 fill 7 165 || fail "fill message"
printf '\245%.0s' $(seq 4096) >/tmp/a5
[ "$(wc -c </tmp/a5)" = 4096 ] || fail "test pattern"
# Block 7 of the mapping is block 256 + 7 of vdb (offset 1 MiB).
same_bytes /tmp/a5 /dev/vdb 0 263 1 || fail "bufio fill not on the disk"
same_bytes /tmp/a5 /dev/mapper/rc 0 7 1 || fail "bufio fill not seen through the target"

# bufio read: the reply is bytes 0-7 in hex and the byte sum of block 100.
reply=$(dmsetup message rc 0 read 100) || fail "read message"
want_hex=$(dd if=/tmp/data bs=8 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')
want_sum=$(dd if=/tmp/data bs=4096 count=1 2>/dev/null | od -An -tu1 -v |
	awk '{for (i = 1; i <= NF; i++) s += $i} END {print s}')
echo "read reply: $reply (want $want_hex $want_sum)"
[ "$reply" = "$want_hex $want_sum" ] || fail "bufio read reply '$reply' != '$want_hex $want_sum'"
reply=$(dmsetup message rc 0 read 7) || fail "read message"
[ "$reply" = "a5a5a5a5a5a5a5a5 $((165 * 4096))" ] || fail "bufio read of the filled block: '$reply'"
expect_fail "read beyond the target" dmsetup message rc 0 read 4096

# kcopyd refuses copies whose regions differ in length or are empty: kcopyd
# sizes its pages by the first destination and walks them for every region
# (a longer source oopsed in the kcopyd worker, a shorter one wrote
# uninitialised pages, an empty one hung kcopyd_get_pages()).
expect_fail "copy with a longer source" dmsetup message rc 0 copy-lengths 0 2000 64 8
expect_fail "copy with a longer destination" dmsetup message rc 0 copy-lengths 0 2000 8 64
expect_fail "empty copy" dmsetup message rc 0 copy-lengths 0 2000 0 0
dmsetup status rc | grep -q "copies=2 errors=0" || fail "a refused copy ran: $(dmsetup status rc)"

# A kcopyd client whose last reference goes in its own completion, and a work
# queue whose last reference goes in its own work item: each would wait for
# itself if destroyed there at once.
dmsetup message rc 0 copy-last-ref 800 12000 64 || fail "copy-last-ref message"
dmsetup message rc 0 queue-last-ref || fail "queue-last-ref message"
for i in $(seq 100); do
	dmsetup status rc | grep -q "released=2" && break
	sleep 0.1
done
dmsetup status rc | grep -q "errors=0 released=2" ||
	fail "client or queue not released by its own completion: $(dmsetup status rc)"
dd if=/dev/mapper/rc of=/tmp/copied bs=512 skip=12000 count=64 iflag=direct 2>/dev/null
cmp /tmp/data /tmp/copied || fail "copy-last-ref copy differs"

# The context is shared by all targets of the type: a second device sees the counters.
echo "0 2048 rust-copy /dev/vda 0" | dmsetup create rc2 || fail "create second rust-copy"
dmsetup message rc2 0 copy 0 1024 8 || fail "copy on the second device"
dmsetup status rc | grep -q "copies=3 errors=0" || fail "shared context: $(dmsetup status rc)"
dmsetup remove rc2 || fail "remove rc2"

dmsetup remove rc || fail "dmsetup remove"
# The deferred destructions above hold the module until they are done.
for i in $(seq 50); do
	rmmod rust_dm_copy 2>/dev/null && break
	sleep 0.1
done
[ ! -e /sys/module/rust_dm_copy ] || fail "rmmod rust_dm_copy"
echo "rust-linear-copy: ok"
