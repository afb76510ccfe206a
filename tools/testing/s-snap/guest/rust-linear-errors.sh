# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad rust-linear tables are refused with the same errors as the C linear
# target, logged in the kernel log; nothing stays open, leaks or warns, and the
# module unloads afterwards.
. /tests/lib

modprobe rust_dm_linear || fail "cannot load rust_dm_linear"

# bad TABLE-ARGS EXPECTED-LOG [LEN]: both "linear" and "rust-linear" must refuse
# "0 LEN TYPE TABLE-ARGS" and log EXPECTED-LOG, in which TYPE stands for the
# target type's name: the Rust target's errors are the C target's.
bad() {
	for type in linear rust-linear; do
		want=$(echo "$2" | sed "s/TYPE/$type/")
		dmesg -c >/dev/null
		expect_fail "$type '$1'" sh -c "echo '0 ${3:-1024} $type $1' | dmsetup create bad"
		dmesg | grep -qF "$want" || { dmesg; fail "$type '$1': no '$want' in the kernel log"; }
		dmesg | grep -F "$want" | sed "s/^/  log: /"
		if dmsetup info bad >/dev/null 2>&1; then fail "device left behind"; fi
	done
}

bad "/dev/vdb" ": TYPE: Invalid argument count (-22)"
bad "" ": TYPE: Invalid argument count (-22)"
bad "/dev/vdb 0 0" ": TYPE: Invalid argument count (-22)"
bad "/dev/vdb abc" ": TYPE: Invalid device sector (-22)"
bad "/dev/vdb 12x" ": TYPE: Invalid device sector (-22)"
bad "/dev/vdb -1" ": TYPE: Invalid device sector (-22)"
bad "/dev/nonexistent 0" ": TYPE: Device lookup failed ("
# 64 MiB = 131072 sectors: ranges that end beyond vdb.
bad "/dev/vdb 131000" "vdb too small for target: start=131000, len=1024, dev_size=131072"
bad "/dev/vdb 0" "vdb too small for target: start=0, len=200000, dev_size=131072" 200000

# Nothing holds the disk: it can still be opened exclusively by a new table,
# and no holder links are left.
[ -z "$(ls /sys/block/vdb/holders)" ] || fail "vdb still held: $(ls /sys/block/vdb/holders)"
echo "0 8 rust-linear /dev/vdb 0" | dmsetup create good || fail "good table after errors"
dmsetup remove good || fail "remove"
[ -z "$(ls /sys/block/vdb/holders)" ] || fail "vdb still held after remove"

# A failed table load into an existing device keeps the live table.
echo "0 8 rust-linear /dev/vdb 0" | dmsetup create keep || fail "create keep"
expect_fail "reload with bad table" sh -c "echo '0 8 rust-linear /dev/vdb zz' | dmsetup reload keep"
dmsetup table keep | grep -q "rust-linear $(cat /sys/block/vdb/dev) 0" || fail "live table lost"
dmsetup remove keep || fail "remove keep"

# Messages are not supported, like C linear.
echo "0 8 rust-linear /dev/vdb 0" | dmsetup create msg || fail "create msg"
expect_fail "message" dmsetup message msg 0 hello
dmsetup remove msg || fail "remove msg"

rmmod rust_dm_linear || fail "rmmod after errors (a leaked reference?)"
echo "rust-linear-errors: ok"
