"""The server's automations that keep a night going without a person when a machine dies.

- A flow run that stops sending heartbeats (its process or machine died) is marked Crashed, whether it died
  in its first seconds (after Running, before a second heartbeat) or hours in (Prefect's documented zombie
  pattern, also keyed on Running).
- A crashed `ingest/default` run is set back to Scheduled, as the UI's Retry does: a worker of any machine
  takes it and it resumes, finding its finished episodes up to date and its stages cached. A run that keeps
  crashing stops itself (flows.MAX_RUN_ATTEMPTS).
- An `ingest/default` run left Pending by a worker that died before starting it goes back to Scheduled.

The episodes themselves need none of this: the Dask scheduler gives a dead worker's episodes to the others.
"""

from __future__ import annotations

from datetime import timedelta

HEARTBEAT_SECONDS = 30  # flow runs send a heartbeat this often (PREFECT_FLOWS_HEARTBEAT_FREQUENCY of the workers)
PENDING_SECONDS = 180  # a run Pending at a worker this long was taken by a worker that died
ZOMBIE = "gdr: crash flow runs whose worker is gone"
RESUME = "gdr: resume a crashed ingest run"
UNSTARTED = "gdr: reschedule an ingest run its worker never started"
FINAL_EVENTS = {"prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed"}


def ensure_recovery_automations(deployment_id: str) -> list[str]:
    """(Re)create the three automations, so that an upgrade's changes to them take effect; their names."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    every_run = ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]})
    of_ingest = ResourceSpecification({"prefect.resource.id": f"prefect.deployment.{deployment_id}"})
    automations = [
        Automation(
            name=ZOMBIE,
            trigger=EventTrigger(
                after={"prefect.flow-run.Running", "prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
                match=every_run, for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                within=timedelta(seconds=HEARTBEAT_SECONDS * 2),
            ),
            actions=[ChangeFlowRunState(state=StateType.CRASHED, message="no heartbeat: the worker running it is gone")],
        ),
        Automation(
            name=RESUME,
            trigger=EventTrigger(expect={"prefect.flow-run.Crashed"}, match=every_run, match_related=of_ingest,
                                 posture=Posture.Reactive, threshold=1),
            actions=[ChangeFlowRunState(state=StateType.SCHEDULED, name="AwaitingRetry", force=True,
                                        message="resumed after a crash: finished episodes are kept, cached stages reused")],
        ),
        Automation(
            name=UNSTARTED,
            trigger=EventTrigger(
                after={"prefect.flow-run.Pending"}, expect={"prefect.flow-run.Running", *FINAL_EVENTS},
                match=every_run, match_related=of_ingest, for_each={"prefect.resource.id"}, posture=Posture.Proactive,
                threshold=1, within=timedelta(seconds=PENDING_SECONDS),
            ),
            actions=[ChangeFlowRunState(state=StateType.SCHEDULED, name="AwaitingRetry", force=True,
                                        message="its worker took it and went away before starting it")],
        ),
    ]
    for automation in automations:
        try:
            Automation.read(name=automation.name).delete()  # type: ignore[attr-defined]  # Prefect types its sync-or-async functions as returning either
        except ValueError:
            pass
        automation.create()
    return [f"automation '{a.name}'" for a in automations]
