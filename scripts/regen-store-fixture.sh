#!/bin/sh
# Writes the store fixture of the current schema version, which the migration tests start
# from (server/src/store/sled/migrate/tests.rs). Run it when SCHEMA_VERSION changes, and keep
# the previous version's fixture: the migration step from it is tested on it.
set -eu
cd "$(dirname "$0")/.."
version=$(sed -n 's/^pub const SCHEMA_VERSION: u32 = \([0-9]*\);$/\1/p' server/src/store.rs)
out="server/tests/fixtures/store-v${version}.backup"
mkdir -p server/tests/fixtures
rm -f "$out"
cargo run --quiet -p tether-tests --bin store-fixture -- "$out"
ls -l "$out"
