#!/usr/bin/env bash
# The whole test suite, exactly as the README's quick start runs it:
# formatting, lints with warnings as errors, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# A fresh Debian machine with only rustup's toolchain may lack the components.
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# The client's rustdoc must build without warnings (broken links, bad examples).
RUSTDOCFLAGS="-D warnings" cargo doc -p sluice-client --no-deps --quiet
