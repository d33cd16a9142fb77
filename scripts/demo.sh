#!/usr/bin/env bash
# Run the main job on a fresh machine: set up .venv, then `rc-nbkit demo`,
# which distils Whisper tiny.en from Whisper base on the offline demo corpus and
# reports WER before and after on held-out real speech (see README.md).
# Usage: bash scripts/demo.sh [demo options, see `rc-nbkit demo --help`]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec rc-nbkit demo "$@"
