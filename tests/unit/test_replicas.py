"""Read replicas without a server: the settings, WAL positions, lag in seconds, the choice of replica."""

from __future__ import annotations

import pytest

from pgclip.core.errors import ConfigError, InvalidInput
from pgclip.core.settings import Settings
from pgclip.db.pool import Pool
from pgclip.db.replicas import Replicas, Route, _lag_seconds, format_lsn, parse_lsn


def test_replica_urls_are_read_comma_separated_and_their_passwords_never_shown():
    settings = Settings.from_env({"PGCLIP_READ_DATABASE_URLS": " postgresql://u:s3cret@r1:5432/pgclip ,,"
                                  "postgresql://u:other@r2/pgclip", "PGCLIP_MAX_REPLICA_LAG": "2.5"})
    assert settings.read_database_urls == ("postgresql://u:s3cret@r1:5432/pgclip", "postgresql://u:other@r2/pgclip")
    assert settings.max_replica_lag == 2.5
    shown = dict((env, value) for env, value, _ in settings.describe())
    assert shown["PGCLIP_READ_DATABASE_URLS"] == "postgresql://u:***@r1:5432/pgclip, postgresql://u:***@r2/pgclip"
    assert "s3cret" not in repr(settings.describe())
    assert Settings.from_env({}).read_database_urls == ()
    assert dict((e, v) for e, v, _ in Settings.from_env({}).describe())["PGCLIP_READ_DATABASE_URLS"] == "(unset)"


@pytest.mark.parametrize(("env", "fragment"), [
    ({"PGCLIP_READ_DATABASE_URLS": "postgresql://r1/pgclip,mysql://u:pw@r2/x"}, "URL 2 must start with postgresql://"),
    ({"PGCLIP_MAX_REPLICA_LAG": "-1"}, "PGCLIP_MAX_REPLICA_LAG must be 0 to 3600"),
    ({"PGCLIP_MAX_REPLICA_LAG": "7200"}, "PGCLIP_MAX_REPLICA_LAG must be 0 to 3600"),
    ({"PGCLIP_MAX_REPLICA_LAG": "nan"}, "PGCLIP_MAX_REPLICA_LAG must be 0 to 3600"),
    ({"PGCLIP_MAX_REPLICA_LAG": "soon"}, "PGCLIP_MAX_REPLICA_LAG must be a number"),
])
def test_bad_replica_settings_are_refused_by_name(env, fragment):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert fragment in str(raised.value)
    assert "pw@" not in str(raised.value)


def test_wal_positions_read_and_written_as_postgresql_does():
    assert parse_lsn("0/16B3748") == 0x16B3748
    assert parse_lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")  # compared as numbers, not as text
    for bad in ("", "yesterday", "1/2/3", "G/0", "123456789/0"):
        with pytest.raises(InvalidInput):
            parse_lsn(bad)


def test_a_read_needs_its_token_or_its_own_write_whichever_is_newer():
    assert Route().needed() is None
    assert Route(min_lsn=100).needed() == 100
    assert Route(min_lsn=100, lsn="0/50").needed() == 100
    assert Route(min_lsn=None, lsn="0/500").needed() == 0x500


def test_lag_in_seconds_is_how_long_the_replica_has_missed_wal_the_primary_had():
    history = [(10.0, 100), (11.0, 100), (12.0, 180), (13.0, 250)]
    assert _lag_seconds(250, history, now=13.5) == 0.0  # replayed the newest: caught up, however idle
    assert _lag_seconds(300, history, now=13.5) == 0.0
    assert _lag_seconds(180, history, now=13.5) == pytest.approx(0.5)  # missing what appeared at 13.0
    assert _lag_seconds(120, history, now=13.5) == pytest.approx(1.5)
    assert _lag_seconds(50, history, now=13.5) == pytest.approx(3.5)  # missing even the oldest sample
    assert _lag_seconds(50, [], now=13.5) is None  # the primary's position unknown (it is down)


def test_reads_are_spread_over_the_replicas_in_use_and_prefer_those_caught_up():
    urls = ["postgresql://r1/pgclip", "postgresql://r2/pgclip", "postgresql://r3/pgclip"]
    replicas = Replicas(urls, Pool("postgresql://primary/pgclip", role="test", max_size=1), max_lag=5)
    assert replicas.choose() is None  # none checked yet: the primary answers
    r1, r2, r3 = replicas.replicas
    for replica, replayed in ((r1, 100), (r2, 300), (r3, 500)):
        replica.in_use, replica.replayed = True, replayed
    r3.in_use = False
    assert [replicas.choose().id for _ in range(4)] == ["replica-1", "replica-2", "replica-1", "replica-2"]
    assert {replicas.choose(min_lsn=200).id for _ in range(4)} == {"replica-2"}
    # None has replayed that far: any in use (the read waits briefly for it, else the primary).
    assert replicas.choose(min_lsn=400).id in ("replica-1", "replica-2")
    assert [s.name for s in replicas.states()] == ["r1/pgclip", "r2/pgclip", "r3/pgclip"]
