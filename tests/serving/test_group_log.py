"""runtime.serving.group_log: replaying what the store keeps always gives every open session's latest checkpoint and
no closed session, while the store keeps few groups. The store here is a dict driven as actors.scheduler_journal
drives the GCS."""

import random

import pytest

from runtime.serving.group_log import GroupLog


class Store:
    """A journal's groups in a dict, written and collected as actors.scheduler_journal does."""

    def __init__(self):
        self.log = GroupLog()
        self.groups: dict[int, dict[str, int | None]] = {}
        self.again: set[str] = set()  # sessions to write again with the next group

    def write(self, changes: dict[str, int | None], state: dict[str, int]) -> None:
        changes = {**{s: state.get(s) for s in self.again}, **changes}
        self.again = set()
        seq = self.log.next_seq
        self.groups[seq] = changes
        self.again = self.log.written(seq, {s: v is not None for s, v in changes.items()})
        for dead in self.log.dead():
            del self.groups[dead]
            self.log.deleted(dead)

    def replay(self) -> dict[str, int]:
        out: dict[str, int | None] = {}
        for seq in sorted(self.groups):
            out.update(self.groups[seq])
        return {s: v for s, v in out.items() if v is not None}


@pytest.mark.parametrize("seed", range(5))
def test_a_replay_of_the_stored_groups_is_the_sessions_state_after_every_write(seed):
    rng = random.Random(seed)
    store, state, version = Store(), {}, 0
    for _ in range(2000):
        changes = {}
        for _ in range(rng.randint(1, 12)):  # a group: sessions changed by calls answered together
            session = f"s{rng.randrange(60)}"
            if session in state and rng.random() < 0.2:
                del state[session]
                changes[session] = None
            else:
                version += 1
                state[session] = changes[session] = version
        store.write(changes, state)
        assert store.replay() == state
    assert len(store.groups) <= len(state) + 20  # sparse groups rewritten, dead ones gone


def test_a_close_outlives_the_older_entries_it_shadows():
    store = Store()
    store.write({"a": 1, "b": 1}, {"a": 1, "b": 1})
    store.write({"a": None}, {"b": 1})  # group 0 still holds b's latest, and a's older entry
    assert store.replay() == {"b": 1} and set(store.groups) == {0, 1}
    store.write({"b": 2}, {"b": 2})  # group 0 is sparse and then dead; the close in 1 is now the oldest: not needed
    assert store.replay() == {"b": 2}
    store.write({"c": 1}, {"b": 2, "c": 1})
    assert set(store.groups) == {2, 3} and store.replay() == {"b": 2, "c": 1}


def test_a_restore_replays_groups_into_the_same_bookkeeping():
    store = Store()
    store.write({"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 1, "c": 1})
    store.write({"a": None, "d": 1}, {"b": 1, "c": 1, "d": 1})
    again = GroupLog()
    for seq in sorted(store.groups):
        again.written(seq, {s: v is not None for s, v in store.groups[seq].items()})
    assert again.next_seq == store.log.next_seq and again.home == store.log.home
    assert again.live == store.log.live and again.closes == store.log.closes
