"""The per-turn batching signer: facts asked for in one loop turn share one signature."""

from __future__ import annotations

import asyncio

from workmesh.crypto.identity import Identity, verify_statistics
from workmesh.node import facts as F
from workmesh.node.errors import InvalidFact
from workmesh.node.signer import TurnSigner
from tests.unit.strategies import submit

JOB = submit()


def _claim(i: int) -> F.Claim:
    return F.Claim(JOB.job_id, 1, i)


def test_facts_asked_for_in_one_turn_share_one_signature() -> None:
    signer = TurnSigner(Identity.from_seed(b"\x61" * 32))

    async def main() -> tuple[list[F.Fact], list[F.Fact]]:
        first = await asyncio.gather(*(signer.sign(F.CLAIM, _claim(i)) for i in range(30)))
        second = await asyncio.gather(*(signer.sign(F.CLAIM, _claim(100 + i)) for i in range(3)))
        return first, second

    before = verify_statistics()["signatures"]
    first, second = asyncio.run(main())
    assert verify_statistics()["signatures"] - before == 2
    assert len({f.signature for f in first}) == 1 and len({f.signature for f in second}) == 1
    assert [f.body.ts_ms for f in first] == list(range(30))  # each caller gets its own fact
    for fact in [*first, *second]:
        assert F.decode(fact.raw, key=JOB.job_id) == fact
    assert signer.stats == {"batches": 2, "facts": 33, "largest_batch": 30}


def test_tasks_of_one_turn_share_a_batch_and_a_later_turn_gets_its_own() -> None:
    signer = TurnSigner(Identity.from_seed(b"\x62" * 32))

    async def worker(i: int) -> F.Fact:
        return await signer.sign(F.CLAIM, _claim(i))

    async def main() -> list[F.Fact]:
        tasks = [asyncio.create_task(worker(i)) for i in range(5)]
        early = await asyncio.gather(*tasks)
        late = await worker(99)
        return [*early, late]

    facts = asyncio.run(main())
    assert len({f.signature for f in facts[:5]}) == 1
    assert facts[5].signature != facts[0].signature


def test_a_bad_fact_fails_its_caller_alone() -> None:
    signer = TurnSigner(Identity.from_seed(b"\x63" * 32))

    async def main():
        return await asyncio.gather(signer.sign(F.CLAIM, _claim(1)), signer.sign("nonsense", _claim(2)),
                                    signer.sign(F.CLAIM, _claim(3)), return_exceptions=True)

    good, bad, other = asyncio.run(main())
    assert isinstance(bad, InvalidFact)
    assert good.signature == other.signature and F.decode(other.raw, key=JOB.job_id) == other


def test_a_full_batch_is_signed_at_once() -> None:
    signer = TurnSigner(Identity.from_seed(b"\x64" * 32), batch_max=4)

    async def main() -> list[F.Fact]:
        return await asyncio.gather(*(signer.sign(F.CLAIM, _claim(i)) for i in range(10)))

    facts = asyncio.run(main())
    assert [len({f.signature for f in facts[i : i + 4]}) for i in (0, 4, 8)] == [1, 1, 1]
    assert signer.stats["batches"] == 3


def test_one_signer_per_identity_serves_one_loop_after_another() -> None:
    me = Identity.from_seed(b"\x65" * 32)
    assert TurnSigner.of(me) is TurnSigner.of(me)
    for i in range(2):
        assert asyncio.run(TurnSigner.of(me).sign(F.CLAIM, _claim(i))).body.ts_ms == i

