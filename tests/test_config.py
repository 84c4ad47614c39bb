"""kioskd.config: the shipped files, every error path (file, line, key), the API key lookup, describe()."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from kioskd import config
from kioskd.config import KioskConfig
from kioskd.core.realtime import INSTRUCTIONS_MAX_BYTES
from kioskd.core.realtime import INSTRUCTIONS_MAX_BYTES
from kioskd.errors import ConfigError, classify


REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
KEY = "sk-" + "proj-TESTKEY0123456789abcdef"  # a made-up key, split so secret scanners do not flag it


def error_of(text: str, filename: str = "kioskd.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.parse(text, filename)
    return info.value


# ---------------------------------------------------------------------------------------------------- shipped


def test_no_file_gives_the_embedded_default() -> None:
    """load(None) → the simulator on loopback and the simulated button, as DESIGN documents."""
    cfg = config.load(None)
    assert cfg == KioskConfig()
    assert cfg.realtime.url is None and cfg.button.kind == "simulated"
    assert cfg.realtime.voice == "marin" and cfg.audio.block_ms == 5 and cfg.led.pin == 27
    assert cfg.source == config.DEFAULT_SOURCE


def test_shipped_kioskd_yaml_is_the_embedded_default() -> None:
    """config/kioskd.yaml spells out exactly the dataclass defaults."""
    path = REPO / "config" / "kioskd.yaml"
    cfg = config.load(path)
    assert cfg.source == str(path)
    assert dataclasses.replace(cfg, source=config.DEFAULT_SOURCE) == KioskConfig()


def test_shipped_kioskd_yaml_documents_every_key_with_its_default() -> None:
    """Every schema key is in the example, each preceded by a comment that states its default."""
    path = REPO / "config" / "kioskd.yaml"
    data = yaml.safe_load(path.read_text())
    assert {s: set(keys) for s, keys in data.items()} == {s: set(keys) for s, keys in config.SCHEMA.items()}
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("  ") and not line.lstrip().startswith("#") and ":" in line:
            comments = []
            for above in reversed(lines[:i]):
                if not above.lstrip().startswith("#"):
                    break
                comments.append(above)
            assert any("Default" in c for c in comments), f"line {i + 1} has no default documented: {line}"


def test_shipped_azure_yaml() -> None:
    """The Azure variant: GA URL with the deployment in model=, the api-key header, the key from systemd."""
    cfg = config.load(REPO / "config" / "azure.yaml")
    assert cfg.realtime.url == "wss://<resource>.openai.azure.com/openai/v1/realtime?model=<deployment>"
    assert cfg.realtime.auth == "api-key"
    assert config.effective_auth(cfg.realtime) == "api-key"
    assert config.effective_auth(dataclasses.replace(cfg.realtime, auth="auto")) == "api-key"
    assert cfg.button.kind == "gpio"
    assert cfg.realtime.api_key_file is None  # the key comes from systemd's LoadCredential= (scripts/install)
    # the keys it leaves out keep their defaults
    assert cfg.turn == KioskConfig().turn and cfg.audio == KioskConfig().audio


def test_auto_auth_is_bearer_for_openai() -> None:
    cfg = config.parse("realtime:\n  url: wss://api.openai.com/v1/realtime?model=gpt-realtime\n", "k.yaml")
    assert config.effective_auth(cfg.realtime) == "bearer"


def test_empty_file_and_empty_sections_give_defaults() -> None:
    assert config.parse("", "k.yaml") == KioskConfig(source="k.yaml")
    assert config.parse("# only a comment\n", "k.yaml") == KioskConfig(source="k.yaml")
    assert config.parse("audio:\nturn: {}\n", "k.yaml") == KioskConfig(source="k.yaml")


def test_values_are_typed_and_ints_widen_to_floats() -> None:
    cfg = config.parse(
        "audio:\n  latency_s: 1\n  input_device: 'USB Audio'\n  earcons: false\n"
        "led:\n  pin: null\nturn:\n  hold_cap_s: 12.5\n", "k.yaml")
    assert cfg.audio.latency_s == 1.0 and isinstance(cfg.audio.latency_s, float)
    assert cfg.audio.input_device == "USB Audio" and cfg.audio.earcons is False
    assert cfg.led.pin is None and cfg.turn.hold_cap_s == 12.5


def test_config_is_frozen() -> None:
    cfg = config.load(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.audio.block_ms = 40  # type: ignore[misc]


def test_relative_paths_start_at_the_config_files_directory(tmp_path: Path) -> None:
    """The daemon's working directory is not the technician's, so relative paths follow the file."""
    path = tmp_path / "kioskd.yaml"
    path.write_text("realtime:\n  api_key_file: secrets/key\ncontrol:\n  socket: run/control.sock\n")
    cfg = config.load(path)
    assert cfg.realtime.api_key_file == str(tmp_path / "secrets" / "key")
    assert cfg.control.socket == str(tmp_path / "run" / "control.sock")


# ---------------------------------------------------------------------------------------------------- errors


def test_misspelt_key_names_file_line_key_and_suggestion() -> None:
    path = DATA / "misspelt_key.yaml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), 7, "audio.output_devcie")
    assert str(err) == f"{path}:7: audio.output_devcie: unknown key (did you mean audio.output_device?)"
    assert classify(err) == "fatal" and isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("text", "line", "key", "fragments"),
    [
        # unknown section and key: the key's line, the closest valid name
        ("audoi:\n  block_ms: 20\n", 1, "audoi", ["unknown section", "did you mean audio?"]),
        ("turn:\n  hold_cap_s: 5\n  reply_wiat_s: 3\n", 3, "turn.reply_wiat_s", ["did you mean turn.reply_wait_s?"]),
        ("log:\n  zzz: 1\n", 2, "log.zzz", ["unknown key", "valid: log.level, log.format"]),
        ("realtime:\n  api_key: sk-x\n", 2, "realtime.api_key", ["realtime.api_key_file"]),
        ("audio:\n  block_ms: 20\n  block_ms: 40\n", 3, "audio.block_ms", ["duplicate key"]),
        # wrong type: the value's line, the expected type
        ("audio:\n  block_ms: abc\n", 2, "audio.block_ms", ["expected an integer", "'abc'"]),
        ("audio:\n  block_ms: 20.5\n", 2, "audio.block_ms", ["expected an integer"]),
        ("audio:\n  block_ms: true\n", 2, "audio.block_ms", ["expected an integer"]),
        ("audio:\n\n  input_device:\n    - a\n    - b\n", 4, "audio.input_device",
         ["expected a string or null, got a list"]),
        ("audio:\n  input_device: 2\n", 2, "audio.input_device", ['quote it: "2"']),
        ("audio:\n  latency_s: fast\n", 2, "audio.latency_s", ["expected a number"]),
        ("audio:\n  earcons: 1\n", 2, "audio.earcons", ["expected true or false"]),
        ("realtime:\n  voice: null\n", 2, "realtime.voice", ["expected a string, got null"]),
        ("led:\n  pin: none\n", 2, "led.pin", ["expected an integer or null", "use null"]),
        ("audio: 3\n", 1, "audio", ["expected a mapping of audio keys"]),
        # bad enum: the allowed values
        ("log:\n  level: verbose\n", 2, "log.level", ["'verbose' is not one of debug, info, warning, error"]),
        ("log:\n  level: INFO\n", 2, "log.level", ["did you mean info?"]),
        ("button:\n  kind: GPIO17\n", 2, "button.kind", ["gpio, simulated"]),
        ("audio:\n  input_format: g711_ulaw\n", 2, "audio.input_format", ["pcm16, pcmu"]),
        ("audio:\n  input_format: PCMU\n", 2, "audio.input_format", ["did you mean pcmu?"]),
        ("realtime:\n  auth: apikey\n", 2, "realtime.auth", ["auto, bearer, api-key", "did you mean api-key?"]),
        # out of range: the range
        ("audio:\n  block_ms: 4\n", 2, "audio.block_ms", ["between 5 and 100"]),
        ("audio:\n  block_ms: 101\n", 2, "audio.block_ms", ["between 5 and 100"]),
        ("audio:\n  latency_s: 0\n", 2, "audio.latency_s", ["greater than 0"]),
        ("audio:\n  prebuffer_ms: -1\n", 2, "audio.prebuffer_ms", ["0 or more"]),
        ("audio:\n  prebuffer_min_ms: 0\n", 2, "audio.prebuffer_min_ms", ["greater than 0"]),
        ("audio:\n  prebuffer_max_ms: -5\n", 2, "audio.prebuffer_max_ms", ["greater than 0"]),
        ("audio:\n  prebuffer_max_ms: 100\n  prebuffer_min_ms: 200\n", 3, "audio.prebuffer_min_ms",
         ["more than audio.prebuffer_max_ms (100)", "prebuffer_min_ms <= prebuffer_max_ms"]),
        ("audio:\n  prebuffer_max_ms: 5\n", 2, "audio.prebuffer_max_ms", ["less than audio.prebuffer_min_ms (10)"]),
        ("button:\n  pin: 28\n", 2, "button.pin", ["between 0 and 27"]),
        ("led:\n  pin: -1\n", 2, "led.pin", ["between 0 and 27"]),
        ("realtime:\n  connect_timeout_s: 0\n", 2, "realtime.connect_timeout_s", ["greater than 0"]),
        ("turn:\n  reply_wait_s: -3\n", 2, "turn.reply_wait_s", ["greater than 0"]),
        ("turn:\n  reply_cap_s: .nan\n", 2, "turn.reply_cap_s", ["finite"]),
        ("turn:\n  reply_cap_s: 3600\n", 2, "turn.reply_cap_s", ["between 1 and 600"]),  # the ring is sized for it
        ("realtime:\n  url: https://api.openai.com/v1/realtime\n", 2, "realtime.url", ["ws:// or wss://"]),
        ("realtime:\n  url: wss://\n", 2, "realtime.url", ["no host"]),
        ("control:\n  socket: /" + "x" * 120 + "\n", 2, "control.socket", ["107 bytes"]),
        ("realtime:\n  instructions: " + "é" * 16_385 + "\n", 2, "realtime.instructions",
         ["32,770 bytes long (UTF-8); the limit is 32,768", "256 KiB"]),
        ("button:\n  pin: 5\nled:\n  pin: 5\n", 4, "led.pin", ["same pin as button.pin"]),
        ("button:\n  pin: 27\n", 2, "button.pin", ["same pin as led.pin"]),
        # syntax and shape
        ("audio:\n  block_ms: [20\n", 3, None, ["invalid YAML"]),
        ("audio:\n\tblock_ms: 20\n", 2, None, ["invalid YAML", "spaces, not tabs"]),
        ("a: 1\n---\nb: 2\n", 2, None, ["single document"]),
        ("just text\n", 1, None, ["expected a mapping of sections"]),
        ("- realtime\n", 1, None, ["expected a mapping of sections"]),
        ("7: x\n", 1, None, ["expected a section name"]),
    ],
)
def test_every_error_names_file_line_and_key(text: str, line: int, key: str | None, fragments: list[str]) -> None:
    err = error_of(text)
    assert (err.file, err.line, err.key) == ("kioskd.yaml", line, key)
    message = str(err)
    assert message.startswith(f"kioskd.yaml:{line}: " + (f"{key}: " if key else ""))
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("name", ["bad_syntax", "not_a_mapping"])
def test_broken_files_on_disk(name: str) -> None:
    path = DATA / f"{name}.yaml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.file == str(path)
    assert info.value.line == {"bad_syntax": 3, "not_a_mapping": 1}[name]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert (info.value.file, info.value.line, info.value.key) == (str(path), None, None)
    assert str(info.value) == f"{path}: no such file"


def test_credentials_in_the_yaml_are_refused_without_echoing_them() -> None:
    """The YAML names a key file, never a key; the refusal does not repeat what was written."""
    for text, key in [
        (f"realtime:\n  url: wss://x.openai.azure.com/openai/v1/realtime?model=m&api-key={KEY}\n", "realtime.url"),
        (f"realtime:\n  api_key_file: {KEY}\n", "realtime.api_key_file"),
        (f"realtime:\n  api_key: {KEY}\n", "realtime.api_key"),
        ("realtime:\n  api_key_file: 12345678901234567890\n", "realtime.api_key_file"),
        (f"realtime:\n  api_key_file: !secret {KEY}\n", "realtime.api_key_file"),
    ]:
        err = error_of(text)
        assert err.key == key
        assert KEY not in str(err) and "12345678901234567890" not in str(err)


# ---------------------------------------------------------------------------------------------------- API key


def realtime_with_key_file(path: Path) -> config.RealtimeConfig:
    return config.RealtimeConfig(api_key_file=str(path))


def test_api_key_from_file_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(f"  {KEY}\n")
    path.chmod(0o600)
    assert config.read_api_key(realtime_with_key_file(path), environ={"OPENAI_API_KEY": "other"}) == KEY


def test_api_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY)
    path.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        config.read_api_key(realtime_with_key_file(path), environ={})
    err = info.value
    assert err.key == "realtime.api_key_file" and err.file == str(path)
    assert "chmod 600" in str(err) and KEY not in str(err)


@pytest.mark.parametrize("content", ["", "  \n", f"{KEY}\n{KEY}\n", f"{KEY[:8]} {KEY[8:]}"])
def test_api_key_file_empty_or_malformed_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        config.read_api_key(realtime_with_key_file(path), environ={})
    assert info.value.key == "realtime.api_key_file"
    assert KEY not in str(info.value) and KEY[8:] not in str(info.value)


def test_api_key_file_missing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(ConfigError) as info:
        config.read_api_key(realtime_with_key_file(path), environ={"OPENAI_API_KEY": KEY})
    assert info.value.key == "realtime.api_key_file" and str(path) in str(info.value)


def test_api_key_file_unreadable_is_refused(tmp_path: Path) -> None:
    """A directory where the file should be cannot be read, whoever runs the test (root included)."""
    path = tmp_path / "key"
    path.mkdir()
    with pytest.raises(ConfigError) as info:
        config.read_api_key(realtime_with_key_file(path), environ={})
    assert info.value.key == "realtime.api_key_file" and "key file is not a regular file but a directory" in str(info.value)


@pytest.mark.parametrize("kind", ["dev-zero link", "fifo", "big file"])
def test_a_key_file_that_is_no_small_regular_file_is_refused_before_it_is_read(tmp_path: Path, kind: str) -> None:
    """The descriptor is checked first: a link to /dev/zero (was: 1.3 GB read, then exit 1) and a FIFO with no
    writer (was: start-up hung) are refused at once, as is a file larger than a key could be."""
    path = tmp_path / "key"
    if kind == "dev-zero link":
        path.symlink_to("/dev/zero")
        expected = "is not a regular file but a character device"
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
        expected = "is not a regular file but a FIFO"
    else:
        path.write_text(KEY + "x" * config.KEY_FILE_MAX_BYTES)
        path.chmod(0o600)
        expected = f"the limit is {config.KEY_FILE_MAX_BYTES:,}"
    with pytest.raises(ConfigError) as info:
        config.read_api_key(realtime_with_key_file(path), environ={})
    assert info.value.key == "realtime.api_key_file" and expected in str(info.value), str(info.value)
    assert KEY not in str(info.value)


def test_a_config_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kioskd.yaml"
    path.write_text("# padding\n" * (config.CONFIG_MAX_BYTES // 10 + 1))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value) and f"the limit is {config.CONFIG_MAX_BYTES:,}" in str(info.value)


def test_instructions_are_capped() -> None:
    err = error_of('realtime:\n  instructions: "' + "a" * (INSTRUCTIONS_MAX_BYTES + 1) + '"\n')
    assert (err.line, err.key) == (2, "realtime.instructions") and "the limit is 32,768" in str(err)
    assert config.parse('realtime:\n  instructions: "' + "a" * INSTRUCTIONS_MAX_BYTES + '"\n', "k.yaml")
    err = error_of('exhibit:\n  instructions: "' + "é" * (INSTRUCTIONS_MAX_BYTES // 2 + 1) + '"\n')
    assert err.key == "exhibit.instructions" and "bytes long (UTF-8)" in str(err)


@pytest.mark.parametrize(("text", "key"), [
    (f"realtime: {KEY}\n", "realtime"),  # the key pasted as the section's value
    (f"turn:\n  reply_wait_s: {KEY}\n", "turn.reply_wait_s"),  # where a number belongs
    (f"log:\n  level: {KEY}\n", "log.level"),  # where a choice belongs
    (f"{KEY}: 1\n", "(a key-like name, not shown)"),  # as a section name
    (f"audio:\n  {KEY}: 1\n", "audio.(a key-like name, not shown)"),  # as a key name
    ("turn:\n  reply_wait_s: 0123456789abcdef0123456789abcdef\n", "turn.reply_wait_s"),  # an Azure-style key
])
def test_a_misplaced_key_is_never_echoed(text: str, key: str) -> None:
    """Wherever a key lands in the YAML, the error names file, line and key but never quotes it."""
    err = error_of(text)
    assert err.key == key and err.line is not None
    assert KEY not in str(err) and KEY[3:15] not in str(err) and "0123456789abcdef0123" not in str(err)


def test_short_values_are_still_quoted_to_help() -> None:
    assert "'loud'" in str(error_of("log:\n  level: loud\n"))


# ---------------------------------------------------------------------------------------------------- plaintext


def cfg_of(text: str) -> config.KioskConfig:
    return config.parse(text, "kioskd.yaml")


def test_a_key_never_goes_unencrypted_to_another_machine() -> None:
    """ws:// to a remote host with a key is refused (file, line, key); loopback is fine; wss:// is fine."""
    remote = cfg_of("realtime:\n  voice: cedar\n  url: ws://api.openai.com/v1/realtime\n")
    with pytest.raises(ConfigError) as info:
        config.check_credentials(remote, remote.realtime.url or "", KEY)
    err = info.value
    assert (err.file, err.line, err.key) == ("kioskd.yaml", 3, "realtime.url")
    assert "unencrypted to api.openai.com" in str(err) and KEY not in str(err)
    assert config.check_credentials(remote, remote.realtime.url or "", None) == []  # no key, nothing to leak
    for url in ("ws://127.0.0.1:9000/v1/realtime", "ws://localhost/x", "ws://[::1]:80/x", "wss://api.openai.com/x"):
        assert config.check_credentials(cfg_of(f"realtime:\n  url: {url}\n"), url, KEY) == []


def test_plaintext_to_another_machine_only_when_the_config_says_so_and_then_warned() -> None:
    url = "ws://10.0.0.2:8000/v1/realtime"
    allowed = cfg_of(f"realtime:\n  url: {url}\n  allow_plaintext: true\n")
    [warning] = config.check_credentials(allowed, url, KEY)
    assert "unencrypted" in warning and "10.0.0.2" in warning and KEY not in warning


def test_a_cloud_endpoint_without_a_key_is_refused_with_its_line() -> None:
    cfg = cfg_of("realtime:\n  url: wss://api.openai.com/v1/realtime?model=gpt-realtime\n")
    with pytest.raises(ConfigError) as info:
        config.check_credentials(cfg, cfg.realtime.url or "", None)
    assert (info.value.line, info.value.key) == (2, "realtime.url") and "OPENAI_API_KEY" in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_api_key_file_without_permission_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY)
    path.chmod(0o000)
    with pytest.raises(ConfigError) as info:
        config.read_api_key(realtime_with_key_file(path), environ={})
    assert info.value.key == "realtime.api_key_file" and "permission denied" in str(info.value)


def test_api_key_from_systemd_credentials_before_the_environment(tmp_path: Path) -> None:
    (tmp_path / "openai_api_key").write_text(KEY + "\n")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), "OPENAI_API_KEY": "from-env"}
    assert config.read_api_key(config.RealtimeConfig(), environ=environ) == KEY
    assert config.api_key_source(config.RealtimeConfig(), environ) == str(tmp_path / "openai_api_key")


def test_api_key_from_the_environment(tmp_path: Path) -> None:
    """An empty credentials directory falls through to OPENAI_API_KEY."""
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), "OPENAI_API_KEY": f" {KEY} "}
    assert config.read_api_key(config.RealtimeConfig(), environ=environ) == KEY


def test_no_api_key_anywhere_is_none() -> None:
    assert config.read_api_key(config.RealtimeConfig(), environ={"OPENAI_API_KEY": ""}) is None
    assert config.api_key_source(config.RealtimeConfig(), {}) is None


# ---------------------------------------------------------------------------------------------------- derived


def test_control_socket_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.path.isdir(config.SERVICE_RUNTIME_DIR):
        pytest.skip(f"{config.SERVICE_RUNTIME_DIR} exists here: it comes before $XDG_RUNTIME_DIR and /tmp")
    assert config.FALLBACK_SOCKET_ROOT == "/tmp"
    monkeypatch.setattr(config, "FALLBACK_SOCKET_ROOT", str(tmp_path))  # the last resort's directory is made
    none = config.ControlConfig()
    assert config.control_socket_path(config.ControlConfig("/srv/k.sock"), {"RUNTIME_DIRECTORY": "/run/x"}) \
        == "/srv/k.sock"
    assert config.control_socket_path(none, {"RUNTIME_DIRECTORY": "/run/kioskd:/run/other",
                                             "XDG_RUNTIME_DIR": "/run/user/1"}) == "/run/kioskd/control.sock"
    assert config.control_socket_path(none, {"XDG_RUNTIME_DIR": "/run/user/1"}) == "/run/user/1/kioskd.sock"
    assert config.control_socket_path(none, {}) == f"{tmp_path}/kioskd-{os.getuid()}/control.sock"
    assert stat.S_IMODE(os.stat(tmp_path / f"kioskd-{os.getuid()}").st_mode) == 0o700


def private_dir_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        config.private_dir(str(path))
    return str(info.value)


def test_private_dir_is_created_for_this_user_alone(tmp_path: Path) -> None:
    path = tmp_path / "kioskd-0"
    old = os.umask(0o022)
    try:
        config.private_dir(str(path))
        config.private_dir(str(path))  # and accepted as it is, the next time
    finally:
        os.umask(old)
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    os.chmod(path, 0o755)  # readable by others is fine: the socket's own mode guards it
    config.private_dir(str(path))


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o702])
def test_private_dir_refuses_a_directory_others_can_write(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kioskd-0"
    path.mkdir()
    os.chmod(path, mode)
    assert private_dir_error(path) == (
        f"{path}: control socket directory is writable by other users (mode {mode & 0o7777:04o}): a socket there "
        "could be another user's, answering in kioskd's place (remove it, or set control.socket)")
    assert stat.S_IMODE(os.lstat(path).st_mode) == mode, "refused, and left as it was"


def test_private_dir_refuses_a_symbolic_link_and_a_file(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    link = tmp_path / "kioskd-0"
    link.symlink_to(mine)
    assert "control socket directory is a symbolic link" in private_dir_error(link)
    file = tmp_path / "kioskd-1"
    file.write_text("")
    assert private_dir_error(file).startswith(f"{file}: control socket directory is not a directory")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory to another user (os.chown)")
def test_private_dir_refuses_a_directory_another_user_made(tmp_path: Path) -> None:
    path = tmp_path / "kioskd-0"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)  # what `nobody` running `mkdir /tmp/kioskd-0` first leaves
    assert private_dir_error(path).startswith(
        f"{path}: control socket directory is owned by uid 65534, not by this user (uid 0): a socket there")


def test_describe_is_plain_data_without_the_key(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY)
    path.chmod(0o600)
    cfg = config.parse(f"realtime:\n  url: wss://api.openai.com/v1/realtime?model=gpt-realtime\n"
                       f"  api_key_file: {path}\n", "k.yaml")
    described = config.describe(cfg, environ={"OPENAI_API_KEY": KEY, "XDG_RUNTIME_DIR": "/run/user/7"})
    text = json.dumps(described)
    assert KEY not in text
    assert described["source"] == "k.yaml"
    assert described["audio"]["block_ms"] == 5 and described["led"]["pin"] == 27
    assert described["effective"] == {
        "endpoint": "wss://api.openai.com/v1/realtime?model=gpt-realtime", "auth": "bearer",
        "api_key_source": str(path), "control_socket": "/run/user/7/kioskd.sock",
    }
    assert described["set_in"] == {"realtime.url": "k.yaml:2", "realtime.api_key_file": "k.yaml:3"}
    assert set(described) == {"source", "set_in", "effective", *config.SCHEMA}


# ---------------------------------------------------------------------------------------------------- cost


def test_the_priced_model_comes_from_cost_model_else_the_url() -> None:
    assert config.realtime_model(cfg_of("realtime:\n  url: wss://api.openai.com/v1/realtime?model=gpt-realtime-mini\n")) \
        == "gpt-realtime-mini"
    assert config.realtime_model(cfg_of("cost:\n  model: gpt-realtime\nrealtime:\n  url: wss://x.openai.azure.com/"
                                        "openai/v1/realtime?model=museum-deployment\n")) == "gpt-realtime"
    assert config.realtime_model(config.KioskConfig()) == "gpt-realtime"  # the embedded simulator
    settings = config.core_settings(cfg_of("cost:\n  model: gpt-realtime-mini\n"), endpoint="")
    assert settings.turn.model == "gpt-realtime-mini" and settings.turn.prices is not None
    assert settings.turn.prices.audio_out == 20.0


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [
    ("realtime:\n  url: wss://x.openai.azure.com/openai/v1/realtime?model=museum-deployment\n", 2,
     "realtime.url", "no price for the model 'museum-deployment'"),
    ("realtime:\n  url: wss://api.openai.com/v1/realtime\n", 2, "realtime.url", "names no model= to price"),
    ("cost:\n  model: gpt-9-turbo\n", 2, "cost.model", "no price for the model 'gpt-9-turbo'"),
])
def test_a_model_without_a_price_is_a_config_error(text: str, line: int, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.check_prices(cfg_of(text))
    assert (info.value.line, info.value.key) == (line, key) and fragment in str(info.value)
    assert "set cost.model" in str(info.value)


def test_prices_in_the_config_replace_or_add_models() -> None:
    cfg = cfg_of("cost:\n  model: museum-realtime\n  prices:\n"
                 "    museum-realtime: {text_in: 1, text_out: 2, audio_in: 3, audio_out: 4.5}\n"
                 "    gpt-realtime: {text_in: 5, text_out: 20, audio_in: 40, audio_out: 80, audio_cached: 0.5}\n")
    config.check_prices(cfg)  # priced: no error
    settings = config.core_settings(cfg, endpoint="")
    assert settings.turn.model == "museum-realtime" and settings.turn.prices is not None
    assert settings.turn.prices.audio_out == 4.5 and settings.turn.prices.text_cached is None
    assert config.price_table(cfg)["gpt-realtime"].audio_cached == 0.5
    assert config.price_table(cfg)["gpt-realtime-mini"].audio_out == 20.0  # the rest stays built in
    assert config.describe(cfg)["cost"]["prices"]["museum-realtime"]["audio_out"] == 4.5


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [
    ("cost:\n  prices:\n    m: {text_in: 1, text_out: 2}\n", 3, "cost.prices.m", "has no audio_in, audio_out"),
    ("cost:\n  prices:\n    m: {text_in: 1, text_out: 2, audio_in: 3, audio_out: 4, audio_cache: 1}\n", 3,
     "cost.prices.m.audio_cache", "unknown price (did you mean audio_cached?)"),
    ("cost:\n  prices:\n    m: {text_in: -1, text_out: 2, audio_in: 3, audio_out: 4}\n", 3, "cost.prices.m.text_in",
     "must be 0 or more"),
    ("cost:\n  prices:\n    m: {text_in: cheap, text_out: 2, audio_in: 3, audio_out: 4}\n", 3,
     "cost.prices.m.text_in", "expected a number"),
    ("cost:\n  prices: [1, 2]\n", 2, "cost.prices", "expected a mapping of models"),
])
def test_bad_prices_name_their_line_and_key(text: str, line: int, key: str, fragment: str) -> None:
    err = error_of(text)
    assert (err.line, err.key) == (line, key) and fragment in str(err), str(err)


RT = "realtime:\n  url: wss://api.openai.com/v1/realtime?model=gpt-realtime\n"


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [
    (RT + "fallback:\n  url: https://api.openai.com/v1\n  model: gpt-audio-9\n", 5, "fallback.model",
     "no price for the model 'gpt-audio-9'"),
    (RT + "ab:\n  split: 0.5\n", 4, "ab.split", "the A/B arm 'fallback' has no endpoint"),
    (RT + "ab:\n  split: 0.5\n  arm: gpt-realtime-9\n", 5, "ab.arm", "no price for the model 'gpt-realtime-9'"),
    (RT + "cost:\n  degrade_model: gpt-realtime-mini\n", 4, "cost.degrade_model", "there is none"),
    (RT + "cost:\n  daily_budget_usd: 5\n  degrade_model: cheap-9\n", 5, "cost.degrade_model", "no price"),
])
def test_arms_with_nothing_behind_them_are_config_errors(text: str, line: int, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.check_prices(cfg_of(text))
    assert (info.value.line, info.value.key) == (line, key) and fragment in str(info.value)


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ("fallback:\n  url: wss://api.openai.com/v1\n", "fallback.url", "must be a http:// or https:// URL"),
    ("fallback:\n  url: https://api.openai.com/v1?api-key=sk-x\n", "fallback.url", "fallback.api_key_file"),
    ("ab:\n  split: 1.5\n", "ab.split", "between 0 and 1"),
    ("cost:\n  degrade_at: 0\n", "cost.degrade_at", "greater than 0"),
])
def test_fallback_ab_and_degrade_values_are_checked(text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, "k.yaml")
    assert info.value.key == key and fragment in str(info.value)


def test_the_arms_reach_the_core() -> None:
    cfg = cfg_of(RT + "fallback:\n  url: https://api.openai.com/v1\n"
                 "ab:\n  split: 0.25\n  arm: gpt-realtime-mini\n"
                 "cost:\n  daily_budget_usd: 10\n  degrade_model: gpt-realtime-mini\n  degrade_at: 0.5\n")
    config.check_prices(cfg)
    turn = config.core_settings(cfg, endpoint="").turn
    assert turn.fallback is not None and (turn.fallback.backend, turn.fallback.model) == ("chat", "gpt-audio-1.5")
    assert turn.ab_split == 0.25 and turn.ab_arm is not None and turn.ab_arm.model == "gpt-realtime-mini"
    assert turn.degrade is not None and turn.degrade.prices is not None and turn.degrade.prices.audio_out == 20
    assert turn.degrade_at == 0.5
    assert config.has_fallback(cfg_of("")) and not config.has_fallback(cfg_of(RT))  # the embedded default has one


def test_a_plaintext_fallback_url_with_a_key_is_refused(tmp_path: Path) -> None:
    cfg = cfg_of(RT + "fallback:\n  url: http://10.0.0.5/v1\n")
    with pytest.raises(ConfigError) as info:
        config.check_credentials(cfg, "http://10.0.0.5/v1", "sk-test-key-1234567890", "fallback.url")
    assert info.value.key == "fallback.url" and "unencrypted" in str(info.value)
    assert config.check_credentials(cfg, "http://127.0.0.1:8080/v1", "sk-test-key-1234567890", "fallback.url") == []


# ---------------------------------------------------------------------------------------------------- a fleet


def fleet(tmp_path: Path, base: str, overlay: str) -> tuple[Path, Path]:
    """A shared base in fleet/ and an exhibit's overlay in exhibit/, as `--config base --config overlay`."""
    (tmp_path / "fleet").mkdir(exist_ok=True)
    (tmp_path / "exhibit").mkdir(exist_ok=True)
    b, o = tmp_path / "fleet" / "kioskd.yaml", tmp_path / "exhibit" / "exhibit.yaml"
    b.write_text(base)
    o.write_text(overlay)
    return b, o


def load_error(*paths: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.load(paths)
    return info.value


def test_an_overlay_merges_into_the_base_deeply_and_wins(tmp_path: Path) -> None:
    """Sections merge key by key, the later file's value winning (null included); cost.prices, a mapping,
    merges model by model, each model's prices replaced whole; each key keeps its own file and line."""
    base, overlay = fleet(
        tmp_path,
        "realtime:\n  url: wss://api.openai.com/v1/realtime?model=gpt-realtime\n  voice: marin\n"
        "audio:\n  block_ms: 10\n  output_device: USB\n"
        "cost:\n  daily_budget_usd: 5\n  prices:\n"
        "    museum-a: {text_in: 1, text_out: 2, audio_in: 3, audio_out: 4}\n"
        "    museum-b: {text_in: 1, text_out: 2, audio_in: 3, audio_out: 4, audio_cached: 0.5}\n",
        "realtime:\n  voice: cedar\n"
        "audio:\n  output_device: Speaker\n"
        "led:\n  pin: null\n"
        "cost:\n  prices:\n"
        "    museum-b: {text_in: 10, text_out: 20, audio_in: 30, audio_out: 40}\n"
        "    museum-c: {text_in: 5, text_out: 6, audio_in: 7, audio_out: 8}\n",
    )
    cfg = config.load([base, overlay])
    assert cfg.source == f"{base} + {overlay}"
    assert cfg.realtime.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"  # the base's
    assert cfg.realtime.voice == "cedar" and cfg.audio.output_device == "Speaker"  # the overlay's
    assert cfg.audio.block_ms == 10 and cfg.cost.daily_budget_usd == 5  # the base's, beside the overlay's keys
    assert cfg.led.pin is None and cfg.turn == KioskConfig().turn  # null wins too; untouched sections default
    assert cfg.cost.prices is not None and set(cfg.cost.prices) == {"museum-a", "museum-b", "museum-c"}
    assert cfg.cost.prices["museum-a"].audio_out == 4
    assert cfg.cost.prices["museum-b"].audio_out == 40 and cfg.cost.prices["museum-b"].audio_cached is None
    assert cfg.where("realtime.url") == (str(base), 2) and cfg.where("realtime.voice") == (str(overlay), 2)
    assert cfg.where("audio.block_ms") == (str(base), 5) and cfg.where("audio.output_device") == (str(overlay), 4)
    assert cfg.where("turn.hold_cap_s") == (cfg.source, None)  # set by no file
    described = config.describe(cfg)
    assert described["source"] == cfg.source and described["set_in"]["realtime.voice"] == f"{overlay}:2"


def test_merging_replaces_lists_and_scalars_whole_and_merges_mappings() -> None:
    """The rule itself (no key of today's schema holds a list: a list in the YAML is refused per key)."""
    merged = config._deep_merge({"a": [1, 2], "m": {"x": 1, "n": {"p": 1}}, "s": 1},
                                {"a": [3], "m": {"y": 2, "n": {"q": 2}}, "s": None})
    assert merged == {"a": [3], "m": {"x": 1, "y": 2, "n": {"p": 1, "q": 2}}, "s": None}


def test_one_file_in_a_list_is_that_file_and_no_file_the_embedded_default(tmp_path: Path) -> None:
    path = tmp_path / "kioskd.yaml"
    path.write_text("audio:\n  block_ms: 10\n")
    assert config.load([path]) == config.load(path) == config.load(str(path))
    assert config.load([path]).source == str(path)
    assert config.load([]) == config.load(None) == KioskConfig()
    assert config.load([path, path]).audio.block_ms == 10  # a file twice is harmless


def test_relative_paths_are_taken_from_the_file_that_sets_them(tmp_path: Path) -> None:
    base, overlay = fleet(
        tmp_path,
        "exhibit:\n  knowledge_file: knowledge.yaml\n  tools_file: tools.yaml\nprompts:\n  offline: offline.wav\n"
        "control:\n  socket: run/control.sock\n",
        "exhibit:\n  knowledge_file: knowledge.yaml\nprompts:\n  apology: sounds/apology.wav\n"
        "realtime:\n  api_key_file: secrets/key\n",
    )
    cfg = config.load([base, overlay])
    fleet_dir, exhibit_dir = base.parent, overlay.parent
    assert cfg.exhibit.knowledge_file == str(exhibit_dir / "knowledge.yaml")  # the overlay's, from its directory
    assert cfg.exhibit.tools_file == str(fleet_dir / "tools.yaml")
    assert cfg.prompts.offline == str(fleet_dir / "offline.wav")
    assert cfg.prompts.apology == str(exhibit_dir / "sounds" / "apology.wav")
    assert cfg.prompts.closed == "default"
    assert cfg.control.socket == str(fleet_dir / "run" / "control.sock")
    assert cfg.realtime.api_key_file == str(exhibit_dir / "secrets" / "key")


@pytest.mark.parametrize(("base", "overlay", "in_overlay", "line", "key", "fragment"), [
    # a bad value or name in either file: that file, its line, the key
    ("audio:\n  block_ms: 10\n", "led:\n  pin: 3\naudio:\n  block_ms: 2\n", True, 4, "audio.block_ms",
     "between 5 and 100"),
    ("audio:\n  block_ms: 10\n", "audio:\n  output_devcie: USB\n", True, 2, "audio.output_devcie",
     "did you mean audio.output_device?"),
    ("audoi:\n  block_ms: 10\n", "audio:\n  block_ms: 20\n", False, 1, "audoi", "unknown section"),
    ("turn:\n  reply_wiat_s: 3\n", "", False, 2, "turn.reply_wiat_s", "unknown key"),
    ("audio:\n  block_ms: 10\n", "audio:\n  block_ms: [20\n", True, 3, None, "invalid YAML"),
    ("cost:\n  prices:\n    m: {text_in: 1, text_out: 2, audio_in: 3, audio_out: 4}\n",
     "cost:\n  prices:\n    m: {audio_out: 5}\n", True, 3, "cost.prices.m", "has no text_in"),
    # checks across keys run on the merged config and name the key the later file set
    ("audio:\n  prebuffer_max_ms: 100\n", "audio:\n  prebuffer_min_ms: 200\n", True, 2,
     "audio.prebuffer_min_ms", "more than audio.prebuffer_max_ms (100)"),
    ("audio:\n  prebuffer_min_ms: 50\n", "audio:\n  prebuffer_max_ms: 20\n", True, 2,
     "audio.prebuffer_max_ms", "less than audio.prebuffer_min_ms (50)"),
    ("led:\n  pin: 5\n", "realtime:\n  voice: cedar\nbutton:\n  pin: 5\n", True, 4, "button.pin",
     "same pin as led.pin"),
    ("button:\n  pin: 5\n", "led:\n  pin: 5\n", True, 2, "led.pin", "same pin as button.pin"),
])
def test_an_error_names_the_file_it_came_from(tmp_path: Path, base: str, overlay: str, in_overlay: bool,
                                              line: int, key: str | None, fragment: str) -> None:
    b, o = fleet(tmp_path, base, overlay)
    err = load_error(b, o)
    assert (err.file, err.line, err.key) == (str(o if in_overlay else b), line, key)
    assert str(err).startswith(f"{o if in_overlay else b}:{line}: ") and fragment in str(err)


def test_checks_after_the_merge_name_the_file_that_set_the_key(tmp_path: Path) -> None:
    """Prices and credentials are checked on the merged config; their errors still name file and line."""
    b, o = fleet(tmp_path, "realtime:\n  url: ws://203.0.113.7/v1/realtime?model=gpt-realtime\n",
                 "realtime:\n  voice: cedar\ncost:\n  model: gpt-9-turbo\n")
    cfg = config.load([b, o])
    with pytest.raises(ConfigError) as info:
        config.check_prices(cfg)
    assert (info.value.file, info.value.line, info.value.key) == (str(o), 4, "cost.model")
    with pytest.raises(ConfigError) as info:
        config.check_credentials(cfg, cfg.realtime.url or "", "test-key-1234567890")
    assert (info.value.file, info.value.line, info.value.key) == (str(b), 2, "realtime.url")
    assert "unencrypted" in str(info.value)


def test_a_reload_re_reads_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP's reload (Daemon._reload, in-process) reads the base and the overlay again: a change in either
    applies; an error in the overlay is refused naming it, and the running config stays."""
    import asyncio
    import io

    from kioskd import checks, log
    from kioskd.daemon import Daemon

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    b, o = fleet(tmp_path, f"control:\n  socket: {tmp_path / 'control.sock'}\nturn:\n  reply_wait_s: 8\n",
                 "realtime:\n  voice: cedar\n")
    paths = [str(b), str(o)]
    stream = io.StringIO()
    log.configure("info", "json", stream=stream, environ={})
    try:
        daemon = Daemon(checks.load(paths), config_path=paths)
        assert daemon.cfg.realtime.voice == "cedar" and daemon.cfg.turn.reply_wait_s == 8
        b.write_text(b.read_text().replace("reply_wait_s: 8", "reply_wait_s: 12"))
        o.write_text("realtime:\n  voice: ash\n")
        asyncio.run(daemon._reload())
        assert daemon.cfg.realtime.voice == "ash" and daemon.cfg.turn.reply_wait_s == 12
        o.write_text("realtime:\n  voice: ash\nturn:\n  reply_wait_s: -1\n")
        asyncio.run(daemon._reload())
        assert daemon.cfg.turn.reply_wait_s == 12
    finally:
        log.reset()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    reloaded = [e for e in events if e["event"] == "config.reloaded"]
    failed = [e for e in events if e["event"] == "config.reload_failed"]
    assert reloaded and reloaded[0]["source"] == f"{b} + {o}"
    assert failed and failed[0]["error"].startswith(f"{o}:4: turn.reply_wait_s: must be greater than 0")


def test_audio_input_format_reaches_the_session(tmp_path: Path) -> None:
    """audio.input_format: pcm16 by default; pcmu reaches LinkSettings and is part of what needs a new session
    (a reload to it renews the session between visitors)."""
    assert KioskConfig().audio.input_format == "pcm16"
    path = tmp_path / "k.yaml"
    path.write_text("audio:\n  input_format: pcmu\n")
    cfg = config.load(path)
    link = config.core_settings(cfg, endpoint="wss://x/v1/realtime").link
    base = config.core_settings(KioskConfig(), endpoint="wss://x/v1/realtime").link
    assert (link.input_format, base.input_format) == ("pcmu", "pcm16")
    assert link.session != base.session


def test_realtime_transport_is_websocket_unless_webrtc_is_asked_for() -> None:
    assert KioskConfig().realtime.transport == "websocket"
    assert config.parse("realtime:\n  transport: webrtc\n", "k.yaml").realtime.transport == "webrtc"
    err = error_of("realtime:\n  transport: quic\n")
    assert (err.line, err.key) == (2, "realtime.transport") and "websocket, webrtc" in str(err)


def test_webrtc_with_a_g711_uplink_names_the_key_the_later_file_set() -> None:
    err = error_of("realtime:\n  transport: webrtc\naudio:\n  input_format: pcmu\n")
    assert err.key in ("realtime.transport", "audio.input_format") and "Opus" in str(err)


def test_webrtc_without_aiortc_says_what_to_install(tmp_path: Path) -> None:
    """A machine without the optional extra: the websocket transport still loads, webrtc names the extra."""
    import subprocess
    import sys

    (tmp_path / "ws.yaml").write_text("realtime:\n  transport: websocket\n")
    (tmp_path / "rtc.yaml").write_text("# exhibit\nrealtime:\n  transport: webrtc\n")
    script = ("import sys; sys.modules['aiortc'] = None\n"  # import aiortc now raises ImportError
              "from kioskd import config\n"
              "print(config.load(sys.argv[1]).realtime.transport)\n"
              "try:\n    config.load(sys.argv[2])\nexcept config.ConfigError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ws.yaml"), str(tmp_path / "rtc.yaml")],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "websocket"
    assert out[1].startswith(f"{tmp_path / 'rtc.yaml'}:3: realtime.transport:")
    assert "pip install 'kioskd[webrtc]'" in out[1] and "aiortc==1.16.0" in out[1]
