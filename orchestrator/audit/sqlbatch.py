"""The SQL side of a recorder batch: cached statements, key lookups, bulk inserts and updates
(orchestrator/audit/projection.py decides what to write; this module writes it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

CHUNK = 300  # rows per IN (...) list: well below every driver's parameter limit
COPY_FROM = 20  # PostgreSQL: insert this many rows or more with COPY
# One expanding parameter for every IN list: the statement is compiled once and cached.
KEYS: Any = bindparam("keys", expanding=True)
# The statements a batch runs, built once per process: building one (select/update/insert and
# their clauses) and computing its cache key every batch was a good part of the fixed cost of
# a batch (docs/performance.md, Recorder).
_STATEMENTS: dict[tuple[Any, ...], Any] = {}


def statement(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build()
    return stmt


def keyed(
    conn: Connection,
    table: Table,
    cols: tuple[Column[Any], ...],
    keys: Sequence[tuple[Any, ...]],
    *,
    lock: bool = False,
    only_keys: bool = False,
) -> Iterable[Any]:
    """The rows of ``table`` whose ``cols`` equal one of ``keys`` (row mappings; ``only_keys``:
    just those columns; ``lock``: FOR UPDATE, in key order).

    PostgreSQL joins the table with ``unnest`` of one array per column: one statement text for
    any number of keys (psycopg converts it once), planned as index lookups. A row-value
    ``IN ((..), (..), ...)`` list of a few hundred keys was a new statement for every length and
    took PostgreSQL 15-30 ms a batch to plan and run (most of the recorder's SQL time). Other
    dialects keep the IN list, in chunks.
    """
    if not keys:
        return
    pg = conn.dialect.name == "postgresql"

    def build() -> Any:
        q = select(*cols) if only_keys else select(table)
        if pg:
            k = _unnest(cols)
            q = q.join(k, and_(*[c == k.c[f"k{i}"] for i, c in enumerate(cols)]))
            return q.order_by(*cols).with_for_update(of=table) if lock else q
        target = cols[0] if len(cols) == 1 else tuple_(*cols)
        q = q.where(target.in_(KEYS))
        return q.order_by(*cols).with_for_update() if lock else q

    q = statement(("keyed", pg, table.name, tuple(c.name for c in cols), lock, only_keys), build)
    if pg:
        params = {f"a{i}": [key[i] for key in keys] for i in range(len(cols))}
        yield from conn.execute(q, params).mappings()
        return
    for chunk in chunks(keys):
        values = [key[0] for key in chunk] if len(cols) == 1 else list(chunk)
        yield from conn.execute(q, {"keys": values}).mappings()


def _unnest(cols: tuple[Column[Any], ...]) -> Any:
    arrays = [
        bindparam(f"a{i}", type_=postgresql.ARRAY(Integer if isinstance(c.type, Integer) else Text))
        for i, c in enumerate(cols)
    ]
    return func.unnest(*arrays).table_valued(*[f"k{i}" for i in range(len(cols))]).render_derived()


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def insert_ignore(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = statement(
        ("insert_ignore", dialect.__name__, table.name),
        lambda: dialect.insert(table).on_conflict_do_nothing(),
    )
    for chunk in chunks(rows):
        conn.execute(stmt, [fit(table, r) for r in chunk])


_LIMITS: dict[str, tuple[tuple[str, int], ...]] = {}


def fit(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """Cut strings to their column's length and drop NUL characters (PostgreSQL rejects both).

    Returns ``row`` itself when nothing needs changing (the common case: no copy per row).
    """
    limits = _LIMITS.get(table.name)
    if limits is None:
        limits = _LIMITS[table.name] = tuple(
            (c.name, c.type.length) for c in table.c if isinstance(c.type, String) and c.type.length
        )
    out = row
    for k, v in row.items():
        if v.__class__ is str and "\x00" in v:
            if out is row:
                out = dict(row)
            out[k] = v.replace("\x00", "\ufffd")
    for k, n in limits:
        v = out.get(k)
        if v.__class__ is str and len(v) > n:
            if out is row:
                out = dict(row)
            out[k] = v[:n]
    return out


def insert_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql" and len(rows) >= COPY_FROM:
        # COPY inside the same transaction: several times faster than psycopg's executemany,
        # which sends one INSERT per row.
        cols = list(rows[0])
        raw: Any = conn.connection.dbapi_connection  # a psycopg connection: COPY needs the driver
        with (
            raw.cursor() as cur,
            cur.copy(f"COPY {table.name} ({', '.join(cols)}) FROM STDIN") as copy,
        ):
            for r in rows:
                f = fit(table, r)
                copy.write_row([f[c] for c in cols])
        return
    stmt = statement(("insert", table.name), table.insert)
    for chunk in chunks(rows, 1000):
        conn.execute(stmt, [fit(table, r) for r in chunk])


def update_rows(
    conn: Connection, table: Table, pk: tuple[str, ...], rows: list[dict[str, Any]]
) -> None:
    if not rows:
        return
    cols = [c.name for c in table.c if c.name not in pk]
    stmt = statement(
        ("update", table.name, pk),
        lambda: (
            update(table)
            .where(*[table.c[k] == bindparam(f"k_{k}") for k in pk])
            .values({c: bindparam(f"v_{c}") for c in cols})
        ),
    )
    params = []
    for r in rows:
        p = {f"v_{c}": v for c, v in fit(table, {c: r[c] for c in cols}).items()}
        p.update({f"k_{k}": r[k] for k in pk})
        params.append(p)
    for chunk in chunks(params, 1000):
        conn.execute(stmt, chunk)
