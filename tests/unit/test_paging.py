"""Complete reads (issue 13, item 5): a key's records go page by page within
the datagram bound, and an answer missing a page counts as no answer."""

from __future__ import annotations

import pytest

from workmesh.crypto.identity import Identity
from workmesh.dht.server import RECORDS_PER_REPLY_BYTES
from workmesh.dht.storage import RECORD_OVERHEAD_BYTES, FactStore
from workmesh.node import facts as F
from tests.unit.test_kademlia_defects import make_server


def validator(key: bytes, raw: bytes) -> F.Fact:
    return F.decode(raw, key=key)


AUTHOR = Identity.from_seed(b"\x21" * 32)


def big_job(n: int) -> list[F.Fact]:
    """A submission with an 8 KB payload and ``n`` cancels with long reasons (about 400 bytes each)."""
    payload = b'"' + b"x" * 8000 + b'"'
    submit = F.sign(AUTHOR, F.SUBMIT, F.Submit("fail", payload, 20, 5000, 60000, 3, 2, b"\x01" * 16, 1000))
    reason = "r" * F.REASON_CHARS_MAX
    return [submit, *(F.sign(AUTHOR, F.CANCEL, F.Cancel(submit.job_id, reason, 2000 + i)) for i in range(n))]


def test_pages_cover_every_record_once_within_the_bound():
    facts = big_job(240)
    key = facts[0].job_id
    with FactStore(None, validator) as store:
        store.merge(key, facts)
        seen, cursor, pages = [], b"", 0
        while True:
            page, cursor = store.page(key, cursor, RECORDS_PER_REPLY_BYTES)
            pages += 1
            assert sum(len(r.raw) + RECORD_OVERHEAD_BYTES for r in page) <= RECORDS_PER_REPLY_BYTES
            seen.extend(page)
            if not cursor:
                break
        assert pages >= 2
        assert [r.record_id for r in seen] == sorted(f.fact_id for f in facts)
        # A record larger than a page still goes, alone.
        page, cursor = store.page(key, b"", 10)
        assert len(page) == 1 and cursor == page[0].record_id
        assert store.page(b"\x00" * 20, b"", 10) == ([], b"")


async def test_a_server_serves_pages_and_a_reader_follows_them():
    facts = big_job(240)
    key = facts[0].job_id
    server, _ = make_server(stub=False)
    server.records.merge(key, facts)
    await server.records.durable()  # a replica serves what is on disk
    same, raws, cursor = server.find_records_page([key, b""])
    assert same is False and cursor and len(raws) < len(facts)
    _, more, _ = server.find_records_page([key, b"", cursor])
    assert not {bytes(r) for r in raws} & {bytes(r) for r in more}


@pytest.mark.parametrize("lost_page", [1, 2])
async def test_a_replica_that_misses_a_page_counts_as_no_answer(lost_page):
    facts = big_job(240)
    key = facts[0].job_id
    holder, _ = make_server(stub=False)
    holder.records.merge(key, facts)
    await holder.records.durable()
    reader, net = make_server()
    asked = {"pages": 0}

    def answer(method, args):
        if method != "find_records":
            return []
        asked["pages"] += 1
        if asked["pages"] == lost_page + 1:
            return None  # this page's reply is lost
        return holder.find_records_page(args)

    reader.router.add_contact(net.add(holder.node.id, answer))
    records, answered = await reader.fetch(key, repair=False)
    assert (records, answered) == ([], 1)  # the reader itself (an empty store) answered, not the holder
    assert reader.stats["reads_incomplete"] == 1

    asked["pages"] = -100  # now every page arrives
    records, answered = await reader.fetch(key, repair=False)
    assert answered == 2 and {r.record_id for r in records} == {f.fact_id for f in facts}
