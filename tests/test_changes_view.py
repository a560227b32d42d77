"""What a deploy ships, as people see it: the request message's "What it
ships" (and "checking…" without Approve until the lookups are done),
``/deploy show`` and the ship report.

The change sets are written through the store's own API on deploys the
runner never starts (they wait for approval), so each test draws exactly
the state it sets; the lookups themselves are tests/test_changes.py's."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bot.changes.model import (
    BACKWARD,
    FIRST,
    FORWARD,
    SAME,
    ChangeSet,
    Commit,
    PullRequest,
)
from bot.events import DeployChanged
from bot.sandbox.fake_slack import Message, block_kit_problem
from bot.slack.blocks import (
    ACTION_APPROVE,
    ACTION_CANCEL,
    ACTION_REJECT,
    MAX_BLOCKS,
    MAX_SECTION_TEXT,
)
from bot.slack.mrkdwn import CHECKING_TEXT, MAX_PULLS_SHOWN, changes_text, record_text
from bot.slack.ship_report import MAX_REPORT_CHANGES, ship_report
from store import Deploy, DeployStatus
from tests.conftest import Harness, approvals, config_yaml, engine, said

HOSTILE = "<!channel> ping <@U0EVIL> & <https://evil.example|docs>"
LINK = re.compile(r"<https?://[^|<>\s]+\|[^<>]*>")  # a link Slipway wrote: <url|label>


@pytest.fixture
def config_text() -> str:
    return config_yaml({"api": {"deploy": engine()}}, production={"approvals": approvals("U0ALICE")})


def change_set(commits: int = 14, pulls: int = 5, people: int = 4, direction: str = FORWARD,
               migration_files: tuple[str, ...] = (), title: str = "Change", **kwargs: Any) -> ChangeSet:
    """``commits`` commits by ``people`` people, the first ``pulls`` of them
    squash-merged pull requests (the rest outside any)."""
    made = tuple(Commit(sha=f"{n:07x}" + "0" * 33, title=f"{title} {n}" + (f" (#{100 + n})" if n < pulls else ""),
                        author=f"dev{n % people}", pull=100 + n if n < pulls else None) for n in range(commits))
    prs = tuple(PullRequest(number=100 + n, title=f"{title} {n}", author=f"dev{n % people}",
                            url=f"https://github.com/acme/api/pull/{100 + n}") for n in range(pulls))
    base, head = ("v2.6.0", "v2.7.0") if direction != BACKWARD else ("v2.7.0", "v2.6.0")
    values: dict[str, Any] = {"compare_url": "https://github.com/acme/api/compare/v2.6.0...v2.7.0",
                              "total_commits": commits, **kwargs}
    return ChangeSet(base=base, head=head, direction=direction, commits=made, pulls=prs,
                     files=migration_files, migration_files=migration_files, **values)


def requested(harness: Harness, *, version: str = "2.7.0", previous: str | None = "2.6.0",
              migration: bool = False, rollback_of: int | None = None) -> Deploy:
    """A request of api ``version`` on production, waiting for Alice's approval, its lookups running."""
    store = harness.store
    return store.deploys.create(service="api", environment="production", version=version, version_prefixed=False,
                                requested_by="U0DAVE", previous_version=previous, checklist=[], needs_approval=True,
                                migration=migration, checking=True, rollback_of=rollback_of)


def looked_up(harness: Harness, deploy: Deploy, changes: dict[str, Any] | None,
              migration_checklist: list[str] | None = None) -> Deploy:
    return harness.store.deploys.record_lookup(deploy.id, changes, migration_checklist=migration_checklist)


async def post(harness: Harness, deploy: Deploy) -> Message:
    harness.slipway.messages.show(deploy)
    await harness.settle()
    return harness.message_of(deploy)


async def redraw(harness: Harness, deploy_id: int) -> Message:
    harness.slipway.events.publish(DeployChanged(deploy_id))
    await harness.settle()
    return harness.message_of(deploy_id)


async def shown_with(harness: Harness, changes: ChangeSet | dict[str, Any], **kwargs: Any) -> tuple[Deploy, str]:
    """A request whose lookups recorded ``changes``, posted: the deploy and its message's text."""
    record = changes.as_record() if isinstance(changes, ChangeSet) else changes
    checklist = kwargs.pop("migration_checklist", None)
    deploy = looked_up(harness, requested(harness, **kwargs), record, checklist)
    message = await post(harness, deploy)
    assert block_kit_problem(message.blocks) is None
    return harness.deploy(deploy.id), texts(message)


def texts(message: Message) -> str:
    """Every mrkdwn text of the message: sections, their fields, context lines."""
    found = []
    for block in message.blocks:
        if block["type"] == "section":
            found.append(block.get("text", {}).get("text", ""))
            found += [cell["text"] for cell in block.get("fields", [])]
        elif block["type"] == "context":
            found += [element.get("text", "") for element in block["elements"]]
    return "\n".join(found)


def section_with(message: Message, start: str) -> str:
    return next(block["text"]["text"] for block in message.blocks
                if block["type"] == "section" and block.get("text", {}).get("text", "").startswith(start))


def buttons(message: Message) -> list[str]:
    return [element["action_id"] for block in message.blocks if block["type"] == "actions"
            for element in block["elements"]]


def no_raw_control(text: str) -> None:
    """Nothing a source wrote acts in Slack: every ``<`` opens a link Slipway wrote."""
    rest = LINK.sub("", text)
    assert "<!channel>" not in text and "<@U0EVIL>" not in text
    assert "<" not in re.sub(r"<(@U0[A-Z]+|!date\^[^>]*)>", "", rest), rest


# -- checking -----------------------------------------------------------------------------


async def test_while_it_is_checked_the_request_says_so_and_offers_no_approve(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.slipway.lookups, "start", lambda deploy_id: None)  # the lookup never ends
    deploy = requested(harness)
    message = await post(harness, deploy)
    assert CHECKING_TEXT in texts(message)
    assert CHECKING_TEXT == ":hourglass_flowing_sand: Checking what it ships and whether its artifacts exist…"
    assert buttons(message) == [ACTION_REJECT, ACTION_CANCEL]
    assert "What it ships" not in texts(message)

    looked_up(harness, deploy, change_set().as_record())
    message = await redraw(harness, deploy.id)
    assert CHECKING_TEXT not in texts(message)
    assert buttons(message) == [ACTION_APPROVE, ACTION_REJECT, ACTION_CANCEL]
    assert "*What it ships*\n14 commits, 5 pull requests by 4 people" in texts(message)


async def test_a_rollback_being_checked_is_not_held(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollback is looked up too, but never waits: nothing is withheld (it has no Approve anyway)."""
    monkeypatch.setattr(harness.slipway.lookups, "start", lambda deploy_id: None)
    undone = harness.mark_succeeded("api", "production", "2.7.0")
    deploy = requested(harness, version="2.6.0", previous="2.7.0", rollback_of=undone.id)
    assert deploy.checking and not deploy.held
    message = await post(harness, deploy)
    assert CHECKING_TEXT in texts(message)


# -- what it ships -------------------------------------------------------------------------


async def test_a_request_names_its_first_pull_requests_and_counts_the_rest(harness: Harness) -> None:
    _, shown = await shown_with(harness, change_set(commits=14, pulls=8, people=4))
    assert "*What it ships*\n14 commits, 8 pull requests by 4 people · " \
           "<https://github.com/acme/api/compare/v2.6.0...v2.7.0|compare v2.6.0…v2.7.0>" in shown
    for n in range(MAX_PULLS_SHOWN):
        assert f"• <https://github.com/acme/api/pull/{100 + n}|#{100 + n}> Change {n} — dev{n % 4}" in shown
    assert "#105" not in shown
    assert "…and 3 more pull requests" in shown
    assert "…plus 6 commits outside pull requests" in shown


async def test_one_of_each_is_said_in_the_singular(harness: Harness) -> None:
    _, shown = await shown_with(harness, change_set(commits=1, pulls=1, people=1))
    assert "1 commit, 1 pull request by 1 person" in shown
    assert "more pull request" not in shown and "outside pull requests" not in shown


async def test_without_pull_requests_the_first_commits_are_named(harness: Harness) -> None:
    _, shown = await shown_with(harness, change_set(commits=9, pulls=0, people=2))
    assert "9 commits by 2 people" in shown
    assert "• `0000000` Change 0 — dev0" in shown and "• `0000004` Change 4 — dev0" in shown
    assert "Change 5" not in shown
    assert "…and 4 more commits" in shown


async def test_a_downgrade_says_what_it_takes_out(harness: Harness) -> None:
    _, shown = await shown_with(harness, change_set(commits=3, pulls=1, people=2, direction=BACKWARD),
                                version="2.6.0", previous="2.7.0")
    assert "Takes out 3 commits, 1 pull request by 2 people" in shown
    assert "compare v2.6.0…v2.7.0" in shown  # older to newer, whichever way it goes
    assert "#100" in shown


async def test_a_first_deploy_says_there_is_nothing_to_compare_with(harness: Harness) -> None:
    _, shown = await shown_with(harness, ChangeSet(base=None, head="v2.7.0", direction=FIRST), previous=None)
    assert "*What it ships*\nFirst deploy of api to production: nothing to compare with" in shown


async def test_the_same_version_says_it_is_the_same_code(harness: Harness) -> None:
    _, shown = await shown_with(harness, ChangeSet(base="v2.7.0", head="v2.7.0", direction=SAME), previous="2.7.0")
    assert "*What it ships*\nSame code as what runs" in shown


async def test_a_source_that_failed_says_why_and_blocks_nothing(harness: Harness) -> None:
    deploy, shown = await shown_with(harness, {"unavailable": "GitHub answered 502 <!here> & gave up"})
    assert ":grey_question: Changes unavailable: GitHub answered 502 &lt;!here&gt; &amp; gave up" in shown
    assert "<!here>" not in shown
    assert ACTION_APPROVE in buttons(harness.message_of(deploy))


async def test_the_migration_files_say_why_it_carries_a_migration(harness: Harness) -> None:
    files = ("db/migrate/001_add_users.rb", "db/migrate/002_index.rb")
    deploy, shown = await shown_with(harness, change_set(migration_files=files),
                                     migration_checklist=["Backup taken"])
    assert deploy.migration
    assert ":card_file_box: *Carries a migration:* db/migrate/001_add_users.rb, db/migrate/002_index.rb " \
           "(touched by this range)" in shown
    assert "*Database migration*" in shown  # the facts say so too


async def test_many_migration_files_are_counted(harness: Harness) -> None:
    files = tuple(f"db/migrate/{n:03}_x.rb" for n in range(40))
    _, shown = await shown_with(harness, change_set(migration_files=files), migration_checklist=[])
    assert "db/migrate/004_x.rb, and 35 more (touched by this range)" in shown
    assert "db/migrate/005_x.rb" not in shown
    deploy = harness.latest_deploy()
    assert "db/migrate/019_x.rb, and 20 more (touched by this range)" in said(await harness.command(f"show {deploy.id}"))
    assert "`db/migrate/019_x.rb`, and 20 more\n" in ship_report(harness.store, harness.config, deploy)


async def test_a_request_cancelled_for_its_artifacts_says_why_once(harness: Harness) -> None:
    problem = "its image registry.example/api:2.7.0 is not in the registry: build and push it first"
    deploy = looked_up(harness, requested(harness), {**change_set().as_record(), "artifact_problems": [problem]})
    harness.store.deploys.transition(deploy.id, allowed_from=(deploy.status,), to=DeployStatus.CANCELLED,
                                     actor=None, action="artifact_check_failed", reason=problem)
    shown = texts(await post(harness, deploy))
    assert shown.count(problem) == 1  # in the status, not repeated under what it ships
    assert "14 commits, 5 pull requests" in shown


async def test_artifact_problems_of_a_rollback_are_shown(harness: Harness) -> None:
    problem = "could not check that its tag v2.6.0 exists: the source took longer than 10 s"
    undone = harness.mark_succeeded("api", "production", "2.7.0")
    _, shown = await shown_with(harness, {"unavailable": "timed out", "artifact_problems": [problem]},
                                version="2.6.0", previous="2.7.0", rollback_of=undone.id)
    assert f":warning: *Artifacts:* {problem}" in shown


async def test_hostile_titles_authors_and_paths_reach_slack_as_text(harness: Harness) -> None:
    hostile = ChangeSet(
        base="v2.6.0", head="v2.7.0", direction=FORWARD,
        commits=(Commit("a" * 40, HOSTILE, "<@U0EVIL>", pull=7), Commit("b" * 40, f"{HOSTILE} again", "m&m")),
        pulls=(PullRequest(7, HOSTILE, "<!channel>", "https://github.com/acme/api/pull/7"),
               PullRequest(8, "Bad link", "x", "javascript:alert(1)|<!channel>")),
        files=("db/<!channel>.sql",), migration_files=("db/<!channel>.sql",),
        compare_url="https://github.com/acme/api/compare/a...b|<!channel>")
    deploy, _ = await shown_with(harness, hostile, migration_checklist=[])
    message = harness.message_of(deploy)
    ships = section_with(message, "*What it ships*")
    assert "• <https://github.com/acme/api/pull/7|#7> &lt;!channel&gt; ping &lt;@U0EVIL&gt; &amp; " \
           "&lt;https://evil.example|docs&gt; — &lt;!channel&gt;" in ships
    assert "• #8 Bad link — x" in ships  # a URL that is no plain web address is no link
    assert "compare" not in ships
    assert "db/&lt;!channel&gt;.sql" in ships
    no_raw_control(ships)
    record = said(await harness.command(f"show {deploy.id}"))
    no_raw_control(record)
    assert "m&amp;m" in record
    report = ship_report(harness.store, harness.config, harness.deploy(deploy.id))
    assert "<!channel>" not in report and "<@U0EVIL>" not in report
    assert "&lt;!channel&gt; ping &lt;@U0EVIL&gt; &amp;" in report


# -- Block Kit's limits ----------------------------------------------------------------------


async def test_three_hundred_commits_stay_within_block_kits_limits(harness: Harness) -> None:
    """The fake Slack refuses a post or an edit that breaks a Block Kit
    limit (``invalid_blocks``, as Slack does), so the message shown is the
    one drawn from these changes only if it passed."""
    monkey = "&<>" * 100  # escaped, each title is 1,200 characters before it is cut
    changes = change_set(commits=300, pulls=120, people=40, title=monkey,
                         migration_files=tuple(f"db/migrate/{n:04}_{monkey}.rb" for n in range(300)))
    deploy = looked_up(harness, requested(harness), changes.as_record(), migration_checklist=["Backup taken"])
    message = await post(harness, deploy)
    assert block_kit_problem(message.blocks) is None
    assert len(message.blocks) <= MAX_BLOCKS
    ships = section_with(message, "*What it ships*")
    assert len(ships) <= MAX_SECTION_TEXT
    assert ships.startswith("*What it ships*\n300 commits, 120 pull requests by 40 people")
    assert "…plus 180 commits outside pull requests" in ships
    assert "(touched by this range)" in ships and "and 295 more" in ships
    no_raw_control(ships)
    shown_pulls = ships.count("• <https://github.com/acme/api/pull/")
    assert 1 <= shown_pulls <= MAX_PULLS_SHOWN
    assert f"…and {120 - shown_pulls} more pull requests" in ships
    assert not re.search(r"&[a-z]*…", ships)  # no entity cut in half
    # the edit after a change passes too
    message = await redraw(harness, deploy.id)
    assert block_kit_problem(message.blocks) is None and message.updates >= 1
    # /deploy show and the ship report name more of the files, and count the rest
    record = said(await harness.command(f"show {deploy.id}"))
    assert re.search(r"db/migrate/0001_.*, and 2\d\d more \(touched by this range\)", record)
    report = ship_report(harness.store, harness.config, harness.deploy(deploy.id))
    assert re.search(r"- \*\*Carried a migration:\*\* `db/migrate/0000_.*, and 2\d\d more\n", report)


def test_the_section_keeps_its_links_whole_however_long_the_lines(make_deploy) -> None:
    """Lines that cannot fit are counted, never cut through a link."""
    long_url = "https://github.com/acme/api/pull/1?" + "x" * 400
    pulls = tuple(PullRequest(n, "&" * 2000, "a" * 2000, long_url) for n in range(5))
    changes = ChangeSet("v2.6.0", "v2.7.0", FORWARD, pulls=pulls, total_commits=5,
                        compare_url="https://github.com/acme/api/compare/" + "y" * 450)
    text = changes_text(make_deploy(changes.as_record()))
    assert text is not None and len(text) <= MAX_SECTION_TEXT
    assert text.count("<") == text.count(">") == len(LINK.findall(text))


@pytest.fixture
def make_deploy(harness: Harness):
    def make(record: dict[str, Any]) -> Deploy:
        return looked_up(harness, requested(harness), record)
    return make


# -- /deploy show and the ship report ----------------------------------------------------------


async def test_show_lists_every_pull_request_and_commit(harness: Harness) -> None:
    deploy, _ = await shown_with(harness, change_set(commits=14, pulls=8, people=4))
    record = said(await harness.command(f"show {deploy.id}"))
    assert "• *What it ships:* 14 commits, 8 pull requests by 4 people" in record
    for n in range(8):
        assert f"    ◦ <https://github.com/acme/api/pull/{100 + n}|#{100 + n}> Change {n} — dev{n % 4}" in record
    for n in range(14):
        assert f"    ◦ `{n:07x}` Change {n}" in record
    assert "    ◦ `0000000` Change 0 (#100) — dev0" in record
    assert "    ◦ `000000d` Change 13 — dev1" in record
    assert "not shown" not in record


async def test_show_bounds_a_long_list_and_counts_what_it_leaves_out(harness: Harness) -> None:
    deploy, _ = await shown_with(harness, change_set(commits=300, pulls=300, people=30, title="A" * 140))
    record = said(await harness.command(f"show {deploy.id}"))
    assert len(record) <= MAX_SECTION_TEXT + 12000 + 100  # the record, then at most 12,000 of changes
    pulls = record.count("    ◦ <https://github.com/acme/api/pull/")
    commits = len(re.findall(r"    ◦ `[0-9a-f]{7}`", record))
    assert pulls >= 20 and commits >= 20
    assert f"    … {300 - pulls} more pull request(s) not shown" in record
    assert f"    … {300 - commits} more commit(s) not shown" in record


async def test_show_says_while_the_changes_are_checked(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.slipway.lookups, "start", lambda deploy_id: None)
    deploy = requested(harness)
    assert "• *What it ships:* checking…" in record_text(deploy)
    looked_up(harness, deploy, {"unavailable": "no source configured"})
    assert "• Changes unavailable: no source configured" in record_text(harness.deploy(deploy.id))


async def test_show_of_a_deploy_without_lookups_says_nothing_of_changes(harness: Harness) -> None:
    deploy = harness.mark_succeeded("api", "staging", "2.7.0")
    record = said(await harness.command(f"show {deploy.id}"))
    assert "What it ships" not in record and "Changes unavailable" not in record


async def test_the_ship_report_lists_every_pull_request_and_commit(harness: Harness) -> None:
    deploy, _ = await shown_with(harness, change_set(commits=14, pulls=8, people=4,
                                                     migration_files=("db/migrate/001_x.rb",)),
                                 migration_checklist=[])
    report = ship_report(harness.store, harness.config, deploy)
    assert "## Changes\n\n- **What it shipped:** 14 commits, 8 pull requests by 4 people " \
           "(compare: <https://github.com/acme/api/compare/v2.6.0...v2.7.0>)" in report
    assert "- **Carried a migration:** `db/migrate/001_x.rb`" in report
    assert "### Pull requests" in report and "### Commits" in report
    for n in range(8):
        assert f"- #{100 + n} Change {n} — dev{n % 4} (<https://github.com/acme/api/pull/{100 + n}>)" in report
    for n in range(14):
        assert f"- `{n:07x}` Change {n}" in report
    assert report.index("## Changes") < report.index("## Checks")


async def test_the_ship_report_bounds_a_long_list(harness: Harness) -> None:
    deploy, _ = await shown_with(harness, change_set(commits=300, pulls=300, people=30, title="B" * 140))
    report = ship_report(harness.store, harness.config, deploy)
    changes = report[report.index("## Changes"):report.index("## Checks")]
    assert len(changes) <= MAX_REPORT_CHANGES + 1000
    assert re.search(r"… \d+ more pull request\(s\) not shown", changes)
    assert re.search(r"… \d+ more commit\(s\) not shown", changes)


async def test_the_ship_report_of_a_first_deploy_and_an_unavailable_source(harness: Harness) -> None:
    first, _ = await shown_with(harness, ChangeSet(base=None, head="v2.7.0", direction=FIRST), previous=None)
    report = ship_report(harness.store, harness.config, first)
    assert "- **What it shipped:** First deploy of api to production: nothing to compare with" in report
    assert "### Commits" not in report
    harness.store.deploys.transition(first.id, allowed_from=(first.status,), to=DeployStatus.CANCELLED,
                                     actor=None, action="cancel", reason="test")
    down, _ = await shown_with(harness, {"unavailable": "tag v2.6.0 does not exist"})
    assert "- Changes unavailable: tag v2.6.0 does not exist" in ship_report(harness.store, harness.config, down)
