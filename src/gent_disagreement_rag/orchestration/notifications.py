"""Being told when a night goes wrong: Prefect automations that send the `gdr-notify` notification block a
message when an `ingest/default` run ends Failed or Crashed, or is Late (scheduled, and no worker took it).

`gdr server start` writes the block from NOTIFY_URL (a Slack incoming webhook, or any URL that takes a JSON
POST); any other Prefect notification block saved under that name (email, Teams, PagerDuty...) is used as it is.
"""

from __future__ import annotations

from pydantic import SecretStr

NOTIFY_BLOCK = "gdr-notify"
FAILED_AUTOMATION = "gdr: ingest run failed"
LATE_AUTOMATION = "gdr: ingest run late"
SUBJECT = "ingest {{ flow_run.name }}: {{ flow_run.state.name }}"
BODY = """Run {{ flow_run.name }} of {{ flow.name }}/{{ deployment.name }} is {{ flow_run.state.name }}.
{{ flow_run.state.message }}
{{ flow_run|ui_url }}"""


def save_notify_block(url: SecretStr) -> None:
    """The `gdr-notify` block for NOTIFY_URL: Slack's own block for a Slack webhook, else a JSON POST."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook

    value = url.get_secret_value()
    if value.startswith("https://hooks.slack.com/"):
        SlackWebhook(url=value).save(NOTIFY_BLOCK, overwrite=True)
        return
    CustomWebhookNotificationBlock(
        name="gdr", url=value, method="POST", json_data={"subject": "{{subject}}", "body": "{{body}}"},
        allow_private_urls=True,  # the user's own receiver may well be on their network
    ).save(NOTIFY_BLOCK, overwrite=True)


def ensure_automations(deployment_id: str) -> list[str]:
    """(Re)create the two automations for the deployment, when a `gdr-notify` block exists; their names."""
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    with get_client(sync_client=True) as client:  # by name, whatever block type the user chose
        block_id = next((b.id for b in client.read_block_documents() if b.name == NOTIFY_BLOCK), None)
    if block_id is None:
        return []
    created = []
    for name, events in ((FAILED_AUTOMATION, {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}),
                         (LATE_AUTOMATION, {"prefect.flow-run.Late"})):
        try:
            Automation.read(name=name).delete()  # type: ignore[attr-defined]  # Prefect types its sync-or-async functions as returning either
        except ValueError:
            pass
        Automation(
            name=name,
            trigger=EventTrigger(
                expect=events,
                match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
                match_related=ResourceSpecification({"prefect.resource.id": f"prefect.deployment.{deployment_id}"}),
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
        ).create()
        created.append(name)
    return created
