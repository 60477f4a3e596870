"""``status``: a call's push history, and — when it went wrong — the runbook check and next command."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from crm_push.config import BotConfig
from push_cli.display import print_json, row, table, truncate
from push_cli.runbook import CRM_REJECTS, PUSH_NOT_SENT, RECORDING_LINK, Check, command

_CONFIG_ERRORS = (
    "invalid post_call_push config",
    "no push config",
    "post_call_push must be",
    "payload is",
    "internal error while rendering",
    "header ",
)


@dataclass
class HistoryEntry:
    pushed_at: str
    status: str
    http_status: Any
    attempts: Any
    duration_ms: Any
    recording_link: str
    replay: str  # "by alice: CRM was down" or ""
    detail: str  # the error, or the CRM's answer when it rejected


@dataclass
class StatusReport:
    call_id: str
    bot_id: str
    results_stored_at: str
    latest: dict[str, Any] | None
    history: list[HistoryEntry] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    diagnosis: str = ""
    runbook: str = ""  # "docs/runbook.md#..." of the matching check, or ""
    next_commands: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _detail(entry: Mapping[str, Any]) -> str:
    if entry.get("status") == "rejected":
        return truncate(str(entry.get("response_body") or ""), 100)
    return truncate(str(entry.get("error") or ""), 100)


def _history(call: Mapping[str, Any]) -> list[HistoryEntry]:
    log = call.get("integration_log")
    entries = (
        [e for e in log if isinstance(e, Mapping) and e.get("type") == "post_call_push"]
        if isinstance(log, list)
        else []
    )
    history = []
    for entry in entries:
        replay = entry.get("replay")
        replay_text = f"by {replay.get('by')}: {replay.get('reason')}" if isinstance(replay, Mapping) else ""
        history.append(
            HistoryEntry(
                str(entry.get("pushed_at") or ""),
                str(entry.get("status") or ""),
                entry.get("http_status"),
                entry.get("attempts"),
                entry.get("duration_ms"),
                str(entry.get("recording_link") or ""),
                truncate(replay_text, 80),
                _detail(entry),
            )
        )
    return history


def build_status(
    call: Mapping[str, Any], bot: BotConfig | None, *, bot_exists: bool, now: datetime | None = None
) -> StatusReport:
    call_id = str(call.get("call_id"))
    bot_id = str(call.get("bot_id") or "")
    latest = call.get("post_call_push_result")
    events = call.get("events")
    report = StatusReport(
        call_id=call_id,
        bot_id=bot_id,
        results_stored_at=str(call.get("results_stored_at") or ""),
        latest=dict(latest) if isinstance(latest, Mapping) else None,
        history=_history(call),
        events=[dict(e) for e in events if isinstance(e, Mapping) and e.get("type") == "post_call_push"]
        if isinstance(events, list)
        else [],
    )
    check, report.diagnosis, report.next_commands = _diagnose(
        call, bot, bot_exists=bot_exists, now=now or datetime.now(UTC)
    )
    report.runbook = f"{check.reference} (check {check.number}: {check.title})" if check else ""
    return report


def _diagnose(
    call: Mapping[str, Any], bot: BotConfig | None, *, bot_exists: bool, now: datetime
) -> tuple[Check | None, str, list[str]]:
    call_id = str(call.get("call_id"))
    bot_id = str(call.get("bot_id") or "")
    preview = command("preview", "--call-id", call_id)
    lint = command("lint", "--bot-id", bot_id)
    replay = command("replay", "--call-id", call_id, "--reason", "<why, e.g. the ticket>")
    latest = call.get("post_call_push_result")
    if not isinstance(latest, Mapping):
        return _never_pushed(call, bot, bot_exists=bot_exists, now=now)

    status = latest.get("status")
    error = str(latest.get("error") or "")
    if status == "ok":
        if latest.get("recording_link") == "none":
            return (
                RECORDING_LINK,
                "pushed ok, but the CRM got an empty recording link",
                [command("preview", "--call-id", call_id, "--check-recording")],
            )
        return (
            None,
            "pushed ok. If the CRM shows a wrong or empty field, preview explains every field (checks 3-5)",
            [preview],
        )
    if status == "rejected":
        body = truncate(str(latest.get("response_body") or ""), 160)
        return (
            CRM_REJECTS,
            f"the CRM answered HTTP {latest.get('http_status')}: {body}",
            [preview, command("lint", "--bot-id", bot_id, "--schema", "crm-schema.json"), replay],
        )
    if status == "skipped":
        return PUSH_NOT_SENT, "not sent: the bot's post_call_push has no url", [lint, replay]
    if any(marker in error for marker in _CONFIG_ERRORS):
        return PUSH_NOT_SENT, f"not sent: the config cannot be used: {truncate(error, 200)}", [lint, preview, replay]
    return (PUSH_NOT_SENT, f"not sent: the CRM did not answer ({truncate(error, 200)})", [preview, replay])


def _never_pushed(
    call: Mapping[str, Any], bot: BotConfig | None, *, bot_exists: bool, now: datetime
) -> tuple[Check | None, str, list[str]]:
    call_id = str(call.get("call_id"))
    bot_id = str(call.get("bot_id") or "")
    replay = command("replay", "--call-id", call_id, "--reason", "<why, e.g. the ticket>")
    if not call.get("results_stored_at"):
        return (
            PUSH_NOT_SENT,
            "no push yet: results are not stored (results_stored_at is missing); the push "
            "starts when results ingestion sets it",
            [command("status", "--call-id", call_id)],
        )
    if call.get("skip_post_push") is True:
        return (
            PUSH_NOT_SENT,
            "never pushed by design: the call is flagged skip_post_push",
            [command("replay", "--call-id", call_id, "--force", "--reason", "<why, e.g. the ticket>")],
        )
    if not bot_exists:
        return PUSH_NOT_SENT, f"not pushed: bot {bot_id or '(none)'} is not in the Bots table", []
    if bot is None or not bot.has_push_config:
        return (
            PUSH_NOT_SENT,
            f"never pushed by design: bot {bot_id} has no post_call_push config",
            [command("lint", "--bot-id", bot_id)],
        )
    claim = call.get("post_call_push_claim")
    if isinstance(claim, Mapping):
        expires = int(claim.get("expires_at") or 0)
        until = datetime.fromtimestamp(expires, UTC).isoformat()
        if expires > now.timestamp():
            return (
                PUSH_NOT_SENT,
                f"a push is in progress (claimed at {claim.get('claimed_at')}, lease until "
                f"{until}); look again after that",
                [command("status", "--call-id", call_id)],
            )
        return (
            PUSH_NOT_SENT,
            f"a push claimed the call at {claim.get('claimed_at')} and died before recording a "
            "result (Lambda timeout or crash: see the function's logs)",
            [replay],
        )
    return (
        PUSH_NOT_SENT,
        "no push recorded: the trigger never reached the function, or it failed before "
        "claiming the call (see the function's errors and the stream's iterator age)",
        [command("preview", "--call-id", call_id), replay],
    )


def render_status(console: Console, report: StatusReport, *, as_json: bool) -> None:
    if as_json:
        print_json(console, report.as_json())
        return
    console.print(
        f"Call {report.call_id} (bot {report.bot_id or '-'}), results stored at "
        f"{report.results_stored_at or '(not yet)'}"
    )
    latest = report.latest
    if latest is not None:
        http = latest.get("http_status")
        console.print(
            f"Latest push: {str(latest.get('status')).upper()}"
            f"{f' HTTP {http}' if http is not None else ''} at {latest.get('pushed_at')} - "
            f"{latest.get('method')} {latest.get('url')} - recording link: {latest.get('recording_link') or '-'}"
        )
        if latest.get("replay"):
            replay = latest["replay"]
            console.print(f"  replayed by {replay.get('by')}: {truncate(str(replay.get('reason')), 120)}")
    else:
        console.print("Latest push: none recorded")
    if report.history:
        grid = table(
            f"Push history (integration_log, {len(report.history)} attempt(s))",
            "pushed at",
            "status",
            "http",
            "attempts",
            "ms",
            "recording link",
            "replay",
            "error / CRM answer",
        )
        for entry in report.history:
            row(
                grid,
                entry.pushed_at,
                entry.status,
                _dash(entry.http_status),
                _dash(entry.attempts),
                _dash(entry.duration_ms),
                entry.recording_link or "-",
                entry.replay or "-",
                entry.detail or "-",
            )
        console.print(grid)
    if report.events:
        timeline = ", ".join(f"t={e.get('t')}s {e.get('status')}" for e in report.events)
        console.print(f"Timeline (events): {timeline}")
    console.print(f"\nDiagnosis: {report.diagnosis}")
    if report.runbook:
        console.print(f"Runbook: {report.runbook}")
    if report.next_commands:
        console.print("Next:")
        for line in report.next_commands:
            console.print(f"  {line}")


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)
