#!/usr/bin/env bash
# Template deploy engine for Slipway's `command` executor (see README,
# "Deploying, verifying, rolling back"). Slipway runs it without a shell
# string: every input arrives in the environment, verbatim.
#
#   SLIPWAY_DEPLOY_ID SLIPWAY_SERVICE SLIPWAY_ENVIRONMENT SLIPWAY_VERSION
#   SLIPWAY_PREVIOUS_VERSION (and SLIPWAY_ROLLBACK_OF for a rollback)
#
# Exit 0 means the engine did its part; Slipway then verifies. The last
# lines of output are posted in the deploy's thread.
#
# Out of the box it deploys a Kubernetes Deployment when told which one
# (DEPLOY_IMAGE_REPO, e.g. ghcr.io/acme), and otherwise refuses: Slipway
# never pretends a deploy happened.
set -euo pipefail

: "${SLIPWAY_SERVICE:?run by Slipway, which sets SLIPWAY_SERVICE}"
: "${SLIPWAY_VERSION:?run by Slipway, which sets SLIPWAY_VERSION}"

if [[ -z "${DEPLOY_IMAGE_REPO:-}" ]]; then
    echo "scripts/deploy.sh is a template: set DEPLOY_IMAGE_REPO for kubectl, or point" >&2
    echo "services.${SLIPWAY_SERVICE}.deploy.command at your real deploy." >&2
    exit 64
fi

namespace="${SLIPWAY_ENVIRONMENT}"
image="${DEPLOY_IMAGE_REPO}/${SLIPWAY_SERVICE}:v${SLIPWAY_VERSION}"
echo "deploy #${SLIPWAY_DEPLOY_ID}: ${SLIPWAY_SERVICE} ${SLIPWAY_PREVIOUS_VERSION:-nothing} -> ${SLIPWAY_VERSION} in ${namespace}"
kubectl --namespace "$namespace" set image "deployment/${SLIPWAY_SERVICE}" "${SLIPWAY_SERVICE}=${image}"
kubectl --namespace "$namespace" rollout status "deployment/${SLIPWAY_SERVICE}" --timeout=9m
