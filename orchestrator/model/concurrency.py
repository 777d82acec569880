"""The ``concurrency`` field of a definition: how many runs of a workflow may be active at once.

``concurrency: {key, limit, strategy}``: ``key`` a template over ``inputs`` (optional; without it
every run of the workflow is in one group), ``limit`` >= 1, ``strategy`` queue (default) |
cancel_newest | cancel_in_progress. The engine's slots (orchestrator/engine/slots.py) enforce it;
this module only describes and checks it, and renders a run's key from its inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, fields, validate

from orchestrator.errors import DefinitionError, EvaluationError, ExpressionError
from orchestrator.model import expressions

STRATEGIES = ("queue", "cancel_newest", "cancel_in_progress")
MAX_LIMIT = 100_000
# A rendered key longer than this is refused at submit: it names a Redis key.
MAX_KEY_LENGTH = 200


@dataclass(frozen=True)
class Concurrency:
    """At most ``limit`` runs per rendered ``key`` are active; ``strategy`` says what a run
    that finds them all taken does."""

    limit: int
    key: str | None = None
    strategy: str = "queue"

    def render_key(self, inputs: Mapping[str, Any]) -> str:
        """The run's group within its workflow ("" without a key); a template that cannot be
        rendered, or renders to something empty or too long, is a DefinitionError at path
        ``concurrency.key``."""
        if self.key is None:
            return ""
        try:
            value = expressions.Template.parse(self.key).render({"inputs": dict(inputs)})
        except (EvaluationError, ExpressionError) as exc:
            raise DefinitionError([("concurrency.key", str(exc))]) from None
        text = value if isinstance(value, str) else expressions._format(value)
        if not text:
            raise DefinitionError(
                [("concurrency.key", f"{self.key!r} rendered to an empty key for these inputs")]
            )
        if len(text) > MAX_KEY_LENGTH:
            raise DefinitionError(
                [
                    (
                        "concurrency.key",
                        f"rendered to {len(text)} characters (at most {MAX_KEY_LENGTH})",
                    )
                ]
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"limit": self.limit}
        if self.key is not None:
            out["key"] = self.key
        if self.strategy != "queue":
            out["strategy"] = self.strategy
        return out


class ConcurrencySchema(Schema):
    class Meta:
        unknown = RAISE

    key = fields.String(allow_none=True, validate=validate.Regexp(r"\S", error="may not be empty"))
    limit = fields.Integer(
        strict=True,
        required=True,
        validate=validate.Range(
            min=1, max=MAX_LIMIT, error=f"must be an integer from 1 to {MAX_LIMIT}"
        ),
    )
    strategy = fields.String(load_default="queue", validate=validate.OneOf(STRATEGIES))


def build(data: Mapping[str, Any] | None) -> Concurrency | None:
    """The model from the schema's output (None: no limit)."""
    if not data:
        return None
    return Concurrency(limit=data["limit"], key=data.get("key"), strategy=data["strategy"])


def check(data: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """The semantic problems of a raw definition's ``concurrency`` (the schema checks types):
    the key must parse and may read only ``inputs``."""
    conc = data.get("concurrency")
    if not isinstance(conc, Mapping):
        return
    key = conc.get("key")
    if not isinstance(key, str) or not key.strip():
        return
    try:
        template = expressions.Template.parse(key)
    except ExpressionError as exc:
        yield "concurrency.key", exc.message
        return
    for expr in template.expressions:
        for chain in expr.paths():
            if chain[0] != "inputs":
                yield (
                    "concurrency.key",
                    f"may read only inputs (e.g. {{{{ inputs.customer }}}}), not '{chain[0]}'",
                )
