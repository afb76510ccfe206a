# SPDX-License-Identifier: GPL-2.0
# vm: disks=64M,64M
# Bad input: every refused message is logged with its reason at once
# (shared-snapshot.rst, "Messages"), also when a word is not UTF-8 and when the
# id is too long to be echoed in one log record. Found by s-snap-fuzz-args.
. /tests/lib
load_origin
bad=
dmesg -c >/dev/null
expect_fail "message with a word that is not UTF-8" msg snapshot create "$(printf '1\377')"
if dmesg | grep -q dm_s_snap; then
	echo "ok: the non-UTF-8 message is logged"
else
	echo "no kernel log line for the refused non-UTF-8 message"
	bad=1
fi
dmesg -c >/dev/null
expect_fail "2000-digit id" msg snapshot create "$(head -c 2000 /dev/zero | tr '\0' 1)"
if dmesg | grep -q "invalid snapshot id"; then
	echo "ok: the 2000-digit id is logged"
else
	echo "the reason for the 2000-digit id is not in the log (a record cut without its newline waits for the next one)"
	bad=1
fi
dmsetup remove work
[ -z "$bad" ] || fail "a refused message was not logged at once"
