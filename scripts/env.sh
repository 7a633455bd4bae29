# Sourced by scripts/*: where the platform's Python environment lives.
if [[ -z "${TWINHUB_VENV:-}" ]]; then
  if [[ $(id -u) == 0 ]]; then TWINHUB_VENV=/opt/twinhub/venv; else TWINHUB_VENV="$(pwd)/.venv"; fi
fi
TWINHUB_BASE_PYTHON=${TWINHUB_BASE_PYTHON:-/usr/bin/python3}
export TWINHUB_VENV TWINHUB_BASE_PYTHON
