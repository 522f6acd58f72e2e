"""The fault-injection scenarios (issue 6), run by ``make test-all`` and by
``jetstandby bench faults``: the same code, in ``bench/jetstandby_bench/faults_*.py``.

Each test asserts the history checker's verdict against the journal read back from the
stream and every node's digest (nothing lost, duplicated or unexpected; digests agree), and
the scenario's own properties. ``--cycles N`` raises every scenario's cycle count.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jetstandby.history import HistoryWriter
from jetstandby.server import NatsServer
from jetstandby_bench.faults import SCENARIOS
from jetstandby_bench.faults_common import Nodes, ScenarioResult, Workload, verify

# A scenario runs for minutes; the default per-test timeout is for unit tests.
SCENARIO_TIMEOUT = 1800


async def run(name: str, cycles: int | None, tmp_path: Path) -> ScenarioResult:
    scenario = SCENARIOS[name]
    result = await scenario.run(cycles or scenario.default_cycles, tmp_path)
    print(result.explain())
    return result


def assert_valid(result: ScenarioResult) -> None:
    assert result.check.valid, result.explain()
    assert not result.problems, result.explain()
    assert result.acknowledged > 0


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT)
async def test_primary_killed_under_load(cycles: int | None, tmp_path: Path) -> None:
    result = await run("primary_kill", cycles, tmp_path)
    assert_valid(result)
    assert result.cycles == (cycles or SCENARIOS["primary_kill"].default_cycles)
    assert len(result.failover_ms) == result.cycles
    assert result.facts["epochs"] == list(range(1, result.cycles + 2))


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT)
async def test_zombie_primaries_never_append_after_the_marker(
    cycles: int | None, tmp_path: Path
) -> None:
    result = await run("zombie", cycles, tmp_path)
    assert_valid(result)
    outcomes = result.facts["zombie_request_outcomes"]
    assert outcomes.get("ok", 0) == 0, outcomes
    # The zombies answered (errors), so the no-ack property was exercised, not vacuous.
    assert sum(n for k, n in outcomes.items() if k.startswith("error:")) > 0, outcomes


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT)
async def test_standby_resumes_across_nats_server_crashes_and_a_pause(
    cycles: int | None, tmp_path: Path
) -> None:
    result = await run("server_restarts", cycles, tmp_path)
    assert_valid(result)
    # The replay was still long when the server went down (a standby already at the tail
    # would prove little about resuming).
    assert result.facts["behind_at_fault"][0] > 0, result.facts
    assert result.facts["resubscribes"] >= result.cycles


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT)
async def test_r3_cluster_losing_servers_and_quorum(cycles: int | None, tmp_path: Path) -> None:
    result = await run("cluster_loss", cycles, tmp_path)
    assert_valid(result)
    assert result.facts["acks_while_quorum_lost"] == 0, result.facts
    assert any(k.startswith("leader ") for k in result.facts["killed"]), result.facts


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT)
async def test_poison_halts_the_standby_until_an_operator_skips_it(
    cycles: int | None, tmp_path: Path
) -> None:
    result = await run("poison", cycles, tmp_path)
    assert_valid(result)
    assert len(result.facts["skipped"]) == 6 * result.cycles, result.facts


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT)
async def test_link_cuts_standby_catches_up_and_cut_off_primary_is_fenced(
    cycles: int | None, tmp_path: Path
) -> None:
    result = await run("link_faults", cycles, tmp_path)
    assert_valid(result)
    assert result.facts["old_primary_exit"] == [4] * result.cycles, result.facts
    assert len(result.failover_ms) == result.cycles


# Fast (a few seconds): part of the default run, not marked slow.
async def test_bad_operator_input_is_refused_clearly(cycles: int | None, tmp_path: Path) -> None:
    result = await run("bad_input", cycles, tmp_path)
    assert not result.problems, result.explain()
    assert result.facts["promote with malformed JSON"].startswith("HTTP 400")


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT)
async def test_checker_flags_a_standby_process_that_skips_every_1000th_command(
    tmp_path: Path,
) -> None:
    """The suite's self-test, end to end: the same verify() every scenario ends with must
    catch a replica that silently drops commands, and name it."""
    history_path = tmp_path / "history.jsonl"
    async with NatsServer() as server, Nodes(tmp_path, server.url) as nodes:
        await nodes.start("primary")
        broken = await nodes.start(engine="jetstandby_bench.faults_engine:SkippingKeyValue")
        healthy = await nodes.start()
        with HistoryWriter(history_path) as history:
            async with Workload(server.url, history) as load:
                await load.until(2500)
        check, _ = await verify(server.url, history_path, nodes.live())
    assert not check.valid
    assert not (check.lost or check.duplicated or check.unexpected)  # the journal is fine
    assert {d.node for d in check.digest_disagreements} == {broken.node_id}
    assert healthy.node_id not in {d.node for d in check.digest_disagreements}
