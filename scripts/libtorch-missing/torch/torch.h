/* Found only when libtorch is not set up: .cargo/config.toml puts this directory
 * on CPLUS_INCLUDE_PATH, which the compiler searches after libtorch's own include
 * directories (<clone>/.libtorch/include). */
#error "lorastream: libtorch is not set up: run scripts/setup-libtorch.sh (or make build)"
