from orchestrator.errors import StepError
from workers.plugins import plugin


@plugin("greeter")
class Greeter:
    """Says hello, politely."""

    def greet(self, ctx, name: str, times: int = 1) -> dict:
        """Greet `name` `times` times."""
        if not name:
            raise StepError("name must not be empty", retryable=False)
        lines = []
        for i in range(times):
            if ctx.cancelled:
                raise StepError("cancelled", retryable=False)
            lines.append(f"hello {name}")
            ctx.log(f"greeted {name}", entity_tag="person", entity_id=name)
            ctx.progress((i + 1) / times)
        ctx.stats(items_processed=times)
        return {"lines": lines, "run": ctx.run_id, "attempt": ctx.attempt}

    def _helper(self):  # private: not a step method
        pass
