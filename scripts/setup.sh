#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Install everything the kernel build, the VM, the tests and `make man` need:
# Debian packages and bindgen (pinned) from crates.io.  Idempotent: a second run only
# checks, and takes a second or two.
set -euo pipefail

BINDGEN_VERSION=0.73.2

PACKAGES=(
	linux-source-6.12
	rustc-web rust-web-src
	rust-web-clippy clang-19 lld-19 llvm-19 libclang-19-dev
	libelf-dev libssl-dev bc flex bison cpio kmod rsync
	busybox-static qemu-system-x86 dmsetup e2fsprogs util-linux fio
	python3-docutils linux-perf
)

die() { echo "setup: error: $*" >&2; exit 1; }

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
		missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing Debian packages: ${missing[*]}"
	SUDO=
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	$SUDO apt-get update -qq || die "apt-get update failed"
	if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >/tmp/s-snap-apt.log 2>&1; then
		tail -n 20 /tmp/s-snap-apt.log >&2
		still=()
		for p in "${missing[@]}"; do
			dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
				grep -q '^install ok installed$' || still+=("$p")
		done
		die "could not install Debian packages: ${still[*]} (log: /tmp/s-snap-apt.log)"
	fi
fi

command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) for the userspace crates"

BINDGEN="$HOME/.cargo/bin/bindgen"
if ! "$BINDGEN" --version 2>/dev/null | grep -q "bindgen $BINDGEN_VERSION\$"; then
	echo "setup: installing bindgen-cli $BINDGEN_VERSION from crates.io"
	# bindgen loads libclang at run time; point it at LLVM 19's.
	LIBCLANG_PATH=/usr/lib/llvm-19/lib cargo install --quiet --locked --force \
		bindgen-cli --version "$BINDGEN_VERSION" ||
		die "could not install bindgen-cli $BINDGEN_VERSION with cargo"
fi

[ -x /usr/bin/rustc ] || die "/usr/bin/rustc (Debian rustc-web) is missing"
echo "setup: all build and test dependencies are installed"
