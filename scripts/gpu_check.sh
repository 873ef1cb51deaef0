#!/usr/bin/env bash
# Prove a GPU run in minutes; prints a markdown table for docs/benchmarks.md. See scripts/gpu_check.py.
set -euo pipefail
exec python "$(dirname "$0")/gpu_check.py" "$@"
