import time
import uuid

from corral._ids import new_id


def test_ids_are_version_7_uuids_ordered_by_creation_time():
    first = new_id()
    time.sleep(0.002)
    later = [new_id() for _ in range(100)]
    for text in [first, *later]:
        u = uuid.UUID(text)
        assert u.version == 7 and u.variant == uuid.RFC_4122
    assert all(first < x for x in later)  # a later millisecond sorts after, as text too
    assert len(set(later)) == 100
    ms = uuid.UUID(first).int >> 80
    assert abs(ms / 1000 - time.time()) < 5
