"""What the dev-master does with a task's attempts: sequenced events, "not now", lost.

- An event with a seq is applied at most once per (task, attempt, seq), in seq order,
  and acknowledged (EventAck, the highest contiguous applied seq) once stored. A
  duplicate is acknowledged again; a gap is neither applied nor acknowledged (the node
  resends from its last ack); a stale attempt's events are acknowledged and ignored.
- DEFERRED ("not now"): the task is queued again; the node that deferred it is not
  offered it again before a backoff (1 s doubling to 30 s), other nodes may take it
  at once. Once it has been deferred for longer than ``defer_limit_s`` it ends
  ``rejected`` with the last reason.
- LOST (reported by the node, or decided here): the task runs again as attempt N+1,
  at most ``max_retries`` times and never when the spec says no_retry, and only once
  the old attempt is settled on its node (its DONE arrived, or the master gave up on
  the node's copy: the node is absent or came back without the task).
- A node without a session for ``node_lost_after_s`` (counted from this `serve`'s
  start at the earliest: the master's own downtime is not the node's absence): its
  unsettled tasks are lost.

Not a scheduler: the only placement rule is "not the node that just said not now".
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass

from hivemind_worker.devmaster import taskdb
from hivemind_worker.devmaster.layout import StateDir
from hivemind_worker.proto import worker_pb2 as pb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2  # new attempts of a lost task (`serve --max-retries`)
    defer_limit_s: float = 600.0  # deferred longer than this: rejected (`serve --defer-limit`)
    defer_backoff_s: float = 1.0
    defer_backoff_max_s: float = 30.0
    node_lost_after_s: float = 300.0  # `serve --node-lost-after`


def state_name(value: int) -> str:
    return pb.TaskState.Name(value).removeprefix("TASK_STATE_").lower()


class Attempts:
    """The attempt rules above, on the master's database. ``send(node_id, message)``
    reaches a connected node (and does nothing for others)."""

    def __init__(self, conn: sqlite3.Connection, state: StateDir, policy: RetryPolicy, wake: asyncio.Event,
                 send, clock=time.time) -> None:
        self.conn, self.state, self.policy, self.wake = conn, state, policy, wake
        self.send = send
        self.clock = clock
        self.started_at = clock()

    # ------------------------------------------------------------ events

    def on_event(self, node_id: str, event: pb.TaskEvent) -> tuple[str, pb.EventAck | None]:
        """Apply one event; returns what happened and the acknowledgement to send."""
        state = state_name(event.state)
        what, mark = taskdb.apply_event(self.conn, node_id, event.task_id, event.attempt, event.seq, state,
                                        event.reason, event.exit_code, event.detail, event.time_ms)
        fields = {"node_id": node_id, "task_id": event.task_id}
        ack = None
        if event.seq and what != "gap":
            ack = pb.EventAck(task_id=event.task_id, attempt=event.attempt, seq=event.seq if what == "stale" else mark)
        if what == "stale":
            logger.info("ignoring %s of attempt %d: not the task's current attempt on this node", state,
                        event.attempt, extra=fields)
        elif what == "gap":
            logger.info("event %d of attempt %d arrived before an earlier one; waiting for the resend", event.seq,
                        event.attempt, extra=fields)
        elif what == "applied":
            logger.info("task %s%s", state, f": {event.reason}" if event.reason else "", extra=fields)
            self._after(node_id, event.task_id, state, event.reason)
        return what, ack

    def _after(self, node_id: str, task_id: str, state: str, reason: str) -> None:
        if state == "deferred":
            self._defer(node_id, task_id, reason or "no reason given")
        elif state == "lost":
            row = taskdb.known_task(self.conn, task_id)
            if row["outcome"] == "lost":
                taskdb.set_retry_pending(self.conn, task_id, self._may_retry(row))
        elif state == "done":
            row = taskdb.known_task(self.conn, task_id)
            if row["outcome"] == "lost" and row["retry_pending"]:
                if self._may_retry(row):  # (a cancellation may have come in meanwhile)
                    self._retry(row)  # the old attempt is settled on its node
                else:
                    taskdb.set_retry_pending(self.conn, task_id, False)
        if state in taskdb.OUTCOMES or state == "deferred":
            self.wake.set()  # capacity freed, or something to assign (a DONE frees neither: _retry wakes)

    # ------------------------------------------------------------ not now

    def _defer(self, node_id: str, task_id: str, reason: str) -> None:
        row = taskdb.known_task(self.conn, task_id)
        p = self.policy
        backoff = min(p.defer_backoff_max_s, p.defer_backoff_s * 2 ** min(row["defer_count"], 30))
        taskdb.defer(self.conn, task_id, node_id, reason, backoff)
        logger.info("task deferred (%s); offered to this node again in %.0f s at the earliest", reason, backoff,
                    extra={"node_id": node_id, "task_id": task_id})
        if not self._end_deferred(taskdb.known_task(self.conn, task_id)):
            asyncio.get_running_loop().call_later(backoff, self.wake.set)

    def _end_deferred(self, row: sqlite3.Row) -> bool:
        since = row["first_deferred_at"]
        if since is None or self.clock() - since < self.policy.defer_limit_s:
            return False
        reason = f"no node would run it for {self.clock() - since:.0f} s (limit {self.policy.defer_limit_s:.0f} s); " \
                 f"last {row['reason'] or 'deferred'}"
        taskdb.settle(self.conn, row["task_id"], "rejected", reason)
        logger.warning("task rejected: %s", reason, extra={"task_id": row["task_id"]})
        return True

    # ------------------------------------------------------------ lost

    def _may_retry(self, row: sqlite3.Row) -> bool:
        spec = json.loads(row["spec_json"])
        return (not spec.get("no_retry") and not row["cancel_requested"]
                and row["attempt"] - 1 < self.policy.max_retries)

    def lose(self, row: sqlite3.Row, reason: str) -> None:
        """The master gives up on the node's copy of this attempt."""
        retry = row["outcome"] in (None, "lost") and self._may_retry(row)
        taskdb.mark_lost(self.conn, row["task_id"], reason, retry=retry, detach=True)
        logger.warning("task lost: %s%s", reason, "" if retry else " (not run again)",
                       extra={"node_id": row["node_id"], "task_id": row["task_id"]})
        if retry:
            self._retry(taskdb.known_task(self.conn, row["task_id"]))
        self.wake.set()

    def _retry(self, row: sqlite3.Row) -> None:
        task_id, attempt = row["task_id"], row["attempt"]
        # The old attempt's archive is kept beside the new one's (it has its logs).
        final = self.state.result(task_id)
        if final.exists():
            os.replace(final, self.state.results / f"{task_id}.attempt-{attempt}.tar.gz")
        self.state.result_part(task_id).unlink(missing_ok=True)
        new = taskdb.new_attempt(self.conn, task_id, f"attempt {attempt} lost: {row['reason']}")
        logger.warning("task queued again as attempt %d (attempt %d lost: %s)", new, attempt, row["reason"],
                       extra={"task_id": task_id})
        self.wake.set()

    # ------------------------------------------------------------ periodic

    def sweep(self, connected: list[str]) -> None:
        """Lose the tasks of nodes absent too long; reject tasks deferred too long."""
        t = self.clock()
        cutoff = t - self.policy.node_lost_after_s
        if self.started_at < cutoff:
            for row in taskdb.unsettled_on_absent(self.conn, connected, cutoff):
                absent = t - max(row["last_seen_at"] or 0, self.started_at)
                self.lose(row, f"node {row['node_id']} absent for {absent:.0f} s")
        for row in taskdb.deferred_since(self.conn, t - self.policy.defer_limit_s):
            self._end_deferred(row)

    # ------------------------------------------------------------ hello

    def reconcile(self, node_id: str, held_tasks, stale: dict[str, int]) -> None:
        """Square what the node holds (its hello) with what the master knows; fills
        ``stale`` with the tasks whose copy on the node is an old attempt."""
        held = {t.task_id: t for t in held_tasks}
        for row in taskdb.unsettled_on(self.conn, node_id):
            task_id = row["task_id"]
            h = held.get(task_id)
            if h is not None and (h.attempt or 1) == row["attempt"]:
                del held[task_id]
                self._held_current(node_id, row, h)
                continue
            if row["state"] == "assigned":
                taskdb.requeue(self.conn, task_id)  # it never reached the node
            elif row["result_complete"]:
                self.on_event(node_id, pb.TaskEvent(task_id=task_id, state=pb.TASK_STATE_DONE,
                                                    reason="result stored before the node restarted"))
            else:
                self.lose(row, f"node {node_id} came back without this task")
        for task_id, h in held.items():
            held_row = taskdb.get_task(self.conn, task_id)
            if held_row is not None and held_row["node_id"] == node_id and (h.attempt or 1) == held_row["attempt"]:
                # Settled here already (done/lost/rejected): only a result ack may be missing.
                if h.result_pending and held_row["result_complete"]:
                    self.send(node_id, pb.MasterMessage(result_ack=pb.ResultAck(task_id=task_id, attempt=h.attempt)))
                continue
            stale[task_id] = h.attempt
            if state_name(h.state) not in taskdb.OUTCOMES | {"uploading", "done"}:
                self.send(node_id, pb.MasterMessage(cancel=pb.CancelTask(
                    task_id=task_id, reason="this master does not know this attempt of the task (it was lost and "
                                            "runs again elsewhere, or was never given to this node)")))
            elif h.result_pending:
                # Nobody here will ever ask for it: let the node free its spool.
                logger.warning("acknowledging (and dropping) the result of a stale or unknown attempt",
                               extra={"node_id": node_id, "task_id": task_id})
                self.send(node_id, pb.MasterMessage(result_ack=pb.ResultAck(task_id=task_id, attempt=h.attempt)))

    def _held_current(self, node_id: str, row: sqlite3.Row, h: pb.HeldTask) -> None:
        task_id, attempt = row["task_id"], row["attempt"]
        if h.result_pending and row["result_complete"]:
            self.send(node_id, pb.MasterMessage(result_ack=pb.ResultAck(task_id=task_id, attempt=attempt)))
        if row["cancel_requested"] and row["outcome"] is None:
            self.send(node_id, pb.MasterMessage(cancel=pb.CancelTask(task_id=task_id, reason="cancelled by the operator")))
            taskdb.mark_cancel_sent(self.conn, task_id)
        if row["event_seq"]:
            self.send(node_id, pb.MasterMessage(event_ack=pb.EventAck(task_id=task_id, attempt=h.attempt,
                                                                      seq=row["event_seq"])))
        seq = taskdb.contiguous_seq(self.conn, task_id)
        if seq:
            self.send(node_id, pb.MasterMessage(log_ack=pb.LogAck(task_id=task_id, seq=seq)))

    # ------------------------------------------------------------ results

    def result_role(self, node_id: str, task_id: str, attempt: int) -> str | None:
        """``current`` (this node's copy of the current attempt), ``stale`` (an attempt
        this node had, no longer wanted) or None (never this node's)."""
        row = taskdb.get_task(self.conn, task_id)
        if row is None:
            return None
        if row["node_id"] == node_id and (attempt or row["attempt"]) == row["attempt"]:
            return "current"
        return "stale" if taskdb.had_attempt(self.conn, task_id, node_id, attempt or row["attempt"]) else None

    def drop_stale_result(self, node_id: str, task_id: str, attempt: int) -> None:
        logger.warning("result of attempt %d is stale: acknowledged and dropped", attempt,
                       extra={"node_id": node_id, "task_id": task_id})
        self.send(node_id, pb.MasterMessage(result_ack=pb.ResultAck(task_id=task_id, attempt=attempt)))
