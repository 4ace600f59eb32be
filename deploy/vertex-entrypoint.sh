#!/bin/sh
# Vertex AI custom-container entrypoint for gemma-keras serve.
#
# Vertex AI tells the container where to listen through AIP_HTTP_PORT (the
# first of the Model's containerSpec.ports, 8080 when none is given) and
# where it will send health checks and predictions through AIP_HEALTH_ROUTE
# and AIP_PREDICT_ROUTE. The server's routes are fixed (/health,
# /v1/chat/completions, /v1/completions, ...), so upload the Model with
#   --container-health-route=/health
#   --container-predict-route=/v1/chat/completions   (or /v1/completions)
# and this script only maps the port. Set it as the container's command
# (gcloud: --container-command=gemma-keras-vertex); any container args are
# passed on to `gemma-keras serve` (a MODEL, --max-batch, ...).
set -eu

port="${AIP_HTTP_PORT:-8000}"

case "${AIP_HEALTH_ROUTE:-/health}" in
  /health) ;;
  *) echo "gemma-keras-vertex: AIP_HEALTH_ROUTE is ${AIP_HEALTH_ROUTE}, but the server answers health checks on /health: upload the Model with --container-health-route=/health" >&2 ;;
esac
case "${AIP_PREDICT_ROUTE:-/v1/chat/completions}" in
  /v1/chat/completions | /v1/completions) ;;
  *) echo "gemma-keras-vertex: AIP_PREDICT_ROUTE is ${AIP_PREDICT_ROUTE}, which the server does not serve: upload the Model with --container-predict-route=/v1/chat/completions" >&2 ;;
esac

exec gemma-keras serve --host 0.0.0.0 --port "${port}" "$@"
