"""Monthly and daily token budgets of a key, whether the YAML's ``api_keys`` or an admin made it
(each ``APIKey`` carries its own): a key that spent its budget gets a 429 whose code says which
budget, and whose message and ``Retry-After`` say when it resets (calendar months and days, UTC,
as the ledger counts them). Both paths check it: the request policy (``/v1``, ``/v2``, the
one-hop URLs) and the pipeline runner."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from configs.api_keys import APIKey
from serve.router.errors import APIError
from serve.usage.database import UsageDatabase, day_start, month_start


def next_month(now: datetime) -> datetime:
    start = month_start(now)
    return (start + timedelta(days=32)).replace(day=1)


def check_budget(usage: UsageDatabase, key: APIKey | None, now: datetime | None = None) -> None:
    """A 429 when ``key`` has spent its monthly or daily token budget."""
    if key is None or not (key.monthly_token_budget or key.daily_token_budget):
        return
    now = now or datetime.now(UTC)
    month_spent, day_spent = usage.spent(key.name)
    for limit, spent, period, resets in (
        (key.monthly_token_budget, month_spent, "monthly", next_month(now)),
        (key.daily_token_budget, day_spent, "daily", day_start(now) + timedelta(days=1)),
    ):
        if limit is not None and spent >= limit:
            wait_s = (resets - now.replace(tzinfo=None)).total_seconds()
            raise APIError(
                429,
                f"this API key ({key.name}) has spent its {period} token budget ({spent} of "
                f"{limit} tokens); it resets at {resets.isoformat()}Z",
                code=f"{period}_token_budget_exceeded",
                headers={"Retry-After": str(max(1, int(wait_s + 0.5)))},
            )
