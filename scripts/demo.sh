#!/usr/bin/env bash
# The main job on an embedded default: a simulated dispenser on a pty, the agent, an embedded MQTT
# broker (amqtt, pure Python) and a live view of the event stream. No root needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh demo
exec .venv/bin/dispenser-agent demo "$@"
