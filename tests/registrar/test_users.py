"""Registrar config validation, users from config and ranges, and the user directory."""

from __future__ import annotations

import time
from typing import Any

import pytest

from vivait_sip.config import ConfigError, config_from_data
from vivait_sip.registrar.config import RegistrarConfig, UserConfig, UserRangeConfig, WebPoolConfig
from vivait_sip.registrar.digest import Algorithm, ha1
from vivait_sip.registrar.users import (
    UserDirectory,
    config_users,
    expand_range,
    find_conflicts,
    make_user,
    user_from_config,
)

REALM = "example.com"


def errors_of(registrar: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_data({"registrar": registrar})
    return info.value.errors


# ---- config ---------------------------------------------------------------------------
def test_defaults_and_embedded_section() -> None:
    cfg = config_from_data({}).registrar
    assert (cfg.min_expires, cfg.default_expires, cfg.max_expires) == (60, 3600, 7200)
    assert cfg.flush_interval_ms == 1000
    assert cfg.algorithms == ["MD5"]
    assert cfg.users == [] and cfg.user_ranges == []


def test_field_errors_carry_json_paths() -> None:
    errors = errors_of(
        {
            "users": [
                {"number": "6140", "password": "a"},
                {"number": "61a", "password": "a"},
                {"number": "6142"},
                {"number": "6143", "password": "a", "ha1_md5": "0" * 32, "ha1_sha256": "0" * 64},
                {"number": "6144", "ha1_md5": "xyz", "ha1_sha256": "0" * 64},
                {"number": "6145", "password": "a", "colour": "red"},
            ],
            "flush_interval_ms": 2000,
        }
    )
    assert "registrar.users[1].number: number must be 2 to 15 digits, got '61a'" in errors
    assert "registrar.users[2]: password (or ha1_md5 + ha1_sha256) is required" in errors
    assert "registrar.users[3]: give either password or ha1_md5 + ha1_sha256, not both" in errors
    assert "registrar.users[4].ha1_md5: ha1_md5 must be 32 hexadecimal digits" in errors
    assert "registrar.users[5].colour: unknown key" in errors
    assert "registrar.flush_interval_ms: Input should be less than or equal to 1000" in errors


def test_nested_list_items_are_located() -> None:
    errors = errors_of(
        {
            "web_pools": [{"name": "web", "members": ["7000-7099", "x"]}],
            "trunks": [{"name": "pbx", "networks": ["10.0.0.0/255.0.0.0", "nonsense"]}],
            "user_ranges": [{"first": "100", "last": "1000", "password_template": "{number}"}],
        }
    )
    assert "registrar.web_pools[0].members[1]: member must be 2 to 15 digits, got 'x'" in errors
    assert any(
        e.startswith("registrar.trunks[0].networks[1]: 'nonsense' is not a network") for e in errors
    )
    assert any(
        e.startswith("registrar.user_ranges[0]: first and last must have the same") for e in errors
    )


def test_cross_entry_errors_point_at_the_entry() -> None:
    errors = errors_of(
        {
            "users": [
                {"number": "6140", "password": "a"},
                {"number": "6141", "extension": "6140", "password": "b"},
                {"number": "6140", "password": "c"},
                {"number": "6150", "password": "d", "web_pool": "nope"},
            ],
            "user_ranges": [
                {
                    "first": "7000",
                    "last": "7009",
                    "password_template": "{number}!",
                    "extension_offset": -860,
                }
            ],
            "trunks": [
                {"name": "t", "networks": ["10.0.0.1"]},
                {"name": "t", "networks": ["10.0.0.2"]},
            ],
            "min_expires": 5000,
        }
    )
    assert set(errors) == {
        "registrar.default_expires: need min_expires <= default_expires <= max_expires",
        "registrar.trunks[1].name: name 't' is used twice",
        "registrar.users[3].web_pool: unknown web pool 'nope'",
        "registrar.users[1].extension: 6140 is already used by users[0] (user 6140)",
        "registrar.users[2].number: user 6140 is defined twice",
        "registrar.user_ranges[0].extension_offset: 6140 is already used by users[0] (user 6140)",
    }


def test_range_template_rules() -> None:
    assert any(
        "must contain {number}" in e
        for e in errors_of(
            {"user_ranges": [{"first": "10", "last": "20", "password_template": "same"}]}
        )
    )
    assert any(
        "gives extension -80" in e
        for e in errors_of(
            {
                "user_ranges": [
                    {
                        "first": "20",
                        "last": "30",
                        "password_template": "{number}",
                        "extension_offset": -100,
                    }
                ]
            }
        )
    )


def test_web_pool_members_expand() -> None:
    pool = WebPoolConfig(name="web", members=["7000-7002", "7100", "0098 - 0099"])
    assert list(pool.numbers()) == ["7000", "7001", "7002", "7100", "0098", "0099"]


def test_trunk_networks_normalised() -> None:
    cfg = RegistrarConfig.model_validate(
        {"trunks": [{"name": "pbx", "networks": ["172.25.0.0/255.255.0.0", "10.1.2.3"]}]}
    )
    assert cfg.trunks[0].networks == ["172.25.0.0/16", "10.1.2.3/32"]


# ---- records ---------------------------------------------------------------------------
def test_user_from_config_hashes_with_realm_and_defaults_extension() -> None:
    rec = user_from_config(UserConfig(number="6140", password="s3cret", name="Ana"), REALM)
    assert rec.extension == "6140"
    assert rec.ha1_md5 == ha1(Algorithm.MD5, "6140", REALM, "s3cret")
    assert rec.ha1_sha256 == ha1(Algorithm.SHA256, "6140", REALM, "s3cret")
    assert rec.realm == REALM and rec.origin == "config"
    assert rec.ext_ha1_md5 is None  # extension == number: the number's digest serves
    assert "s3cret" not in repr(rec)


def test_user_with_given_ha1_pair() -> None:
    md5, sha = ha1(Algorithm.MD5, "6140", REALM, "pw"), ha1(Algorithm.SHA256, "6140", REALM, "pw")
    rec = user_from_config(
        UserConfig(number="6140", ha1_md5=md5.upper(), ha1_sha256=sha, extension="5140"), REALM
    )
    assert (rec.ha1_md5, rec.ha1_sha256, rec.extension) == (md5, sha, "5140")


def test_expand_range_with_offset_and_templates() -> None:
    rng = UserRangeConfig(
        first="6140",
        last="6142",
        password_template="{number}-pw",
        extension_offset=-1000,
        name_template="Room {number}",
    )
    recs = expand_range(rng, REALM)
    assert [(r.number, r.extension, r.name) for r in recs] == [
        ("6140", "5140", "Room 6140"),
        ("6141", "5141", "Room 6141"),
        ("6142", "5142", "Room 6142"),
    ]
    assert recs[1].ha1_md5 == ha1(Algorithm.MD5, "6141", REALM, "6141-pw")
    assert recs[1].ext_ha1_sha256 == ha1(Algorithm.SHA256, "5141", REALM, "6141-pw")


def test_templates_are_not_format_strings() -> None:
    rng = UserRangeConfig(
        first="10",
        last="10",
        password_template="{number}{0.__class__}",
        name_template="{x} {number}",
    )
    rec = expand_range(rng, REALM)[0]
    assert rec.name == "{x} 10"
    assert rec.ha1_md5 == ha1(Algorithm.MD5, "10", REALM, "10{0.__class__}")


def test_ten_thousand_users_from_a_range_load_in_under_a_second() -> None:
    started = time.perf_counter()
    cfg = config_from_data(
        {
            "registrar": {
                "user_ranges": [
                    {
                        "first": "10000",
                        "last": "19999",
                        "password_template": "{number}-s3cret",
                        "extension_offset": 50000,
                    }
                ]
            }
        }
    ).registrar
    directory = UserDirectory(REALM)
    directory.load(config_users(cfg, REALM))
    elapsed = time.perf_counter() - started
    assert len(directory) == 10_000
    assert directory.by_extension("69999").number == "19999"  # type: ignore[union-attr]
    assert elapsed < 1.0, f"10,000 users took {elapsed:.3f} s"


# ---- directory ---------------------------------------------------------------------------
@pytest.fixture
def directory() -> UserDirectory:
    d = UserDirectory(REALM)
    d.load(
        [
            make_user("6140", "pw0", REALM, extension="5140", web_extension="7140"),
            make_user("6141", "pw1", REALM),
            make_user("6142", "pw2", "other-realm"),
        ]
    )
    return d


def test_lookups_by_number_extension_and_web_extension(directory: UserDirectory) -> None:
    assert directory.by_number("6140").extension == "5140"  # type: ignore[union-attr]
    assert directory.by_extension("5140").number == "6140"  # type: ignore[union-attr]
    assert directory.by_extension("7140").number == "6140"  # type: ignore[union-attr]
    assert directory.by_extension("6141").number == "6141"  # type: ignore[union-attr]
    assert (
        directory.by_extension("6140") is None
    )  # a number is not an extension unless it is its own
    assert directory.by_number("5140") is None
    assert len(directory) == 3
    assert [u.number for u in directory.all()] == ["6140", "6141", "6142"]


def test_ha1_lookup(directory: UserDirectory) -> None:
    assert directory.ha1_lookup("6140", REALM, Algorithm.MD5) == ha1(
        Algorithm.MD5, "6140", REALM, "pw0"
    )
    assert directory.ha1_lookup("6140", REALM, Algorithm.SHA256) == ha1(
        Algorithm.SHA256, "6140", REALM, "pw0"
    )
    # the hard extension as digest username has its own digest
    assert directory.ha1_lookup("5140", REALM, Algorithm.MD5) == ha1(
        Algorithm.MD5, "5140", REALM, "pw0"
    )
    assert directory.ha1_lookup("7140", REALM, Algorithm.MD5) is None
    assert directory.ha1_lookup("9999", REALM, Algorithm.MD5) is None
    assert directory.ha1_lookup("6140", "wrong", Algorithm.MD5) is None
    # hashed for another realm: unusable, like an unknown user
    assert directory.ha1_lookup("6142", REALM, Algorithm.MD5) is None


def test_realm_mismatch_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    d = UserDirectory(REALM)
    d.load([make_user("6142", "pw", "other-realm")])
    assert "event=user_realm_mismatch users=1" in caplog.text


def test_owns_aor_user(directory: UserDirectory) -> None:
    assert directory.owns_aor_user("5140", "6140")  # hard extension, authenticated as the number
    assert directory.owns_aor_user("6140", "6140")
    assert directory.owns_aor_user("7140", "6140")  # web extension
    assert directory.owns_aor_user("6140", "5140")  # authenticated as its extension
    assert not directory.owns_aor_user("6141", "6140")  # someone else's
    assert not directory.owns_aor_user("5140", "6141")
    assert not directory.owns_aor_user("5140", "9999")  # unknown user


def test_upsert_and_remove_keep_indexes_consistent(directory: UserDirectory) -> None:
    directory.upsert(make_user("6140", "new", REALM, extension="5150"))
    assert directory.by_extension("5140") is None and directory.by_extension("7140") is None
    assert directory.by_extension("5150").number == "6140"  # type: ignore[union-attr]
    assert directory.remove("6140")
    assert not directory.remove("6140")
    assert directory.by_extension("5150") is None and directory.by_number("6140") is None
    assert len(directory) == 2


def test_find_conflicts() -> None:
    existing = [make_user("6140", "a", REALM, extension="5140"), make_user("6141", "b", REALM)]
    assert find_conflicts(existing, [make_user("6140", "c", REALM, extension="5999")]) == []
    assert find_conflicts(existing, [make_user("6150", "c", REALM, extension="5140")]) == [
        "user 6150: 5140 already belongs to user 6140"
    ]
    assert find_conflicts(existing, [make_user("5140", "c", REALM)]) == [
        "user 5140: 5140 already belongs to user 6140"
    ]
    new = [make_user("6160", "c", REALM, extension="6170"), make_user("6170", "d", REALM)]
    assert find_conflicts([], new) == ["user 6170: 6170 already belongs to user 6160"]
