# SPDX-License-Identifier: GPL-2.0
# vm: kunit=1 disks=16M timeout=600
# The kernel's KUnit tests: the Rust doc tests, run at boot (every
# `# Examples` of the kernel crate, those of the device-mapper, bio, dm-bufio,
# dm-kcopyd, table-event and crc32c abstractions among them), and the
# exception store's model test, the suite dm_s_snap_store, which runs when
# the dm_s_snap module is loaded.  Prints one "kunit: PASS|FAIL
# <suite>.<case>" line per test case, which make check counts; fails if any
# case failed, or if a module's examples or the store's suite did not run.
. /tests/lib
# The guest's init mounts debugfs.
[ -d /sys/kernel/debug/kunit ] || fail "no KUnit in this kernel (CONFIG_KUNIT_DEBUGFS)"
# Module suites run at load time, before modprobe returns.
modprobe dm_s_snap || fail "cannot load dm_s_snap"
[ -d /sys/kernel/debug/kunit/dm_s_snap_store ] ||
	fail "the store's KUnit suite did not run (CONFIG_DM_S_SNAP_KUNIT_TEST)"
: >/tmp/kunit
for results in /sys/kernel/debug/kunit/*/results; do
	suite=$(basename "$(dirname "$results")")
	# KTAP: test cases are the indented "ok N name" / "not ok N name" lines.
	awk -v suite="$suite" '
		/^[ \t]+(not )?ok [0-9]+ / {
			ok = ($1 == "ok")
			name = ok ? $3 : $4
			print (ok ? "PASS" : "FAIL"), suite "." name
		}' "$results" >>/tmp/kunit
done
sed 's/^/kunit: /' /tmp/kunit
total=$(wc -l </tmp/kunit)
failed=$(grep -c '^FAIL' /tmp/kunit || true)
[ "$total" -gt 0 ] || fail "no KUnit test case ran"
for module in device_mapper_rs device_mapper_bufio_rs device_mapper_kcopyd_rs \
	device_mapper_events_rs block_bio_rs crc32c_rs; do
	grep -q "_${module}_[0-9]*\$" /tmp/kunit ||
		fail "no doc test of rust/kernel/${module%_rs}.rs ran ($(echo "$module" | tr _ /))"
done
[ "$(grep -c '^[A-Z]* dm_s_snap_store\.' /tmp/kunit)" -ge 5 ] ||
	fail "fewer than 5 test cases of the store's suite ran"
[ "$failed" = 0 ] || fail "$failed of $total KUnit test cases failed"
echo "ok: $total KUnit test cases passed"
