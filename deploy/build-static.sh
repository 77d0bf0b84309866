#!/usr/bin/env bash
# Builds pgmoat as one statically linked executable (glibc linked in with crt-static, no
# loader or shared libraries needed at run time) and prints its path.
#
#   deploy/build-static.sh
#
# The host triple is passed to cargo explicitly: with crt-static and no --target, cargo would
# apply the flag to build scripts and proc macros too, which cannot be linked statically.
# glibc 2.34 and newer has the "files" and "dns" name services built in, so host names
# (localhost, db.internal) resolve without the NSS modules a static glibc otherwise loads.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$triple" --bin pgmoat >&2
bin=target/$triple/release/pgmoat
# A program interpreter (PT_INTERP) would mean the dynamic loader is still needed.
if readelf --program-headers "$bin" | grep -q INTERP; then
    echo "build-static.sh: $bin is not statically linked" >&2
    exit 1
fi
echo "$bin"
