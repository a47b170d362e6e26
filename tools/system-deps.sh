#!/usr/bin/env bash
# System packages the test suite needs (Debian/Ubuntu): GStreamer's RTSP server for real RTSP
# on loopback, FFmpeg to encode test media, Chromium for the browser tests (publisher page over
# WebRTC, overlay and dashboard screenshots), apt tooling to fetch the opencv-doc sample video,
# espeak-ng for speech test media (tools/speech_media.py: the command and libespeak-ng), Redis and
# Mosquitto for the cluster and alert-export tests (each test starts its own server on loopback).
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
PKGS="gstreamer1.0-tools gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav ffmpeg python3-venv chromium fonts-dejavu-core
  espeak-ng redis-server mosquitto"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "installing system packages:$missing" >&2
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi
# the tests fetch vtest.avi from the opencv-doc package (apt-get download): it needs apt lists
if ! apt-cache show opencv-doc >/dev/null 2>&1; then
  $SUDO apt-get update -q
fi
