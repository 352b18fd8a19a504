#!/bin/sh
# Builds Tether's binaries and installs them into $PREFIX/bin (default /usr/local/bin): the
# server and tetherctl with one `release` build (they share every dependency), the agent with
# the `agent` profile (Cargo.toml: a smaller binary is a smaller agent on every machine).
#
#   scripts/install.sh                          # tether-server, tether-agent and tetherctl
#   scripts/install.sh tether-agent             # only the agent, for an agent's machine
#   PREFIX=$HOME/.local scripts/install.sh      # no root needed
#
# The build runs as you; only the copy into a prefix you cannot write to uses sudo. The build
# names binaries, not packages (`--bin`, never `-p`), so its dependencies are resolved for the
# whole workspace: `cargo run --release --bin …` afterwards reuses this build instead of
# compiling again.
set -eu

PREFIX=${PREFIX:-/usr/local}
BINS=${*:-tether-server tether-agent tetherctl}

cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-target}

set --
AGENT=
for bin in $BINS; do
    case $bin in
        tether-server | tetherctl) set -- "$@" --bin "$bin" ;;
        tether-agent) AGENT=yes ;;
        *)
            echo "install.sh: unknown binary '$bin' (tether-server, tether-agent, tetherctl)" >&2
            exit 2
            ;;
    esac
done
if [ $# -gt 0 ]; then
    cargo build --release --locked "$@"
fi
if [ -n "$AGENT" ]; then
    cargo build --profile agent --locked --bin tether-agent
fi

SUDO=
if ! mkdir -p "$PREFIX/bin" 2>/dev/null || [ ! -w "$PREFIX/bin" ]; then
    SUDO=sudo
fi
$SUDO mkdir -p "$PREFIX/bin"
for bin in $BINS; do
    profile=release
    [ "$bin" = tether-agent ] && profile=agent
    $SUDO install -m 0755 "$TARGET_DIR/$profile/$bin" "$PREFIX/bin/$bin"
    echo "installed $PREFIX/bin/$bin"
done
case ":$PATH:" in
    *":$PREFIX/bin:"*) ;;
    *) echo "note: $PREFIX/bin is not on PATH; add it: export PATH=\"$PREFIX/bin:\$PATH\"" ;;
esac
