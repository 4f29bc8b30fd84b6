"""`GroupLog`: which entries of the scheduler's journal are still needed, when the journal is a log of groups.

Why a log: the scheduler writes every session it changed before it answers (write-ahead), and the calls that
changed them together share one write. One store put per session made those writes most of the scheduler's work
at fleet scale (bench.control_plane: one put per group instead nearly doubled the segments/s), so each write is one
entry holding the whole group: session id -> its checkpoint, or None where the session was closed.

What is kept: a session's latest entry. A group is deleted once no session's latest checkpoint is in it. A close
(None) must outlive every older entry of that session, or a restore would bring the session back; the simple rule
kept here: a group holding closes is deleted only when it is the oldest group stored. Sparse groups would keep
many keys alive for a few sessions each, so when at most half of a group's entries are still latest, its sessions
are written again with the next group (`written` names them) and the old group dies. A restore replays the stored
groups in order: the last entry of each session wins.

The store's I/O is the caller's (`actors.scheduler_journal`); this class only keeps the bookkeeping, and is told of
each group stored (`written`) and each deletion done (`deleted`).
"""

from __future__ import annotations


class GroupLog:
    def __init__(self):
        self.next_seq = 0
        self.home: dict[str, int] = {}  # session -> the group holding its latest entry (a checkpoint or a close)
        self.live: dict[int, set[str]] = {}  # group -> sessions whose latest checkpoint is in it
        self.closes: dict[int, set[str]] = {}  # group -> sessions whose latest entry is a close in it
        self.size: dict[int, int] = {}  # group -> entries it was written with
        self.stored: dict[int, None] = {}  # groups in the store, oldest first
        self._touched: set[int] = set()  # groups that lost a session since the last `dead`
        self._rewriting: set[int] = set()  # sparse groups whose sessions were named to be written again

    def written(self, seq: int, entries: dict[str, bool]) -> set[str]:
        """Group `seq` is stored with `entries` (session -> True: its checkpoint, False: closed). Returns the
        sessions of groups that became sparse: the caller writes them again with a later group."""
        self.next_seq = max(self.next_seq, seq + 1)
        self.stored[seq], self.size[seq], self.live[seq], self.closes[seq] = None, len(entries), set(), set()
        rewrite: set[str] = set()
        for session, alive in entries.items():
            old = self.home.get(session)
            if old is not None:
                self.live[old].discard(session)
                self.closes[old].discard(session)
                self._touched.add(old)
                if self._sparse(old):
                    self._rewriting.add(old)
                    rewrite |= self.live[old]
            if alive:
                self.live[seq].add(session)
                self.home[session] = seq
            elif old is None:  # no older entry of it is stored: the close shadows nothing
                self.home.pop(session, None)
            else:
                self.closes[seq].add(session)
                self.home[session] = seq
        return rewrite

    def _sparse(self, seq: int) -> bool:
        return seq not in self._rewriting and bool(self.live[seq]) and 2 * len(self.live[seq]) <= self.size[seq]

    def dead(self) -> list[int]:
        """Groups the store no longer needs: none of their sessions' latest checkpoints, and closes only in the
        oldest (no older entry left for them to shadow)."""
        out = [g for g in self._touched if g in self.stored and not self.live[g] and not self.closes[g]]
        self._touched.clear()
        oldest = next(iter(self.stored), None)
        if oldest is not None and oldest not in out and not self.live[oldest]:
            out.append(oldest)
        return out

    def deleted(self, seq: int) -> None:
        """Group `seq` (one `dead` named) is gone from the store."""
        if seq not in self.stored:
            return
        del self.stored[seq], self.live[seq], self.size[seq]
        for session in self.closes.pop(seq):
            if self.home.get(session) == seq:
                del self.home[session]
        self._rewriting.discard(seq)
