"""Settings: the shipped file, precedence, unknown keys, derived locations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from platformdirs import user_data_dir
from pydantic import BaseModel

from config import DEFAULT_CONFIG_FILE, ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CHINWAG_"):
            monkeypatch.delenv(name)


def all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += all_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_shipped_file_mirrors_the_defaults() -> None:
    # model_construct() runs no settings source: these are the defaults in code.
    assert load_settings().model_dump() == Settings.model_construct().model_dump()


def test_every_key_is_in_the_shipped_file_with_a_comment() -> None:
    lines = DEFAULT_CONFIG_FILE.read_text().splitlines()
    section = ""
    documented: set[str] = set()
    for index, line in enumerate(lines):
        if match := re.match(r"^\[(\w+)\]$", line):
            section = match.group(1) + "."
            continue
        if match := re.match(r"^(?:# )?(\w+) = ", line):
            previous = lines[index - 1]
            assert previous.startswith("#"), f"{section}{match.group(1)} has no comment above it"
            documented.add(section + match.group(1))
    missing = set(all_keys(Settings)) - documented
    assert not missing, f"keys not in config/chinwag.toml: {sorted(missing)}"


def test_precedence_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[generation]\ntemperature = 0.1\ntop_k = 7\n[model]\nname = "from-file"\n')
    settings = load_settings(path)
    assert (settings.generation.temperature, settings.generation.top_k) == (0.1, 7)
    assert settings.generation.top_p == 0.9  # untouched keys keep their defaults

    monkeypatch.setenv("CHINWAG_GENERATION__TEMPERATURE", "0.5")
    monkeypatch.setenv("CHINWAG_MODEL__NAME", "from-env")
    settings = load_settings(path)
    assert (settings.generation.temperature, settings.model.name) == (0.5, "from-env")
    assert settings.generation.top_k == 7

    settings = load_settings(path, generation={"temperature": 1.5}, model={"name": None})
    assert (settings.generation.temperature, settings.model.name) == (1.5, "from-env")

    monkeypatch.setenv("CHINWAG_CONFIG", str(path))
    assert load_settings().generation.top_k == 7


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[model]\nnmae = "typo"\n')
    with pytest.raises(ConfigError, match=r"unknown configuration key 'model\.nmae'"):
        load_settings(path)
    path.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="unknown configuration key 'colour'"):
        load_settings(path)


def test_unknown_nested_env_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHINWAG_GENERATION__TEMPERATUR", "0.3")
    with pytest.raises(ConfigError, match=r"generation\.temperatur"):
        load_settings()


def test_invalid_value_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[generation]\ntemperature = 9\n")
    with pytest.raises(ConfigError, match=r"generation\.temperature"):
        load_settings(path)
    path.write_text("[generation\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(path)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_data_dir_and_derived_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().resolved_data_dir == Path(user_data_dir("chinwag"))
    monkeypatch.setenv("CHINWAG_DATA_DIR", str(tmp_path / "d"))
    settings = load_settings()
    assert settings.resolved_data_dir == tmp_path / "d"
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'd' / 'chinwag.db'}"
    assert settings.log_file == tmp_path / "d" / "logs" / "chinwag.log"
    assert load_settings(data_dir=tmp_path / "flag").resolved_data_dir == tmp_path / "flag"


def test_an_empty_data_dir_means_the_default_not_the_current_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHINWAG_DATA_DIR", "")
    monkeypatch.setenv("CHINWAG_LOGGING__FILE", "")
    settings = load_settings()
    assert settings.data_dir is None and settings.logging.file is None
    assert settings.resolved_data_dir == Path(user_data_dir("chinwag"))
    assert settings.logging.message_text is False


def test_replica_settings_come_from_the_environment_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHINWAG_DISCORD__SHARD_COUNT", "4")
    monkeypatch.setenv("CHINWAG_DISCORD__SHARD_IDS", "[1, 3]")
    monkeypatch.setenv("CHINWAG_SLACK__REDIS_URL", "redis://:secret@cache:6379/0")
    settings = load_settings()
    assert (settings.discord.shard_count, settings.discord.shard_ids) == (4, [1, 3])
    assert settings.slack.redis_url == "redis://:secret@cache:6379/0"
    monkeypatch.setenv("CHINWAG_SLACK__REDIS_URL", "")
    assert load_settings().slack.redis_url is None  # set but empty: not set
    monkeypatch.delenv("CHINWAG_DISCORD__SHARD_COUNT")
    monkeypatch.delenv("CHINWAG_DISCORD__SHARD_IDS")
    for shards, problem in [
        ({"shard_ids": [0]}, "shard_ids needs shard_count"),
        ({"shard_count": 2, "shard_ids": [2]}, r"from 0 to 1, not \[2\]"),
        ({"shard_count": 2, "shard_ids": [1, 1]}, "twice"),
        ({"shard_count": 2, "shard_ids": []}, "no shard"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            load_settings(discord=shards)
    with pytest.raises(ConfigError, match=r"slack\.redis_url.*redis://"):
        load_settings(slack={"redis_url": "cache:6379"})
