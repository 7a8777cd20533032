"""Notifications: registry changes reach people through Prefect automations to a webhook.

    configure_notifications(url) -> Notifications      # what `mlops deploy --webhook URL` calls

The webhook is a Prefect **Custom Webhook** block named `mlops-webhook` that POSTs the JSON body
`{"text": "<subject>\\n<body>"}`: what a Slack incoming webhook takes (and Mattermost, Rocket.Chat, Discord's
`/slack` endpoint, or any receiver of your own). The URL is kept among the block's secret values, so the
Prefect UI and API show it obfuscated (a Slack webhook URL is a credential).

One automation per event kind (`MESSAGES`), named `mlops: <event>`: a reactive trigger, threshold 1, on the
event for any `mlflow.registered-model.*` resource, whose action (SendNotification) renders a message from
the event with Jinja and sends it through the block: promotions, rollbacks, degraded verdicts, approvals
waiting for a person, a challenger set or retired. Running it again points the block at the new URL and
replaces the automations in place (no duplicates; `mlops: ...` automations for kinds no longer listed go).

The Prefect server sends them (its triggers and actions services, on by default in `prefect server start`
and in Prefect's temporary server), so the URL must be reachable from the server's host; a failed POST is a
`prefect.automation.action.failed` event in the Prefect UI's Event Feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from usecases.vocabulary import (
    APPROVAL_WAITING,
    CHALLENGER_RETIRED,
    CHALLENGER_SET,
    MODEL_DEGRADED,
    MODEL_PROMOTED,
    MODEL_ROLLED_BACK,
    model_resource,
)

if TYPE_CHECKING:
    from prefect.automations import AutomationCore
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

# Prefect is imported inside the functions that talk to it: `mlops deploy` checks the URL (and --dry-run
# describes) before `use_prefect_server()` has chosen the API, and Prefect reads its settings when imported.

WEBHOOK_ENV = "MLOPS_WEBHOOK_URL"  # `mlops deploy`'s default for --webhook
BLOCK_NAME = "mlops-webhook"
NAME_PREFIX = "mlops: "  # the automations' names: "mlops: mlops.model.promoted", ...
SECRET_KEY = "webhook_url"  # the URL's key among the block's secret values
SLACK_BODY = {"text": "{{subject}}\n{{body}}"}  # the block's own placeholders, filled per message
TIMEOUT_SECONDS = 10.0  # per POST; a slow receiver must not hold the server's actions service

# Every template starts with these: the model's name (the resource id without its prefix) and the payload.
_PREAMBLE = (
    f'{{% set model = event.resource.id | replace("{model_resource("")}", "") %}}'
    "{% set p = event.payload %}"
)
_FOOTER = (
    "\n{{ event.event }} at {{ event.occurred.strftime('%Y-%m-%d %H:%M:%S UTC') }}"
    "{% if p.mlflow_run_id %}, MLflow run {{ p.mlflow_run_id }}{% endif %}"
)


@dataclass(frozen=True)
class Message:
    """What people read about one event kind: a subject line and a body, Jinja templates on the event."""

    event: str
    subject: str
    body: str
    about: str  # the automation's description

    @property
    def automation_name(self) -> str:
        return f"{NAME_PREFIX}{self.event}"


MESSAGES = (
    Message(
        MODEL_PROMOTED,
        "{{ model }} v{{ p.version }} is the champion",
        "{{ p.summary or p.evidence or ('previous champion: v' ~ p.previous_version if p.previous_version "
        "else 'its first champion') }}",
        "A version became champion (training, compaction or a challenger on live evidence).",
    ),
    Message(
        MODEL_ROLLED_BACK,
        "{{ model }} rolled back to v{{ p.version }}",
        "v{{ p.previous_version }} is no longer champion. Reason: {{ p.reason }}"
        "{% if p.by %} (by {{ p.by }}){% endif %}",
        "The champion was rolled back (`mlops rollback`).",
    ),
    Message(
        MODEL_DEGRADED,
        "{{ model }} v{{ p.version }} is {{ p.verdict }}",
        "{% if p.reasons %}{{ p.reasons | join('; ') }}{% endif %}"
        "{% if p.drifted_features %}\nDrifted features: {{ p.drifted_features | join(', ') }}{% endif %}"
        "{% if p.data %}\nMonitored data: {{ p.data }}{% endif %}",
        "Monitoring found the champion drifted or degraded (`mlops monitor`, the monitoring deployments).",
    ),
    Message(
        APPROVAL_WAITING,
        "{{ model }} v{{ p.version }} waits for your approval",
        "{{ p.todo }}",
        "A training run paused: a trade-off the gates cannot decide waits for a person.",
    ),
    Message(
        CHALLENGER_SET,
        "{{ model }} v{{ p.version }} is the challenger, in shadow",
        "{{ p.reason }}{% if p.previous or p.previous_version %} (replaces "
        "v{{ p.previous or p.previous_version }}){% endif %}",
        "A version was made challenger: the model server scores live traffic with it too, unanswered.",
    ),
    Message(
        CHALLENGER_RETIRED,
        "{{ model }}: challenger v{{ p.version }} retired",
        "{{ p.reason }}",
        "The challenger was retired (worse on live evidence, replaced, or by hand).",
    ),
)


@dataclass(frozen=True)
class Notifications:
    """What `configure_notifications` left on the server."""

    where: str  # the webhook's scheme, host and port: never its path, which often holds a token
    block_id: str
    automations: tuple[str, ...]  # names, one per event kind
    created: int
    updated: int
    removed: int  # duplicates, and `mlops: ...` automations of kinds no longer sent


def check_webhook_url(url: str) -> str:
    """The URL, stripped; ValueError naming what is wrong when it is not an http(s) URL with a host."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "the webhook must be an http:// or https:// URL with a host, e.g. "
            "https://hooks.slack.com/services/..., got "
            + (f"scheme {parts.scheme!r}" if parts.scheme else "no scheme")
        )
    try:
        parts.port  # noqa: B018 - reading it validates it
    except ValueError as exc:
        raise ValueError(f"the webhook URL has a bad port: {exc}") from None
    return url


def where(url: str) -> str:
    """scheme://host[:port] of a webhook URL: enough to say where messages go without printing its token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def webhook_block(url: str) -> CustomWebhookNotificationBlock:
    """The block that POSTs `{"text": subject + newline + body}` to `url` (kept as a secret value)."""
    # lazy: Prefect only once the API is chosen (see the imports)
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    return CustomWebhookNotificationBlock(
        name=BLOCK_NAME,
        url="{{" + SECRET_KEY + "}}",
        json_data=SLACK_BODY,
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT_SECONDS,
        secrets={SECRET_KEY: url},
    )


def automations(block_id: str) -> list[AutomationCore]:
    """One automation per event kind in `MESSAGES`, sending through the block `block_id`."""
    # lazy: Prefect only once the API is chosen (see the imports)
    from prefect.automations import AutomationCore, EventTrigger, SendNotification

    return [
        AutomationCore(
            name=message.automation_name,
            description=message.about,
            enabled=True,  # set, so that a redeploy turns on one that was paused
            tags=["mlops"],
            trigger=EventTrigger(
                expect={message.event},
                match={"prefect.resource.id": model_resource("*")},
                posture="Reactive",
                threshold=1,
            ),
            actions=[
                SendNotification(
                    block_document_id=block_id,
                    subject=_PREAMBLE + message.subject,
                    body=_PREAMBLE + message.body + _FOOTER,
                )
            ],
        )
        for message in MESSAGES
    ]


def configure_notifications(url: str) -> Notifications:
    """Save the webhook block (URL replaced when it exists) and create or replace the automations."""
    # lazy: Prefect only once the API is chosen (see the imports)
    from prefect.client.orchestration import get_client

    url = check_webhook_url(url)
    block_id = str(webhook_block(url).save(BLOCK_NAME, overwrite=True))
    wanted = automations(block_id)
    created = updated = removed = 0
    with get_client(sync_client=True) as client:
        existing = [a for a in client.read_automations() if a.name.startswith(NAME_PREFIX)]
        for automation in wanted:
            same = [a for a in existing if a.name == automation.name]
            if same:
                client.update_automation(same[0].id, automation)
                updated += 1
            else:
                client.create_automation(automation)
                created += 1
            for duplicate in same[1:]:
                client.delete_automation(duplicate.id)
                removed += 1
        names = {a.name for a in wanted}
        for stale in (a for a in existing if a.name not in names):
            client.delete_automation(stale.id)
            removed += 1
    return Notifications(where(url), block_id, tuple(sorted(names)), created, updated, removed)


def current_notifications() -> str:
    """One line on what the server sends now: the automations named `mlops: ...` and where they go."""
    # lazy: Prefect only once the API is chosen (see the imports)
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        names = sorted(a.name for a in client.read_automations() if a.name.startswith(NAME_PREFIX))
    if not names:
        return f"none configured (give --webhook URL or set {WEBHOOK_ENV})"
    try:
        block = CustomWebhookNotificationBlock.load(BLOCK_NAME)
        target = where(block.secrets.get_secret_value().get(SECRET_KEY, block.url))
    except ValueError:  # the automations outlived their block: they cannot send
        target = f"a missing block {BLOCK_NAME!r}"
    return f"{len(names)} automation(s) {NAME_PREFIX}... send to {target}"


def remove_notifications() -> int:
    """Delete the `mlops: ...` automations (the block stays); how many went."""
    # lazy: Prefect only once the API is chosen (see the imports)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = [a for a in client.read_automations() if a.name.startswith(NAME_PREFIX)]
        for automation in found:
            client.delete_automation(automation.id)
    return len(found)


def describe(url: str | None) -> str:
    """Plain text for `mlops deploy` (and its --dry-run): what notifications it sets up, or that it leaves
    them."""
    if url is None:
        return f"notifications: left as they are (no --webhook URL, {WEBHOOK_ENV} unset)"
    kinds = ", ".join(m.event.rsplit(".", 1)[-1] for m in MESSAGES)
    return (
        f"notifications: {len(MESSAGES)} automation(s) {NAME_PREFIX}<event> ({kinds}) POST "
        f'{{"text": ...}} to {where(url)} through block {BLOCK_NAME!r}'
    )
