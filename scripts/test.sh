#!/usr/bin/env bash
# The test command: set up .venv (idempotent), add DICOM validators when apt is at hand, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v dciodvfy >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # dciodvfy (dicom3tools) validates our DICOM-SEG objects; its test skips with a reason when absent.
  (apt-get update -qq && apt-get install -y -qq dicom3tools >/dev/null) || echo "dicom3tools not installed; the dciodvfy test will skip"
fi
exec .venv/bin/python -m pytest -q "$@"
