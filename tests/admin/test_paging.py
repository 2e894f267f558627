"""Lists that stay fast on big tables: counting, the sidebar's values, the search window."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from leek.admin import TaskAdmin
from leek.admin.paging import EXACT_COUNT_LIMIT, EstimatedPaginator, RecentValuesFilter
from leek.models import Task
from tests.admin.factories import make_task

pytestmark = pytest.mark.django_db
postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="estimates come from PostgreSQL's planner"
)
CHANGELIST = reverse("admin:leek_task_changelist")


def fill(rows: int, status: str = "succeeded") -> None:
    """`rows` tasks in one INSERT ... SELECT, then ANALYZE for fresh estimates."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO leek_task (id, name, queue, priority, status, payload, args_repr, "
            "attempts, max_retries, queued_at, broker, spooled, code_version, progress_note) "
            "SELECT md5(i::text)::uuid, 'app.tasks.bulk', 'default', 0, %s, '\\x00'::bytea, "
            "'', 1, 3, now() - i * interval '1 second', '', false, '', '' "
            "FROM generate_series(1, %s) AS i",
            [status, rows],
        )
        cursor.execute("ANALYZE leek_task")


def test_a_short_list_is_counted_by_reading_its_only_page() -> None:
    for _ in range(3):
        make_task()
    paginator = EstimatedPaginator(Task.objects.order_by("-queued_at"), 50)
    with CaptureQueriesContext(connection) as queries:
        assert paginator.count == 3
        assert len(paginator.page(1).object_list) == 3
    assert len(queries) == 1 and "COUNT" not in queries[0]["sql"].upper()
    assert not paginator.estimated


def test_a_short_search_runs_its_query_once(admin_client: Client) -> None:
    make_task(args_repr="'needle'")
    make_task()
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(CHANGELIST, {"q": "needle"}).content.decode()
    assert "1 task" in page
    assert sum("LIKE" in q["sql"] for q in queries) == 1


def test_pages_past_the_first_are_read_from_the_database() -> None:
    for _ in range(5):
        make_task()
    paginator = EstimatedPaginator(Task.objects.order_by("-queued_at"), 2)
    assert paginator.count == 5 and paginator.num_pages == 3
    assert len(paginator.page(3).object_list) == 1


@postgres_only
def test_a_big_table_is_estimated_not_counted(admin_client: Client) -> None:
    fill(EXACT_COUNT_LIMIT + 500)
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(CHANGELIST).content.decode()
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    assert counts and all(f"LIMIT {EXACT_COUNT_LIMIT + 1}" in sql for sql in counts)
    assert any("reltuples" in q["sql"] for q in queries)
    assert f"about {EXACT_COUNT_LIMIT + 500} tasks" in page


@postgres_only
def test_a_big_filtered_list_takes_the_planner_estimate() -> None:
    fill(EXACT_COUNT_LIMIT + 500, status="failed")
    make_task("queued")
    paginator = EstimatedPaginator(Task.objects.filter(status="failed").order_by("-queued_at"), 50)
    assert paginator.count > EXACT_COUNT_LIMIT
    assert paginator.estimated and paginator.num_pages > 200
    assert len(paginator.page(3).object_list) == 50


def test_the_sidebar_lists_recent_values_and_keeps_the_chosen_one(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RecentValuesFilter, "window", 2)
    make_task(queue="ancient", ago=3600)
    make_task(queue="fresh", ago=10)
    make_task(queue="fresh", ago=5)
    page = admin_client.get(CHANGELIST).content.decode()
    assert "?queue=fresh" in page and "?queue=ancient" not in page
    chosen = admin_client.get(CHANGELIST, {"queue": "ancient"}).content.decode()
    assert "?queue=ancient" in chosen and "1 task" in chosen


def test_a_search_for_words_reads_the_latest_rows_unless_a_date_is_chosen(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TaskAdmin, "search_window", 2)
    old = make_task(args_repr="'needle'", ago=3600)
    make_task(ago=20)
    make_task(ago=10)
    assert "0 tasks" in admin_client.get(CHANGELIST, {"q": "needle"}).content.decode()
    since = str(old.queued_at - timedelta(days=1))
    dated = admin_client.get(CHANGELIST, {"q": "needle", "queued_at__gte": since})
    assert "1 task" in dated.content.decode()
    by_id = admin_client.get(CHANGELIST, {"q": str(old.id)}).content.decode()
    assert "1 task" in by_id  # an id is always found
