#!/usr/bin/env bash
# GPU check of the native core, without Node: builds the C++ driver tools/gpu-check/main.cc against
# a libtorch (a PyTorch 2.x wheel's torch/ folder works), runs the numeric checks with tensors on
# CUDA (against the CPU), the training and forward benchmarks at GPT-2-small shapes, and the
# comparison of a Hugging Face GPT-2 checkpoint's logits with transformers; prints a summary.
# Run from anywhere; everything it needs is in the repository (nothing is downloaded).
set -uo pipefail

usage() {
  cat <<'EOF'
usage: scripts/gpu-check.sh [options]

  --cpu            run everything on the CPU (smoke test on a machine without a GPU; the numeric
                   checks then compare float32 with float64)
  --quick          small shapes for the benchmarks (d 128 -> 2048, batch 512; a 2-layer model)
  --no-checks      skip the numeric checks
  --no-bench       skip the benchmarks
  --no-hf          skip the Hugging Face comparison
  --build-only     build the driver and stop
  --jobs N         parallel compile jobs (default: nproc)
  --bench-args "…" extra options for 'gpu-check bench' (e.g. "--steps 50 --variants tf32")
  --logs DIR       also copy the logs (and the summary) to DIR, e.g. --logs "$OUT"
  -h, --help       this text

environment:
  LIBTORCH_ROOT    libtorch to build against (an unzipped libtorch or a wheel's torch/ folder);
                   default: the torch/ folder of the first python with torch (PYTHON, python3,
                   python, /usr/bin/python3) when it has headers, else the system libtorch
  PYTHON           the python for the Hugging Face comparison (needs torch; transformers optional)
  CXX              the C++ compiler (default g++)
  GPU_CHECK_TIMEOUT  seconds each of the three runs may take (default 300)

The driver is built into build-gpu/ (ignored by git); its logs go to build-gpu/logs/.
Goal: >= 5 M tokens/s for TopK k = 32, 768 -> 24576, batch 4096, on an H100/H200-class GPU.
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEVICE=cuda QUICK=0 DO_CHECKS=1 DO_BENCH=1 DO_HF=1 BUILD_ONLY=0 JOBS="$(nproc 2>/dev/null || echo 2)" BENCH_ARGS="" COPY_LOGS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) DEVICE=cpu ;;
    --quick) QUICK=1 ;;
    --no-checks) DO_CHECKS=0 ;;
    --no-bench) DO_BENCH=0 ;;
    --no-hf) DO_HF=0 ;;
    --build-only) BUILD_ONLY=1 ;;
    --jobs) JOBS="$2"; shift ;;
    --bench-args) BENCH_ARGS="$2"; shift ;;
    --logs) COPY_LOGS="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

BUILD="$ROOT/build-gpu"
LOGS="$BUILD/logs"
mkdir -p "$BUILD/obj" "$LOGS"
say() { printf '\n== %s\n' "$*"; }
die() { printf 'gpu-check: %s\n' "$*" >&2; exit 2; }

# ---- machine ----------------------------------------------------------------------------------
say "machine"
echo "host $(hostname), $(nproc) cores, $(uname -sr)"
if [ "$DEVICE" = cuda ]; then
  command -v nvidia-smi >/dev/null || die "no nvidia-smi: no CUDA driver on this machine (use --cpu for a CPU smoke test)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || die "nvidia-smi failed"
fi

# ---- python with torch, libtorch --------------------------------------------------------------
PY=""
for p in ${PYTHON:-} python3 python /usr/bin/python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' >/dev/null 2>&1; then PY="$p"; break; fi
done
if [ -n "$PY" ]; then
  "$PY" -c 'import sys,torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
  PY_TORCH="$("$PY" -c 'import torch,os;print(os.path.dirname(torch.__file__))')"
fi

if [ -z "${LIBTORCH_ROOT:-}" ] && [ -n "$PY" ] && [ -f "$PY_TORCH/include/torch/csrc/api/include/torch/torch.h" ] &&
   [ -e "$PY_TORCH/lib/libtorch_cpu.so" ]; then
  LIBTORCH_ROOT="$PY_TORCH"
fi
# The system libtorch (Debian's libtorch-dev) is LIBTORCH_ROOT=/usr.
if [ -z "${LIBTORCH_ROOT:-}" ] && [ -f /usr/include/torch/csrc/api/include/torch/torch.h ]; then LIBTORCH_ROOT=/usr; fi
[ -n "${LIBTORCH_ROOT:-}" ] ||
  die "no libtorch: set LIBTORCH_ROOT to a libtorch (or a PyTorch wheel's torch/ folder), or install python torch / libtorch-dev"
LIBTORCH_ROOT="$(cd "$LIBTORCH_ROOT" && pwd)" || die "LIBTORCH_ROOT does not exist"
TORCH_INC=("$LIBTORCH_ROOT/include" "$LIBTORCH_ROOT/include/torch/csrc/api/include")
TORCH_LIB="$LIBTORCH_ROOT/lib"
# Multiarch layouts (/usr/lib/x86_64-linux-gnu).
[ -e "$TORCH_LIB/libtorch_cpu.so" ] || TORCH_LIB="$(dirname "$(ls "$LIBTORCH_ROOT"/lib/*/libtorch_cpu.so 2>/dev/null | head -n1)")"
[ -e "$TORCH_LIB/libtorch_cpu.so" ] || die "no libtorch_cpu.so under $LIBTORCH_ROOT/lib"
[ -f "${TORCH_INC[1]}/torch/torch.h" ] || die "no libtorch headers under ${TORCH_INC[1]}"
echo "libtorch: $LIBTORCH_ROOT (libraries in $TORCH_LIB)"

# The C++ ABI must match libtorch's: python's flag when that torch is the one, else c10's symbols.
ABI=""
if [ -n "$PY" ] && [ "${LIBTORCH_ROOT:-}" = "${PY_TORCH:-}" ]; then
  ABI="$("$PY" -c 'import torch;print(int(torch._C._GLIBCXX_USE_CXX11_ABI))' 2>/dev/null)"
fi
if [ -z "$ABI" ] && command -v nm >/dev/null; then
  # (grep -c, not -q: with pipefail, grep -q's early exit would fail the pipeline through SIGPIPE.)
  if [ "$(nm -DC "$TORCH_LIB/libc10.so" | grep -c 'std::__cxx11::basic_string')" -gt 0 ]; then ABI=1; else ABI=0; fi
fi
[ -n "$ABI" ] || { ABI=1; echo "note: cannot tell libtorch's C++ ABI (no python torch for it, no nm); assuming 1 (torch >= 2.7)"; }
echo "C++ ABI: _GLIBCXX_USE_CXX11_ABI=$ABI"

# ---- build ------------------------------------------------------------------------------------
say "build (build-gpu/gpu-check, -j$JOBS)"
CXX="${CXX:-g++}"
command -v "$CXX" >/dev/null || die "no C++ compiler ($CXX); set CXX"
# The native core's sources: all of native/ except native/bindings/ (those need Node), so a new
# core file needs no edit here.
mapfile -t SOURCES < <(find native -name '*.cc' -not -path 'native/bindings/*' | sort)
SOURCES+=(tools/gpu-check/main.cc)
INCS=(-Inative)
# -isystem /usr/include would break libstdc++'s #include_next: the default search path has it already.
for d in "${TORCH_INC[@]}"; do [ "$d" = /usr/include ] || INCS+=(-isystem "$d"); done
CXXFLAGS=(-std=c++17 -O3 -fopenmp -fPIC -D_GLIBCXX_USE_CXX11_ABI="$ABI" -Wall -Wno-unused-parameter "${INCS[@]}")
LIBS=(-L"$TORCH_LIB" -lc10 -ltorch_cpu -ltorch)
# libtorch_cuda must be linked although nothing references it, or its static initialisers never
# run and CUDA reports unavailable.
for l in c10_cuda torch_cuda; do
  [ -e "$TORCH_LIB/lib$l.so" ] && LIBS+=(-Wl,--no-as-needed -l"$l" -Wl,--as-needed)
done
# Immediate binding: an ABI mismatch fails at start-up ("undefined symbol"), not at the first call.
LDFLAGS=(-Wl,-z,now -Wl,--allow-shlib-undefined -Wl,-rpath,"$TORCH_LIB" -Wl,-rpath-link,"$TORCH_LIB")
# A wheel's CUDA libraries live in site-packages/nvidia/*/lib (found at run time through libtorch's RUNPATH).
for d in "$TORCH_LIB"/../../nvidia/*/lib; do [ -d "$d" ] && LDFLAGS+=(-Wl,-rpath-link,"$d"); done

STAMP="$CXX ${CXXFLAGS[*]} $("$CXX" --version | head -n1)"
if [ "$(cat "$BUILD/flags.stamp" 2>/dev/null)" != "$STAMP" ]; then rm -f "$BUILD"/obj/*.o; echo "$STAMP" >"$BUILD/flags.stamp"; fi
obj() { echo "$BUILD/obj/$(echo "${1%.cc}" | tr / _).o"; }
compile() {
  local o; o="$(obj "$1")"
  "$CXX" "${CXXFLAGS[@]}" -c "$1" -o "$o" >"$o.log" 2>&1 || { rm -f "$o"; return 1; }
}
T0=$(date +%s)
# Coarse dependencies: an object is rebuilt when older than its source or than the newest header.
NEWEST_HEADER="$(find native tools/gpu-check -name '*.h' -printf '%T@ %p\n' | sort -n | tail -n1 | cut -d' ' -f2-)"
STALE=()
for s in "${SOURCES[@]}"; do
  o="$(obj "$s")"
  if [ ! -e "$o" ] || [ "$s" -nt "$o" ] || [ "$NEWEST_HEADER" -nt "$o" ]; then STALE+=("$s"); fi
done
PIDS=()
for s in "${STALE[@]}"; do
  echo "  compiling $s"
  compile "$s" &
  PIDS+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
done
FAILED=0
for p in "${PIDS[@]}"; do wait "$p" || FAILED=1; done
cat "$BUILD"/obj/*.o.log >"$LOGS/build.log" 2>/dev/null
grep -E 'error|warning' "$LOGS/build.log" | head -n 40
[ "$FAILED" = 0 ] || { grep -B2 -A6 'error' "$LOGS/build.log" | head -n 60; die "compile failed (build-gpu/logs/build.log)"; }
OBJS=(); for s in "${SOURCES[@]}"; do OBJS+=("$(obj "$s")"); done
"$CXX" "${OBJS[@]}" -o "$BUILD/gpu-check" "${LDFLAGS[@]}" "${LIBS[@]}" -fopenmp -lpthread -ldl >>"$LOGS/build.log" 2>&1 ||
  { tail -n 30 "$LOGS/build.log"; die "link failed (build-gpu/logs/build.log)"; }
echo "built build-gpu/gpu-check in $(( $(date +%s) - T0 )) s (${#STALE[@]} of ${#SOURCES[@]} sources compiled)"
DRIVER="$BUILD/gpu-check"
[ "$BUILD_ONLY" = 1 ] && exit 0

# ---- runs -------------------------------------------------------------------------------------
# Each run is bounded, so one that hangs cannot use up a machine lent for a limited time.
LIMIT="${GPU_CHECK_TIMEOUT:-300}"
bounded() { if command -v timeout >/dev/null; then timeout -k 10 "$LIMIT" "$@"; else "$@"; fi; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
STATUS=0
CHECKS_RC=skipped BENCH_RC=skipped HF_RC=skipped
if [ "$DO_CHECKS" = 1 ]; then
  # On the CPU, against itself the checks would be trivial: there the reference is float64.
  REF=cpu; [ "$DEVICE" = cpu ] && REF=cpu64
  say "numeric checks ($DEVICE against $REF)"
  bounded "$DRIVER" check --device "$DEVICE" --reference "$REF" 2>&1 | tee "$LOGS/check.log"
  CHECKS_RC=${PIPESTATUS[0]}
  [ "$CHECKS_RC" = 0 ] || STATUS=1
fi

if [ "$DO_BENCH" = 1 ]; then
  say "benchmarks ($DEVICE)"
  QUICK_ARGS=()
  [ "$QUICK" = 1 ] && QUICK_ARGS=(--d-in 128 --d-sae 2048 --batch 512 --k 32 --k-aux 64 --steps 5 --warmup 1
                                  --model-layers 2 --model-ctx 128 --model-batch 2 --model-iters 3)
  # shellcheck disable=SC2086
  bounded "$DRIVER" bench --device "$DEVICE" "${QUICK_ARGS[@]}" $BENCH_ARGS 2>&1 | tee "$LOGS/bench.log"
  BENCH_RC=${PIPESTATUS[0]}
  [ "$BENCH_RC" = 0 ] || STATUS=1
fi

if [ "$DO_HF" = 1 ]; then
  say "Hugging Face GPT-2 checkpoint: our logits ($DEVICE) against the reference"
  if [ -z "$PY" ]; then
    echo "SKIP hf comparison: no python with torch" | tee "$LOGS/hf.log"
  elif ! "$PY" -c 'import numpy' >/dev/null 2>&1; then
    echo "SKIP hf comparison: $PY has no numpy" | tee "$LOGS/hf.log"
  else
    "$PY" -c 'import transformers' >/dev/null 2>&1 ||
      echo "note: transformers is not installed for $PY; comparing with test/reference/hf_reference.py instead"
    bounded "$PY" tools/gpu-check/hf_compare.py "$DRIVER" --device "$DEVICE" 2>&1 | tee "$LOGS/hf.log"
    HF_RC=${PIPESTATUS[0]}
    [ "$HF_RC" = 0 ] || STATUS=1
  fi
fi

# ---- summary ----------------------------------------------------------------------------------
summary() {
say "summary ($DEVICE)"
for l in check bench hf; do [ -f "$LOGS/$l.log" ] && grep -h '^FAIL' "$LOGS/$l.log"; done
[ "$DO_CHECKS" = 1 ] && echo "numeric checks: $(grep -c '^PASS' "$LOGS/check.log") passed, $(grep -c '^FAIL' "$LOGS/check.log") failed (exit $CHECKS_RC)"
[ "$DO_HF" = 1 ] && grep -E '^(PASS|FAIL|SKIP)' "$LOGS/hf.log" | sed 's/^/hf comparison: /'
if [ "$DO_BENCH" = 1 ]; then
  grep -E '^(RESULT|SKIP)' "$LOGS/bench.log" | sed 's/^RESULT //'
  # The goal is stated for the full shape only.
  if [ "$QUICK" = 0 ] && [ -z "$BENCH_ARGS" ]; then
    BEST="$(grep -E '^RESULT train topk k=32 AuxK 768->24576 batch 4096' "$LOGS/bench.log" |
            awk '{for (i = 1; i <= NF; i++) if ($i == "tokens/s") print $(i-1), $0}' | sort -g | tail -n1)"
    if [ -n "$BEST" ]; then
      TPS="${BEST%% *}"
      VAR="$(echo "$BEST" | grep -o '\[[a-z0-9]*\]')"
      if awk "BEGIN{exit !($TPS >= 5e6)}"; then VERDICT="met"; else VERDICT="NOT met"; fi
      printf 'goal >= 5 M tokens/s (topk k=32 768->24576): best %.2f M tokens/s %s: %s\n' "$(awk "BEGIN{print $TPS/1e6}")" "$VAR" "$VERDICT"
    fi
  fi
fi
echo "logs: build-gpu/logs/; exit status $STATUS"
}
summary | tee "$LOGS/summary.log"
if [ -n "$COPY_LOGS" ]; then mkdir -p "$COPY_LOGS" && cp "$LOGS"/*.log "$COPY_LOGS"/; fi
exit $STATUS
