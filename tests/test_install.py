"""scripts/install into a temporary root (--prefix), without apt and without the venv: the files it puts there,
their modes, the user and groups, the unit enabled through `systemctl --root`, idempotence, the edited config
kept, --dry-run changing nothing, --uninstall and --purge. The real thing (apt, pip, a Debian root booted under
systemd) is scripts/check-install, which takes a minute or two and is not part of this suite."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, UNIT_S

SCRIPT = REPO / "scripts" / "install"
UNIT = REPO / "systemd" / "kioskd.service"
EXAMPLE = REPO / "config" / "kioskd.yaml"
KEY = "test-install-key-0123456789abcdef"
CRED = "etc/credstore/kioskd.openai_api_key"
UNIT_PATH = "etc/systemd/system/kioskd.service"
WANTS = "etc/systemd/system/multi-user.target.wants/kioskd.service"
ANALYZE = shutil.which("systemd-analyze")

needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "groupadd", "usermod", "userdel", "systemctl")),
    reason="installing into a prefix needs root, the passwd tools (useradd --root) and systemctl",
)


def make_root(base: Path, *, pi: bool = False) -> Path:
    """A minimal root file system: root, a technician, the audio group; a Raspberry Pi OS-like one also has the
    gpio group and its own udev rule for the GPIO devices."""
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\ntech:x:1000:1000::/home/tech:/bin/bash\n")
    groups = "root:x:0:\naudio:x:29:\ntech:x:1000:\n" + ("gpio:x:993:\n" if pi else "")
    (root / "etc/group").write_text(groups)
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\ntech:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\naudio:*::\ntech:!::\n" + ("gpio:!::\n" if pi else ""))
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).chmod(0o640)
    if pi:
        rules = root / "etc/udev/rules.d"
        rules.mkdir(parents=True)
        (rules / "99-com.rules").write_text('SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"\n')
    return root


def install(root: Path | None, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KIOSKD_ROOT"}
    prefix = ["--prefix", str(root)] if root is not None else []
    return subprocess.run([str(SCRIPT), *prefix, "--skip-apt", "--skip-venv", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=60 * UNIT_S)


def snapshot(root: Path) -> dict[str, tuple[int, int, int, float, str]]:
    """Every path under root: mode, owner, group, mtime, and the content's hash (or a link's target)."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = "-> " + os.readlink(path)
        elif path.is_file():
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = "dir"
        state[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime, what)
    return state


def entry(root: Path, table: str, name: str) -> list[str] | None:
    for line in (root / "etc" / table).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def members(root: Path, group: str) -> set[str]:
    fields = entry(root, "group", group)
    assert fields is not None, f"no group {group}"
    return {m for m in fields[3].split(",") if m}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "openai_api_key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def installed(tmp_path: Path, key_file: Path) -> Path:
    root = make_root(tmp_path)
    done = install(root, "--key-file", str(key_file), "--technician", "tech")
    assert done.returncode == 0, done.stdout + done.stderr
    assert KEY not in done.stdout + done.stderr
    return root


# ---------------------------------------------------------------------------------------------------- --dry-run


@needs_root_tools
def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path, key_file: Path) -> None:
    root = make_root(tmp_path)
    before = snapshot(root)
    done = install(root, "--dry-run", "--key-file", str(key_file), "--technician", "tech")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for command in (
        f"+ groupadd --root {root} --system gpio",
        f"+ useradd --root {root} --system --user-group --no-create-home --home-dir /nonexistent "
        "--shell /usr/sbin/nologin",
        f"+ usermod --root {root} --append --groups kioskd tech",
        f"+ install -D -m 0644 {REPO}/systemd/60-kioskd-gpio.rules {root}/etc/udev/rules.d/60-kioskd-gpio.rules",
        f"+ install -m 0644 {EXAMPLE} {root}/etc/kioskd/kioskd.yaml",
        f"+ install -d -m 0700 -o root -g root {root}/etc/credstore",
        f"+ install -D -m 0644 {UNIT} {root}/{UNIT_PATH}",
        f"+ systemctl --root={root} enable kioskd.service",
        f"+ ln -sfn /opt/kioskd/venv/bin/kioskctl {root}/usr/local/bin/kioskctl",
    ):
        assert command in out, f"missing step {command!r} in:\n{out}"
    assert "would: install the key from" in out and KEY not in out + done.stderr
    assert out.splitlines()[-1].startswith("kioskd install: dry run:") and "nothing was changed" in out
    assert "change:" not in out  # every step is a "would:"
    assert snapshot(root) == before


def test_dry_run_needs_no_root_and_changes_nothing_on_this_machine(tmp_path: Path) -> None:
    """Without --prefix: what it would do to the running system, printed; nothing done (not even as root)."""
    watched = [Path(p) for p in ("/opt/kioskd", "/etc/kioskd", "/etc/credstore", "/etc/systemd/system/kioskd.service",
                                 "/usr/local/bin/kioskctl")]
    before = {p: p.exists() for p in watched}
    done = install(None, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout.splitlines()[-1]
    assert {p: p.exists() for p in watched} == before


def test_pi_flag_adds_lgpio(tmp_path: Path) -> None:
    done = install(None, "--dry-run", "--pi")
    assert done.returncode == 0, done.stderr
    assert "python3-lgpio" in done.stdout


def test_webrtc_flag_installs_the_extra() -> None:
    """A dry run on this machine (nothing changed): the package goes in with the webrtc extra only when asked."""
    def dry(*args: str) -> str:
        done = subprocess.run([str(SCRIPT), "--dry-run", "--skip-apt", *args], capture_output=True, text=True,
                              timeout=60 * UNIT_S)
        assert done.returncode == 0, done.stderr
        return done.stdout

    plain, rtc = dry(), dry("--webrtc")
    assert "-m pip install" in plain and "[webrtc" not in plain.replace("\\", "")
    assert "/opt/kioskd/.build[webrtc]" in rtc.replace("\\", "")


@pytest.mark.parametrize("args", [["--purge"], ["--bogus"], ["--key-file", "x", "--key-stdin"],
                                  ["--uninstall", "--key-file", "x"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    done = install(None, *args)
    assert done.returncode == 2, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------------- install


@needs_root_tools
def test_install_into_a_prefix(installed: Path) -> None:
    root = installed
    user = entry(root, "passwd", "kioskd")
    assert user is not None and user[5:] == ["/nonexistent", "/usr/sbin/nologin"]
    assert int(user[2]) < 1000  # a system user
    assert "kioskd" in members(root, "audio") and "kioskd" in members(root, "gpio")
    assert members(root, "kioskd") == {"tech"}  # the technician may use kioskctl
    assert (root / "etc/udev/rules.d/60-kioskd-gpio.rules").is_file()  # plain Debian: no gpio rule of its own

    cred = (root / CRED).stat()
    assert (stat.S_IMODE(cred.st_mode), cred.st_uid, cred.st_gid) == (0o600, 0, 0)
    assert (root / CRED).read_text() == KEY + "\n"
    assert stat.S_IMODE((root / "etc/credstore").stat().st_mode) == 0o700

    config = root / "etc/kioskd/kioskd.yaml"
    assert config.read_bytes() == EXAMPLE.read_bytes() and stat.S_IMODE(config.stat().st_mode) == 0o644

    assert (root / UNIT_PATH).read_bytes() == UNIT.read_bytes()
    assert os.readlink(root / WANTS) == "/etc/systemd/system/kioskd.service"
    enabled = subprocess.run(["systemctl", f"--root={root}", "is-enabled", "kioskd.service"], capture_output=True,
                             text=True, timeout=30 * UNIT_S)
    assert enabled.stdout.strip() == "enabled"

    assert os.readlink(root / "usr/local/bin/kioskctl") == "/opt/kioskd/venv/bin/kioskctl"
    assert os.readlink(root / "usr/local/bin/kioskd") == "/opt/kioskd/venv/bin/kioskd"
    assert os.access(root / "opt/kioskd/scripts/install", os.X_OK)  # uninstalls after the checkout is gone
    assert (root / "opt/kioskd/README.md").is_file()  # the unit's Documentation=


def test_one_credential_path_everywhere() -> None:
    """The unit, the docs and the example configs name the same credential file as the script."""
    path = "/etc/credstore/kioskd.openai_api_key"
    assert f"LoadCredential=openai_api_key:{path}" in UNIT.read_text()
    assert "CRED=$CREDSTORE/kioskd.openai_api_key" in SCRIPT.read_text()
    assert path in (REPO / "docs" / "install.md").read_text()
    for config in ("kioskd.yaml", "azure.yaml"):
        text = (REPO / "config" / config).read_text()
        assert path in text, config
        assert "/etc/kioskd/openai_api_key" not in text


@needs_root_tools
def test_second_run_changes_nothing(installed: Path, key_file: Path) -> None:
    before = snapshot(installed)
    done = install(installed, "--key-file", str(key_file), "--technician", "tech")
    assert done.returncode == 0, done.stderr
    assert "change:" not in done.stdout
    assert done.stdout.splitlines()[-1] == "kioskd install: nothing to do (already installed)"
    assert snapshot(installed) == before


@needs_root_tools
def test_an_edited_config_survives_and_a_new_key_replaces_the_old(installed: Path, tmp_path: Path) -> None:
    config = installed / "etc/kioskd/kioskd.yaml"
    edited = config.read_text() + "# edited on site\n"
    config.write_text(edited)
    new_key = tmp_path / "new_key"
    new_key.write_text("  test-a-new-key-9876543210  \n\n")
    done = install(installed, "--key-file", str(new_key))
    assert done.returncode == 0, done.stderr
    assert config.read_text() == edited
    assert (installed / "etc/kioskd/kioskd.yaml.example").read_bytes() == EXAMPLE.read_bytes()
    assert (installed / CRED).read_text() == "test-a-new-key-9876543210\n"  # surrounding whitespace dropped
    assert stat.S_IMODE((installed / CRED).stat().st_mode) == 0o600
    assert "sk-a-new-key" not in done.stdout + done.stderr
    again = install(installed)  # no key given: the installed one stays
    assert again.stdout.splitlines()[-1] == "kioskd install: nothing to do (already installed)"
    assert config.read_text() == edited and (installed / CRED).read_text() == "test-a-new-key-9876543210\n"


@needs_root_tools
def test_key_from_stdin(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    done = install(root, "--key-stdin", stdin=KEY + "\n")
    assert done.returncode == 0, done.stderr
    assert (root / CRED).read_text() == KEY + "\n" and KEY not in done.stdout + done.stderr


@needs_root_tools
@pytest.mark.parametrize("content, why", [("", "empty"), ("sk-two words\n", "whitespace"),
                                          ("sk-one\nsk-two\n", "whitespace")])
def test_a_bad_key_is_refused_without_showing_it(tmp_path: Path, content: str, why: str) -> None:
    root = make_root(tmp_path)
    before = snapshot(root)
    done = install(root, "--key-stdin", stdin=content)
    assert done.returncode == 1 and why in done.stderr
    assert snapshot(root) == before  # checked before anything changes
    for word in content.split():
        assert word not in done.stdout + done.stderr


@needs_root_tools
def test_no_key_warns_and_a_loose_key_file_is_made_root_only(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    done = install(root)
    assert done.returncode == 0 and "no API key installed at /etc/credstore/kioskd.openai_api_key" in done.stderr
    (root / CRED).parent.mkdir(mode=0o755)
    (root / CRED).write_text(KEY + "\n")
    (root / CRED).chmod(0o644)
    done = install(root)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((root / CRED).stat().st_mode) == 0o600
    assert stat.S_IMODE((root / CRED).parent.stat().st_mode) == 0o700


@needs_root_tools
def test_a_raspberry_pi_os_root_keeps_its_gpio_group_and_rule(tmp_path: Path) -> None:
    root = make_root(tmp_path, pi=True)
    done = install(root, "--dry-run")
    assert "groupadd" not in done.stdout and "60-kioskd-gpio.rules" not in done.stdout
    done = install(root)
    assert done.returncode == 0, done.stderr
    assert entry(root, "group", "gpio") == ["gpio", "x", "993", "kioskd"]
    assert not (root / "etc/udev/rules.d/60-kioskd-gpio.rules").exists()


@needs_root_tools
@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")
def test_the_installed_unit_verifies(installed: Path, tmp_path: Path) -> None:
    """systemd-analyze verify on the unit as installed (ExecStart pointed at a stub: --skip-venv made no venv)."""
    stub = tmp_path / "kioskd"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / "kioskd.service"
    copy.write_text((installed / UNIT_PATH).read_text().replace("/opt/kioskd/venv/bin/kioskd", str(stub)))
    assert ANALYZE is not None
    done = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60 * UNIT_S)
    assert done.returncode == 0, done.stderr
    assert [line for line in (done.stdout + done.stderr).splitlines() if "kioskd.service" in line] == []


# ---------------------------------------------------------------------------------------------------- uninstall


@needs_root_tools
def test_uninstall_keeps_the_config_and_the_key(installed: Path) -> None:
    (installed / "var/lib/kioskd").mkdir(parents=True)  # what systemd's StateDirectory= makes at the first start
    (installed / "var/lib/kioskd/spend.json").write_text("{}")
    dry = install(installed, "--uninstall", "--dry-run")
    assert f"+ userdel --root {installed} kioskd" in dry.stdout and (installed / "opt/kioskd").exists()
    done = install(installed, "--uninstall")
    assert done.returncode == 0, done.stderr
    for gone in (UNIT_PATH, WANTS, "opt/kioskd", "usr/local/bin/kioskctl", "usr/local/bin/kioskd",
                 "etc/udev/rules.d/60-kioskd-gpio.rules"):
        assert not (installed / gone).exists() and not (installed / gone).is_symlink(), gone
    assert entry(installed, "passwd", "kioskd") is None and entry(installed, "group", "kioskd") is None
    assert "kioskd" not in members(installed, "audio")
    for kept in ("etc/kioskd/kioskd.yaml", CRED, "var/lib/kioskd/spend.json"):
        assert (installed / kept).exists(), kept
    again = install(installed, "--uninstall")
    assert again.stdout.splitlines()[-1] == "kioskd install: nothing to do (already uninstalled)"

    purge = install(installed, "--uninstall", "--purge")
    assert purge.returncode == 0, purge.stderr
    for gone in ("etc/kioskd", CRED, "etc/credstore", "var/lib/kioskd"):
        assert not (installed / gone).exists(), gone
