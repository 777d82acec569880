"""``POST /api/v1/events``: publish an event, which starts a run of every registered workflow
whose event trigger matches it (orchestrator/engine/publish.py does the work, for the Python
client and the CLI too). Needs the publisher role, or operator or admin. Added to the REST API's
blueprint (/api/v1) when imported, which web/app.py does before registering it."""

from __future__ import annotations

from typing import Any

from flask_smorest import abort

from orchestrator.audit.queries import event_lookup
from orchestrator.errors import EventError
from web import auth
from web.api import blp, ext, user_name
from web.eventschemas import PublishBody, PublishedSchema


@blp.route("/events", methods=["POST"])
@auth.require("publisher", mutating=True)
@blp.arguments(PublishBody)
@blp.response(200, PublishedSchema)
def publish_event(body: dict[str, Any]) -> dict[str, Any]:
    """Publish an event: the runs it started, and the triggers it matched that started none
    (deduplicated by the key, filtered out, or failed with the error and its path)."""
    e = ext()
    try:
        out = e.client.publish(
            body["name"],
            body["payload"],
            body["key"],
            triggered_by=user_name(),
            recorded=event_lookup(e.store, e.client.settings.event_key_ttl),
        )
    except EventError as exc:
        errors: dict[str, list[str]] = {}
        for field, message in exc.problems:
            errors.setdefault(field, []).append(message)
        abort(400, message=str(exc), errors={"json": errors})
        raise
    return out.as_dict()
