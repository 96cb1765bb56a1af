# lorastream — build, run and test. Every target sets up libtorch first if needed.
#
#   make run     set-up, release build, run the daemon with config/lorastream.toml
#   make demo    set-up, release build, lorastream demo (the whole loop, offline)
#   make test    set-up, release build, fmt + layer check + clippy + cargo test, all in
#                the release profile (one build of every dependency), every workspace crate
#   make build   set-up and release build (target/release/lorastream)
#   make setup   install libtorch (PyPI torch) and test-only Python packages into
#                $LORASTREAM_VENV (default ~/.cache/lorastream/venv)
#   make install binary, libtorch link, config (kept if present), systemd unit and
#                README under DESTDIR/PREFIX (default /usr/local; config in /etc)

CARGO  ?= cargo
CONFIG ?= config/lorastream.toml

PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib/lorastream
DOCDIR     ?= $(PREFIX)/share/doc/lorastream
SYSCONFDIR ?= /etc
UNITDIR    ?= /etc/systemd/system
# Where cargo puts the build (honours CARGO_TARGET_DIR).
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: all setup build run demo test check fmt layers clippy cargo-test clean install uninstall

all: build

# Idempotent: seconds when the venv is already there.
setup:
	@./scripts/setup-libtorch.sh >/dev/null

build: setup
	$(CARGO) build --release --locked

run: build
	$(TARGET_DIR)/release/lorastream run --config $(CONFIG)

demo: build
	$(TARGET_DIR)/release/lorastream demo

fmt:
	$(CARGO) fmt --all -- --check

# No import circle, no arrow up the layers, no daemon crate below it.
layers:
	python3 scripts/check-layers.py

clippy: setup
	$(CARGO) clippy --release --all-targets --locked -- -D warnings

cargo-test: setup
	$(CARGO) test --release --locked

check: fmt layers clippy cargo-test

test: build check

clean:
	$(CARGO) clean

# The binary finds libtorch through its rpath $ORIGIN/../lib/lorastream/torch/lib:
# LIBDIR/torch links to the libtorch it was built against. A service user must
# be able to read it: for systemd, set up the venv outside /root and /home, e.g.
#   sudo LORASTREAM_VENV=/opt/lorastream/venv make install
install: build
	install -Dm755 $(TARGET_DIR)/release/lorastream $(DESTDIR)$(BINDIR)/lorastream
	install -d $(DESTDIR)$(LIBDIR)
	ln -sfn "$$(readlink -f .libtorch)" $(DESTDIR)$(LIBDIR)/torch
	@case "$$(readlink -f .libtorch)" in /root/*|/home/*) \
	  echo "note: libtorch is under $$(readlink -f .libtorch); the service (DynamicUser, ProtectHome) cannot read it there: reinstall with LORASTREAM_VENV=/opt/lorastream/venv" >&2;; esac
	install -d -m 755 $(DESTDIR)$(SYSCONFDIR)/lorastream
	test -e $(DESTDIR)$(SYSCONFDIR)/lorastream/lorastream.toml || \
	  install -m 644 config/lorastream.toml $(DESTDIR)$(SYSCONFDIR)/lorastream/lorastream.toml
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's|/usr/local/bin/lorastream|$(BINDIR)/lorastream|g' \
	    -e 's|/usr/local/share/doc/lorastream|$(DOCDIR)|g' \
	    systemd/lorastream.service > $(DESTDIR)$(UNITDIR)/lorastream.service
	chmod 644 $(DESTDIR)$(UNITDIR)/lorastream.service
	install -Dm644 README.md $(DESTDIR)$(DOCDIR)/README.md
	@echo "installed; next: systemctl daemon-reload && systemctl enable --now lorastream"

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/lorastream $(DESTDIR)$(UNITDIR)/lorastream.service
	rm -rf $(DESTDIR)$(LIBDIR) $(DESTDIR)$(DOCDIR)
	@echo "kept $(SYSCONFDIR)/lorastream and the state in /var/lib/lorastream"
