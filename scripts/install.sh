#!/bin/sh
# Builds Tether's binaries with one cargo build (they share every dependency) and installs them
# into $PREFIX/bin (default /usr/local/bin).
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
for bin in $BINS; do
    case $bin in
        tether-server | tether-agent | tetherctl) set -- "$@" --bin "$bin" ;;
        *)
            echo "install.sh: unknown binary '$bin' (tether-server, tether-agent, tetherctl)" >&2
            exit 2
            ;;
    esac
done
cargo build --release --locked "$@"

SUDO=
if ! mkdir -p "$PREFIX/bin" 2>/dev/null || [ ! -w "$PREFIX/bin" ]; then
    SUDO=sudo
fi
$SUDO mkdir -p "$PREFIX/bin"
for bin in $BINS; do
    $SUDO install -m 0755 "$TARGET_DIR/release/$bin" "$PREFIX/bin/$bin"
    echo "installed $PREFIX/bin/$bin"
done
case ":$PATH:" in
    *":$PREFIX/bin:"*) ;;
    *) echo "note: $PREFIX/bin is not on PATH; add it: export PATH=\"$PREFIX/bin:\$PATH\"" ;;
esac
