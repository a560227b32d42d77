#!/usr/bin/env bash
# Template deploy engine for Slipway's `command` executor (see README,
# "Deploying, verifying, rolling back"). Slipway runs it without a shell
# string: every input arrives in the environment, verbatim.
#
#   SLIPWAY_DEPLOY_ID SLIPWAY_SERVICE SLIPWAY_ENVIRONMENT SLIPWAY_VERSION
#   SLIPWAY_PREVIOUS_VERSION (and SLIPWAY_ROLLBACK_OF for a rollback)
#   SLIPWAY_STRATEGY: direct, canary or blue_green; a staged deploy calls
#   this once per step, with SLIPWAY_STEP, SLIPWAY_STEPS and SLIPWAY_WEIGHT
#   (canary; weight 0 is the abort) or SLIPWAY_PHASE (blue-green: deploy,
#   switch, release; switch_back is the abort).
#
# Exit 0 means the engine did its part; Slipway then verifies. The last
# lines of output are posted in the deploy's thread.
#
# Every step sets a state (an image, a replica count, a weight, a selector)
# rather than changing it by some amount: Slipway may call the same step
# twice (after a restart), and the second call must change nothing.
#
# Out of the box it deploys a Kubernetes Deployment when told which one
# (DEPLOY_IMAGE_REPO, e.g. ghcr.io/acme), and otherwise refuses: Slipway
# never pretends a deploy happened.
#
#   direct      kubectl set image on deployment/<service>
#   canary      a second Deployment, <service>-canary, behind the same Service:
#               with DEPLOY_MESH_ROUTE (an Istio VirtualService whose first
#               route sends to subsets stable and canary) the weight is set on
#               the route; else it is the canary's share of DEPLOY_REPLICAS
#               pods (stable + canary). At 100 the stable Deployment gets the
#               new version and the canary is emptied.
#   blue_green  Deployments <service>-blue and <service>-green; the Service
#               <service> selects one by its `color` label. deploy: the colour
#               not serving gets the new version; switch: the selector moves
#               to it; release: the old colour is scaled to 0; switch_back:
#               the selector moves back to the colour running the old version.
set -euo pipefail

: "${SLIPWAY_SERVICE:?run by Slipway, which sets SLIPWAY_SERVICE}"
: "${SLIPWAY_VERSION:?run by Slipway, which sets SLIPWAY_VERSION}"

if [[ -z "${DEPLOY_IMAGE_REPO:-}" ]]; then
    echo "scripts/deploy.sh is a template: set DEPLOY_IMAGE_REPO for kubectl, or point" >&2
    echo "services.${SLIPWAY_SERVICE}.deploy.command at your real deploy." >&2
    exit 64
fi

namespace="${SLIPWAY_ENVIRONMENT}"
service="${SLIPWAY_SERVICE}"
image="${DEPLOY_IMAGE_REPO}/${service}:v${SLIPWAY_VERSION}"
strategy="${SLIPWAY_STRATEGY:-direct}"
k() { kubectl --namespace "$namespace" "$@"; }

# -- direct: one call replaces the version --------------------------------------------
deploy_direct() {
    echo "deploy #${SLIPWAY_DEPLOY_ID}: ${service} ${SLIPWAY_PREVIOUS_VERSION:-nothing} -> ${SLIPWAY_VERSION} in ${namespace}"
    k set image "deployment/${service}" "${service}=${image}"
    k rollout status "deployment/${service}" --timeout=9m
}

# -- canary: the new version takes SLIPWAY_WEIGHT percent of the traffic ---------------
set_route_weight() {  # <stable percent> <canary percent>
    k patch virtualservice "$DEPLOY_MESH_ROUTE" --type=json -p \
        "[{\"op\":\"replace\",\"path\":\"/spec/http/0/route/0/weight\",\"value\":$1},
          {\"op\":\"replace\",\"path\":\"/spec/http/0/route/1/weight\",\"value\":$2}]"
}

deploy_canary() {
    : "${SLIPWAY_WEIGHT:?a canary step sets SLIPWAY_WEIGHT}"
    local weight="$SLIPWAY_WEIGHT" canary="deployment/${service}-canary" stable="deployment/${service}"
    echo "deploy #${SLIPWAY_DEPLOY_ID}: ${service} ${SLIPWAY_VERSION} canary step ${SLIPWAY_STEP:-?}/${SLIPWAY_STEPS:-?}" \
         "at ${weight}% in ${namespace}"
    if [[ -n "${DEPLOY_MESH_ROUTE:-}" ]]; then
        if (( weight == 0 )); then  # abort: all traffic back on the stable version
            set_route_weight 100 0
            k scale "$canary" --replicas=0
        elif (( weight < 100 )); then
            k set image "$canary" "${service}=${image}"
            k scale "$canary" --replicas="$(k get "$stable" -o 'jsonpath={.spec.replicas}')"
            k rollout status "$canary" --timeout=9m
            set_route_weight $(( 100 - weight )) "$weight"
        else  # promote: the stable Deployment runs the new version, then takes the traffic back
            k set image "$stable" "${service}=${image}"
            k rollout status "$stable" --timeout=9m
            set_route_weight 100 0
            k scale "$canary" --replicas=0
        fi
        return
    fi
    : "${DEPLOY_REPLICAS:?a canary by replicas needs DEPLOY_REPLICAS (the pods of stable and canary together), or set DEPLOY_MESH_ROUTE}"
    local total="$DEPLOY_REPLICAS"
    if (( weight == 0 || weight == 100 )); then
        # abort (0) or promote (100): the stable Deployment takes every pod back
        if (( weight == 100 )); then
            k set image "$stable" "${service}=${image}"
        fi
        k scale "$stable" --replicas="$total"
        k rollout status "$stable" --timeout=9m
        k scale "$canary" --replicas=0
    else
        local pods=$(( (total * weight + 99) / 100 ))  # at least one pod
        k set image "$canary" "${service}=${image}"
        k scale "$canary" --replicas="$pods"
        k rollout status "$canary" --timeout=9m
        k scale "$stable" --replicas=$(( total - pods ))
    fi
}

# -- blue-green: two colours, the Service's selector picks the one serving -------------
colour_running() {  # <image>: the colour whose Deployment runs it (none: empty)
    local colour
    for colour in blue green; do
        if [[ "$(k get "deployment/${service}-${colour}" -o 'jsonpath={.spec.template.spec.containers[0].image}')" == "$1" ]]; then
            echo "$colour"
            return
        fi
    done
}

other_colour() { if [[ "$1" == blue ]]; then echo green; else echo blue; fi; }

select_colour() {
    k patch service "$service" --type=merge -p "{\"spec\":{\"selector\":{\"color\":\"$1\"}}}"
    echo "service/${service} now sends traffic to ${service}-$1"
}

deploy_blue_green() {
    : "${SLIPWAY_PHASE:?a blue-green step sets SLIPWAY_PHASE}"
    local live new
    live="$(k get "service/${service}" -o 'jsonpath={.spec.selector.color}')"
    new="$(colour_running "$image")"  # found again on a repeated call: the colours are never guessed twice
    echo "deploy #${SLIPWAY_DEPLOY_ID}: ${service} ${SLIPWAY_VERSION} blue-green ${SLIPWAY_PHASE} in ${namespace}" \
         "(serving: ${live:-none}, new version on: ${new:-none})"
    case "$SLIPWAY_PHASE" in
        deploy)
            new="${new:-$(other_colour "$live")}"
            k set image "deployment/${service}-${new}" "${service}=${image}"
            k scale "deployment/${service}-${new}" \
                --replicas="$(k get "deployment/${service}-${live}" -o 'jsonpath={.spec.replicas}')"
            k rollout status "deployment/${service}-${new}" --timeout=9m
            ;;
        switch)
            select_colour "${new:?no colour runs ${image}: the deploy phase did not happen}"
            ;;
        release)
            k scale "deployment/${service}-$(other_colour "${new:?no colour runs ${image}}")" --replicas=0
            ;;
        switch_back)  # the abort: traffic back on the colour that runs the old version
            select_colour "$(other_colour "${new:-$(other_colour "$live")}")"
            ;;
        *)
            echo "unknown SLIPWAY_PHASE ${SLIPWAY_PHASE}" >&2
            exit 64
            ;;
    esac
}

case "$strategy" in
    direct) deploy_direct ;;
    canary) deploy_canary ;;
    blue_green) deploy_blue_green ;;
    *)
        echo "unknown SLIPWAY_STRATEGY ${strategy}" >&2
        exit 64
        ;;
esac
