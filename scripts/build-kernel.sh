#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build the guest kernel with this repository's kernel-side code in it.
#
# Debian's linux-source-6.12 is unpacked once into a cache directory outside
# the repository (one tree per package version).  On every run the repository's
# new kernel files are copied into the tree (only when their contents differ,
# so that make sees unchanged files as unchanged), the patches in patches/ are
# re-applied to pristine copies of the files they touch, the configuration is
# regenerated only when kernel/configs/s_snap.config changed, and make rebuilds
# what changed.  Prints the tree's path on the last line.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
. "$REPO/scripts/env.sh"

die() { echo "build-kernel: error: $*" >&2; exit 1; }
log() { echo "build-kernel: $*" >&2; }

[ -f /usr/src/linux-source-6.12.tar.xz ] || die "linux-source-6.12 is not installed: run scripts/setup.sh"

# 1. Unpack (once per package version).
if [ ! -f "$KTREE/.s-snap-unpacked" ]; then
	log "unpacking /usr/src/linux-source-6.12.tar.xz into $KTREE"
	mkdir -p "$CACHE"
	rm -rf "$KTREE" "$KTREE.tmp"
	mkdir -p "$KTREE.tmp"
	tar -C "$KTREE.tmp" --strip-components=1 -xf /usr/src/linux-source-6.12.tar.xz
	mv "$KTREE.tmp" "$KTREE"
	touch "$KTREE/.s-snap-unpacked"
fi

# 2. Lay the repository's new kernel files into the tree, and take out those
#    that an earlier run laid in but this checkout no longer has.
manifest="$KTREE/.s-snap-overlay"
overlay_dirs=()
for dir in Documentation drivers kernel rust samples; do
	[ -d "$REPO/$dir" ] && overlay_dirs+=("$dir")
done
new_manifest=$(cd "$REPO" && find "${overlay_dirs[@]}" -type f | sort)
if [ -f "$manifest" ]; then
	comm -23 "$manifest" <(echo "$new_manifest") | while IFS= read -r f; do
		rm -f "$KTREE/$f"
	done
fi
for dir in "${overlay_dirs[@]}"; do
	rsync -rc "$REPO/$dir/" "$KTREE/$dir/"
done
echo "$new_manifest" >"$manifest"

# 3. Re-apply patches/ to pristine copies of the files they touch.

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mapfile -t patched < <(cat "$REPO"/patches/*.patch 2>/dev/null |
	sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' | sort -u)
# Files that an earlier run patched but no patch touches now go back to pristine.
if [ -d "$PRISTINE" ]; then
	while IFS= read -r f; do
		f=${f#"$PRISTINE"/}
		printf '%s\n' "${patched[@]}" | grep -qxF "$f" && continue
		cmp -s "$PRISTINE/$f" "$KTREE/$f" || cp "$PRISTINE/$f" "$KTREE/$f"
	done < <(find "$PRISTINE" -type f)
fi
# Pristine copies come from the tarball, never from the tree (which may hold edits).
missing=()
for f in "${patched[@]}"; do
	[ -f "$PRISTINE/$f" ] || missing+=("linux-source-6.12/$f")
done
if [ ${#missing[@]} -gt 0 ]; then
	mkdir -p "$PRISTINE"
	tar -C "$PRISTINE" --strip-components=1 -xf /usr/src/linux-source-6.12.tar.xz "${missing[@]}" ||
		die "patches/ touch files that linux-source-6.12 does not have"
fi
for f in "${patched[@]}"; do
	mkdir -p "$(dirname "$work/$f")"
	cp "$PRISTINE/$f" "$work/$f"
done
for p in "$REPO"/patches/*.patch; do
	# A patch of the series that only adds new files has no diff here.
	grep -q '^+++ ' "$p" || continue
	patch -s -d "$work" -p1 --no-backup-if-mismatch <"$p" || die "patch $(basename "$p") does not apply to 6.12"
done
for f in "${patched[@]}"; do
	cmp -s "$work/$f" "$KTREE/$f" || cp "$work/$f" "$KTREE/$f"
done

MAKEFLAGS_KERNEL=(-C "$KTREE" -j"$(nproc)" LLVM=-19 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc BINDGEN="$BINDGEN")

# 4. Configure when the fragments changed.
fragments=(s_snap.config)
[ "$FLAVOR" != debug ] || fragments+=(s_snap_debug.config)
want=$(cd "$REPO/kernel/configs" && cat "${fragments[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$KTREE/.config" ] || [ "$(cat "$KTREE/.s-snap-config" 2>/dev/null)" != "$want" ]; then
	log "configuring (tinyconfig + ${fragments[*]})"
	# An interrupted configuration must not pass for a finished one.
	rm -f "$KTREE/.s-snap-config"
	make -s "${MAKEFLAGS_KERNEL[@]}" tinyconfig >/dev/null
	bad=0
	for fragment in "${fragments[@]}"; do
		make -s "${MAKEFLAGS_KERNEL[@]}" "$fragment" >/dev/null
	done
	for fragment in "${fragments[@]}"; do
		while IFS= read -r line; do
			case "$line" in
			CONFIG_*=*) grep -qxF "$line" "$KTREE/.config" ;;
			"# CONFIG_"*" is not set")
				sym=${line#\# }
				! grep -q "^${sym%% *}=" "$KTREE/.config"
				;;
			*) continue ;;
			esac || { log "config: '$line' did not stick"; bad=1; }
		done <"$REPO/kernel/configs/$fragment"
	done
	[ $bad -eq 0 ] || die "the configuration fragments do not apply (see above)"
	echo "$want" >"$KTREE/.s-snap-config"
fi

# 5. Build and install the modules where the initramfs builder finds them.
log "make bzImage modules"
make -s "${MAKEFLAGS_KERNEL[@]}" bzImage modules || die "kernel build failed"
rm -rf "$MODROOT"
make -s "${MAKEFLAGS_KERNEL[@]}" INSTALL_MOD_PATH="$MODROOT" INSTALL_MOD_STRIP=1 \
	modules_install >/dev/null || die "modules_install failed"
echo "$KTREE"
