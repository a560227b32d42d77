"""``POST /webhooks/deploys/{id}``: a webhook deploy engine reporting back.

The request must be signed with the service's webhook secret (see
``bot/executors/signing.py``) and name its deploy (``deploy_id``), and the
deploy must be waiting for its engine; the report is stored before it is
answered, so an engine that got a 200 can forget about it. Its ``log_url``
must be a plain http(s) URL (it becomes a link); its ``message`` is stored
as written and escaped wherever Slack shows it.

A staged deploy's engine calls each have their own callback,
``/webhooks/deploys/{id}?stage=step-2``: the report is stored on that stage
(the body must name the same ``stage``, as it names its deploy), and only
that call's wait takes it for an answer.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING

from aiohttp import web

from bot.executors import signing
from bot.executors.webhook import REPORT_STATUSES
from bot.runtime.logs import deploy_context
from bot.slack.mrkdwn import web_url
from handlers.http import problem, read_bounded
from store import DeployNotFound, DeployStatus

if TYPE_CHECKING:
    from bot.runtime.composition import Slipway

log = logging.getLogger(__name__)
MAX_REPORT_BYTES = 64 * 1024
MAX_ID_DIGITS = 18  # below 2**63, SQLite's largest integer
# what ``Job.stage_key`` names a staged deploy's engine calls
STAGE = re.compile(r"step-[0-9]{1,6}|phase-[a-z_]{1,20}|abort")


def register(app: web.Application, slipway: "Slipway") -> None:
    async def deploy_report(request: web.Request) -> web.Response:
        raw_id = request.match_info["deploy_id"]
        # ASCII digits that fit SQLite's integer: "²" passes str.isdigit() and
        # int() refuses it; 30 digits overflow the query. Neither names a deploy.
        if not (raw_id.isascii() and raw_id.isdigit()) or len(raw_id) > MAX_ID_DIGITS:
            return problem(404, "no such deploy")
        stage = request.query.get("stage")
        if stage is not None and not STAGE.fullmatch(stage):
            return problem(404, "no such engine call")
        with deploy_context(int(raw_id)):
            return await receive_report(request, int(raw_id), stage)

    async def receive_report(request: web.Request, deploy_id: int, stage: str | None) -> web.Response:
        body = await read_bounded(request, MAX_REPORT_BYTES)
        if body is None:
            return problem(413, f"report larger than {MAX_REPORT_BYTES} bytes")
        try:
            deploy = slipway.store.deploys.get(deploy_id)
        except DeployNotFound:
            return problem(404, "no such deploy")
        spec = slipway.runner.engine_of(deploy)
        if spec is None or spec.webhook is None:
            return problem(404, "this deploy is not run by a webhook engine")
        secret = slipway.environ.get(spec.webhook.secret_env)
        refused = signing.verify(secret, request.headers, body) if secret else "no secret configured"
        if refused:
            # logged, not audited: an unauthenticated caller must not be able to
            # grow the append-only audit log
            log.warning("refused report for deploy %s from %s: %s", deploy.id, request.remote, refused)
            return problem(401, refused)
        try:
            try:
                report = json.loads(body)
            except RecursionError:  # signed, but nested beyond what the parser follows
                raise ValueError("not JSON Slipway can read (nested too deeply)") from None
            if not isinstance(report, dict):
                raise ValueError("a report is a JSON object")
            status = report["status"]
            log_url, message = report.get("log_url"), report.get("message")
            if status not in REPORT_STATUSES:
                raise ValueError(f"status must be one of {', '.join(REPORT_STATUSES)}")
            if not all(v is None or isinstance(v, str) for v in (log_url, message)):
                raise ValueError("log_url and message must be strings")
            if log_url is not None and web_url(log_url) is None:
                # it becomes a link in the deploy's message: nothing but a plain web address
                raise ValueError("log_url must be an http(s) URL (http:// or https://, a host, no spaces or <>|)")
            if report.get("deploy_id") != deploy.id:
                # binds a signed report to its deploy: one captured for deploy N
                # cannot be replayed against deploy M sharing the secret
                raise ValueError(f"deploy_id must be {deploy.id}, the deploy in the URL")
            if report.get("stage") != stage:
                # the same for a staged deploy's calls: step 1's report cannot answer step 2
                raise ValueError(f"stage must be {json.dumps(stage)}, the stage in the URL" if stage else
                                 "stage must be absent: the URL names no stage")
        except (ValueError, KeyError, TypeError) as exc:
            reason = "missing field status" if isinstance(exc, KeyError) else str(exc)
            return problem(400, f"malformed report: {reason}")
        # a staged deploy calls its engine from deploying on (verifying, baking: its later calls)
        waiting = (DeployStatus.DEPLOYING,) if stage is None else (
            DeployStatus.DEPLOYING, DeployStatus.VERIFYING, DeployStatus.BAKING)
        if deploy.status not in waiting:
            return problem(409, f"deploy {deploy.id} is {deploy.status}, not waiting for its engine")
        slipway.reports.record(deploy.id, status, log_url, (message or "")[:2000] or None,
                               source=f"http:{request.remote}", stage=stage)
        return web.json_response({"ok": True})

    app.router.add_post("/webhooks/deploys/{deploy_id}", slipway.metrics.count_webhook("deploy_report", deploy_report))
