"""Whether a write this primary acknowledges survives a failover: asked of the database
itself (read-only), for the warning `lq broker` prints at start."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import queries as q


def standby_warning(engine: Engine, hosts: int) -> str | None:
    """Why writes acknowledged by this primary could be lost at a failover, or None.

    Only for a URL naming several hosts (a failover is planned): without a synchronous
    standby a commit is acknowledged once it is on the primary alone. Read-only checks:
    `synchronous_standby_names` and `synchronous_commit` as this role sees them, and
    whether a standby is attached as `sync`/`quorum` now (when the role may see that).
    """
    if hosts < 2 or engine.dialect.name != "postgresql":
        return None
    try:
        with engine.connect() as conn:
            names = conn.execute(q.SHOW_SYNC_STANDBY_NAMES_PG).scalar_one()
            commit = conn.execute(q.SHOW_SYNC_COMMIT_PG).scalar_one()
            states = conn.execute(q.SELECT_REPLICA_STATES_PG).scalars()
            attached = [state for state in states if state is not None]
    except SQLAlchemyError as exc:
        return f"cannot tell whether the database has a synchronous standby: {exc}"
    if not names.strip():
        return (f"the URL names {hosts} database hosts but the primary has no synchronous "
                "standby (synchronous_standby_names is empty): a write acknowledged just "
                "before a failover can be lost; see docs/operations.md")
    if commit in ("off", "local"):
        return (f"synchronous_commit is {commit!r}: commits do not wait for the standby, so a "
                "write acknowledged just before a failover can be lost")
    if attached and not any(state in ("sync", "quorum") for state in attached):
        return (f"synchronous_standby_names is {names!r} but no attached standby is "
                "synchronous: commits wait until one is")
    return None
