"""Upgrades: what pacsor 0.1 wrote is read, and finished, by this version.

tests/fixtures/upgrade-0.1/ holds a JetStream store and its events as pacsor 0.1 left them:
one study dispatched, one in flight (complete, not uploaded). This version must decode every
event, fold them into the same story, and carry the study in flight through to the PACS
without touching the finished one.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsor.config import load_settings
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.domain import events as ev
from pacsor.domain.study_view import fold, study_state
from pacsor.jetstream.broker import connect
from pacsor.jetstream.eventlog import EventLog
from tests.harness import TOKEN, ReceivingPacs, of_type, running_gateway, wait_for_event
from tests.nats_server import NatsServer, free_port

FIXTURE = Path(__file__).parent / "fixtures" / "upgrade-0.1"
STUDIES = json.loads((FIXTURE / "studies.json").read_text())
PIPELINE = ("scp", "quiet-timer", "completion", "uploader", "poller", "dispatcher")


def recorded_by_0_1() -> list[dict[str, object]]:
    lines = (FIXTURE / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_every_event_of_0_1_decodes() -> None:
    recorded = recorded_by_0_1()
    kinds = Counter()
    for entry in recorded:
        raw = entry["event"]
        assert isinstance(raw, dict)
        event = ev.decode(json.dumps(raw).encode())
        assert type(event).__name__ == raw["type"]
        assert event.study_uid == raw["study_instance_uid"]
        # Every field 0.1 wrote is still there with the same value.
        again = json.loads(ev.encode(event))
        for name, value in raw.items():
            if name in again:
                assert again[name] == value, (raw["type"], name)
        kinds[raw["type"]] += 1
        if isinstance(event, ev.StudyComplete):
            # Schema 1 listed the instances; today's shape counts them and reads them back
            # from the stream up to the event itself.
            instances = raw["instances"]
            assert isinstance(instances, list) and event.instance_count == len(instances)
            at = ev.decode_at(json.dumps(raw).encode(), int(str(entry["sequence"])))
            assert isinstance(at, ev.StudyComplete)
            assert at.through_sequence == entry["sequence"]
    assert kinds == {
        "InstanceReceived": 4,
        "InstanceRejected": 1,
        "StudyComplete": 2,
        "Uploaded": 1,
        "ResultReady": 1,
        "Dispatched": 1,
        "DispatchFailed": 1,
    }


def test_the_study_views_of_0_1_events() -> None:
    pairs = [
        (
            int(str(e["sequence"])),
            ev.decode_at(json.dumps(e["event"]).encode(), int(str(e["sequence"]))),
        )
        for e in recorded_by_0_1()
    ]
    views = fold(pairs)
    assert set(views) == {STUDIES["dispatched"], STUDIES["in_flight"]}
    # One destination was down: the dispatched study ended partly failed.
    assert study_state(views[STUDIES["dispatched"]]) == "failed"
    assert study_state(views[STUDIES["in_flight"]]) == "complete"


@pytest.fixture
def store_of_0_1(tmp_path: Path) -> Iterator[NatsServer]:
    with tarfile.open(FIXTURE / "store.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


async def test_a_study_in_flight_under_0_1_finishes_on_this_version(
    store_of_0_1: NatsServer, tmp_path: Path
) -> None:
    pacs = ReceivingPacs("NEWPACS").start()
    nc = await connect(store_of_0_1.url, "upgrade test")
    try:
        events = EventLog(nc.jetstream())
        before = await events.history(STUDIES["dispatched"])
        with running_simulator(SimulatorSettings(token=TOKEN, running_polls=0)) as (api_url, _):
            settings = load_settings(
                {
                    "NATS_URL": store_of_0_1.url,
                    "PORT": str(free_port()),
                    "API_URL": api_url,
                    "TOKEN": TOKEN,
                    "POLL_INTERVAL_SECONDS": "0.2",
                    "PACS_IP": "127.0.0.1",
                    "PACS_PORT": str(pacs.port),
                    "PACS_AET": pacs.ae_title,
                },
                dotenv=None,
            )
            async with running_gateway(settings, PIPELINE):
                dispatched = await wait_for_event(
                    nc, STUDIES["in_flight"], of_type(ev.Dispatched), 120
                )
                await pacs.wait_for(4)
        assert isinstance(dispatched, ev.Dispatched)
        assert dispatched.destination == pacs.destination
        assert {study for study, _, _ in pacs.received} == {STUDIES["in_flight"]}
        # The finished study is left as it was: nothing redone, nothing added.
        assert await events.history(STUDIES["dispatched"]) == before
        kinds = Counter(type(r.event).__name__ for r in await events.history(STUDIES["in_flight"]))
        assert kinds["StudyComplete"] == kinds["Uploaded"] == kinds["ResultReady"] == 1
    finally:
        await nc.close()
        pacs.stop()


def test_the_catalogue_is_the_classes() -> None:
    """Every concrete event class decodes, is found by its name, and has a distinct topic."""
    catalogue = ev.catalogue()
    assert len({kind.topic for kind in catalogue}) == len(catalogue)
    for kind in catalogue:
        assert ev.by_name(kind.__name__) is kind
        assert kind.current_schema() >= 1
    assert ev.StudyComplete in catalogue and ev.CoreEvent not in catalogue


def test_an_upcaster_belongs_to_its_class_and_runs_per_version() -> None:
    """A schema 1 StudyComplete, whose list of instances no longer fits the class, reads
    through StudyComplete's own upcaster: counted, its schema still said to be 1."""
    old = {
        "type": "StudyComplete",
        "study_instance_uid": "1.2.3",
        "schema_version": 1,
        "attempt": 2,
        "instances": [{"sop_instance_uid": "1.2.3.1"}, {"sop_instance_uid": "1.2.3.2"}],
    }
    event = ev.decode(json.dumps(old).encode())
    assert isinstance(event, ev.StudyComplete)
    assert (event.instance_count, event.attempt, event.schema_version) == (2, 2, 1)
    with pytest.raises(Exception, match="unknown event type"):
        ev.decode(json.dumps({**old, "type": "NoSuchEvent"}).encode())
