"""Admin lists that stay fast on tables of millions of rows.

* `EstimatedPaginator` counts exactly up to a cap; past it, on PostgreSQL, it
  takes the planner's estimate (``pg_class.reltuples`` for an unfiltered table,
  the ``EXPLAIN`` row estimate for a filtered one) instead of a full COUNT(*).
* `RecentValuesFilter` lists a column's values for the sidebar from the latest
  rows instead of the distinct values of the whole table.
* `search_by_id` turns a search for a UUID into a primary-key lookup, and
  `latest` bounds a search for words to the latest SEARCH_WINDOW rows, so a
  rare word costs a range scan, not a scan of the whole table.
* `BigList`, the ModelAdmin base of such lists, puts them together.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Page, Paginator
from django.db import connections, models
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

from ..server.store.sql import EXPLAIN, TABLE_ESTIMATE

if TYPE_CHECKING:
    BasePaginator = Paginator[Any]
    ModelAdmin = admin.ModelAdmin[Any]
else:
    BasePaginator, ModelAdmin = Paginator, admin.ModelAdmin

#: Rows counted exactly before the paginator switches to an estimate.
EXACT_COUNT_LIMIT = 10_000
#: Most values a sidebar filter lists, and how many of the latest rows it reads.
FILTER_VALUES_LIMIT = 100
RECENT_WINDOW = 10_000
#: How many of the latest rows a search for words looks through (no date chosen).
SEARCH_WINDOW = 100_000


def _vendor(queryset: QuerySet[Any]) -> str:
    return str(connections[queryset.db].vendor)


def capped_count(queryset: QuerySet[Any], cap: int) -> int:
    """How many rows match, counting no further than `cap` + 1."""
    return queryset.order_by().values("pk")[: cap + 1].count()


def table_estimate(model: type[models.Model], using: str) -> int:
    """PostgreSQL's estimate of a table's rows (-1 when it was never analysed)."""
    with connections[using].cursor() as cursor:
        cursor.execute(TABLE_ESTIMATE, [model._meta.db_table])
        row = cursor.fetchone()
    return -1 if row is None else int(row[0])


def planner_estimate(queryset: QuerySet[Any]) -> int:
    """PostgreSQL's planner estimate of the rows a query returns."""
    sql, params = queryset.order_by().values("pk").query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(EXPLAIN + sql, params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class EstimatedPaginator(BasePaginator):
    """A paginator whose count is exact up to EXACT_COUNT_LIMIT rows and an
    estimate past it on PostgreSQL: `estimated` says so, and `at_least` when
    the estimate was lower than the rows already counted.

    It reads the first page before counting: a list that fits on it is counted
    by that read alone, and `first_rows` keeps the rows for page 1, so a search
    that finds little scans its rows once rather than three times."""

    estimated = False
    at_least = False
    limit = EXACT_COUNT_LIMIT
    first_rows: list[Any] | None = None

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        if self.orphans == 0:
            self.first_rows = list(queryset[: self.per_page + 1])
            if len(self.first_rows) <= self.per_page:
                return len(self.first_rows)
        if _vendor(queryset) != "postgresql":
            return super().count
        exact = capped_count(queryset, EXACT_COUNT_LIMIT)
        if exact <= EXACT_COUNT_LIMIT:
            return exact
        self.estimated = True
        if not queryset.query.where:
            estimate = table_estimate(queryset.model, queryset.db)
        else:
            estimate = planner_estimate(queryset)
        self.at_least = estimate <= EXACT_COUNT_LIMIT
        return max(estimate, EXACT_COUNT_LIMIT + 1)

    def page(self, number: Any) -> Page[Any]:
        number = self.validate_number(number)
        if number == 1 and self.first_rows is not None:
            return Page(self.first_rows[: self.per_page], number, self)
        return super().page(number)


class OneReadChangeList(ChangeList):
    """A changelist that shows a list short enough for one page from the rows
    its paginator already read, instead of running the query again."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        rows = getattr(self.paginator, "first_rows", None)
        if rows is not None and not self.multi_page:
            self.result_list = rows


def recent_values(
    queryset: QuerySet[Any],
    column: str,
    order: str,
    window: int = RECENT_WINDOW,
    limit: int = FILTER_VALUES_LIMIT,
) -> list[str]:
    """The distinct values of `column` among the latest `window` rows by `order`
    (an indexed column): a bounded read however large the table."""
    latest = queryset.order_by(order).values_list(column, flat=True)[:window]
    return sorted({str(v) for v in latest if v is not None})[:limit]


class RecentValuesFilter(admin.AllValuesFieldListFilter):
    """A column's values among the latest rows (the list's default ordering)
    rather than a DISTINCT over the whole table; a value chosen by URL that is
    not among them is kept in the list."""

    window = RECENT_WINDOW

    def __init__(
        self,
        field: Any,
        request: HttpRequest,
        params: dict[str, Any],
        model: type[models.Model],
        model_admin: Any,
        field_path: str,
    ) -> None:
        super().__init__(field, request, params, model, model_admin, field_path)
        order = (list(model_admin.get_ordering(request)) or ["-pk"])[0]
        values = recent_values(model._default_manager.all(), field.name, order, self.window)
        chosen = [str(v) for v in (self.lookup_val or []) if str(v) not in values]
        self.lookup_choices = sorted(values + chosen)  # type: ignore[assignment]


def search_by_id(queryset: QuerySet[Any], term: str, field: str = "pk") -> QuerySet[Any] | None:
    """The rows whose `field` is `term` when it reads as a UUID (a task id), else None."""
    try:
        key = uuid.UUID(term.strip())
    except ValueError:
        return None
    return queryset.filter(**{field: key})


def latest(queryset: QuerySet[Any], field: str, window: int = SEARCH_WINDOW) -> QuerySet[Any]:
    """`queryset` limited to the rows whose `field` (an indexed date) is among
    the table's latest `window` values; unchanged for a smaller table."""
    edge = list(
        queryset.model._default_manager.using(queryset.db)
        .order_by(f"-{field}")
        .values_list(field, flat=True)[window - 1 : window]
    )
    return queryset.filter(**{f"{field}__gte": edge[0]}) if edge else queryset


class BigList(ModelAdmin):
    """Lists of millions of rows: no full COUNT(*), no facets, and a search that
    reads a task id as one, and looks for words among the latest rows by
    `date_field` unless the list is filtered by that date."""

    paginator = EstimatedPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    date_field = "queued_at"
    id_field: str | None = "task_id"
    search_window = SEARCH_WINDOW

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[OneReadChangeList]:
        return OneReadChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        found = search_by_id(queryset, search_term, self.id_field) if self.id_field else None
        if found is not None:
            return found, False
        if search_term.strip() and not any(k.startswith(self.date_field) for k in request.GET):
            queryset = latest(queryset, self.date_field, self.search_window)
        return super().get_search_results(request, queryset, search_term)
