#!/usr/bin/env bash
# Set up everything Cadenza needs on a fresh Debian/Ubuntu machine: system packages, a venv
# at .venv with the project (editable) and its extras. Idempotent: re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# --- system packages ---------------------------------------------------------------------
# ffmpeg/ffprobe (audio probe and conversion), a General MIDI soundfont and fluidsynth
# (rendering), libsndfile (audio I/O), PostgreSQL and Redis (integration tests), chromium
# (the studio's browser tests drive it through Playwright, which cannot download a browser).
APT_PACKAGES=(ffmpeg fluid-soundfont-gm fluidsynth libsndfile1 postgresql redis-server chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- python environment ------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade "pip>=24" 2>&1 | grep -v "^WARNING: Location" || true
# torch first, pinned: this exact spec takes the CPU wheel; any other pulls GBs of CUDA.
"${PIP[@]}" install "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
"${PIP[@]}" install -e ".[api,worker,audio,dev]" 2>&1 | grep -v "^WARNING: Location" || true
# basic-pitch 0.4.0 declares TensorFlow as a dependency on Python 3.11; with onnxruntime it
# runs its bundled ONNX model offline, so it is installed without its declared deps.
"${PIP[@]}" install --no-deps "basic-pitch==0.4.0" 2>&1 | grep -v "^WARNING: Location" || true
# transkun 2.0.1 (piano transcription with velocities and pedal; checkpoint inside the wheel)
# declares torchaudio, tensorboard and other training-only packages; torchaudio would replace
# the pinned torch. Inference needs only torch, numpy, pretty_midi and mir_eval (extras above).
"${PIP[@]}" install --no-deps "transkun==2.0.1" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import cadenza, cadenza_api, cadenza_worker, torch, miditok" \
  || { echo "setup failed: the venv cannot import the project"; exit 1; }
touch .venv/.setup-done
echo "setup complete: .venv is ready"
