#!/usr/bin/env bash
# The GPU kit in one command (benchmarks/gpu/README.md):
#   benchmarks/gpu/run_all.sh --out DIR [--wheelhouse wheelhouse] [--dry-run] [run_all.py options]
# installs the wheelhouse offline (install.py), then runs every step (run_all.py), writing
# report.json, report.md, steps.log and install.log to DIR. The time budget counts from here.
set -uo pipefail
started=$(date +%s)
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
out="" wheelhouse="" rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --wheelhouse) wheelhouse=$2; shift 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done
if [ -z "$out" ]; then
  echo "error: give the report folder: benchmarks/gpu/run_all.sh --out DIR [--wheelhouse wheelhouse] [--dry-run]" >&2
  exit 2
fi
mkdir -p "$out"
install=()
if [ -n "$wheelhouse" ]; then
  t0=$(date +%s)
  "$PYTHON" benchmarks/gpu/install.py "$wheelhouse" >"$out/install.log" 2>&1
  code=$?
  install=(--install-log "$out/install.log" --install-status "$code" --install-seconds "$(( $(date +%s) - t0 ))")
  [ "$code" -eq 0 ] || echo "install failed (exit status $code): see $out/install.log" >&2
fi
# The checkout's fairseq_srupp wins over an installed wheel of it.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# On a GPU machine extensions (sru's, ours) build in one known folder, where run_all.py can clear the
# lock a stopped build leaves; a dry run keeps the usual cache, already filled by the test suite.
case " ${rest[*]-} " in
  *" --dry-run "*) ;;
  *) export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/srupp_kit_torch_extensions} ;;
esac
exec "$PYTHON" benchmarks/gpu/run_all.py --out "$out" --started "$started" "${install[@]}" "${rest[@]}"
