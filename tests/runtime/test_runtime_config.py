"""kiosk.toml: one typed object; unknown keys and bad values name the key;
flags override the file; deploy/kiosk.example.toml documents every key."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge_runtime.cli import main as cli_main
from edge_runtime.config import (
    KioskConfig,
    apply_overrides,
    load_config,
    parse_broker_url,
    parse_config,
)
from models.errors import ConfigError

if sys.version_info >= (3, 11):
    pass
else:
    pass

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "kiosk.example.toml"


def _fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _fields(ann, f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


def test_example_config_is_valid_and_documents_every_key():
    cfg = load_config(EXAMPLE)
    assert cfg.kiosk.id == "kiosk-01"
    documented, section = set(), ""
    for line in EXAMPLE.read_text().splitlines():
        m = re.match(r"^\[(\w+)\]", line)
        if m:
            section = m.group(1) + "."
            continue
        m = re.match(r"^#?\s?(\w+) = ", line)
        if m:
            documented.add(f"{section}{m.group(1)}")
    missing = _fields(KioskConfig) - documented
    assert not missing, f"undocumented keys in {EXAMPLE.name}: {sorted(missing)}"


@pytest.mark.parametrize("toml, key", [
    ('[mqtt]\ncolour = "red"\n', "mqtt.colour: unknown key"),
    ('[mqtt]\nport = 70000\n', "mqtt.port"),
    ('[mqtt]\nprotocol = "4"\n', "mqtt.protocol"),
    ('[decision]\nwindow = 3\nmin_frames = 5\n', "decision"),
    ('[kiosk]\nid = "a/b"\n', "kiosk.id"),
    ('[sorce]\nuri = "0"\n', "sorce: unknown key"),
    ('[backend]\nkind = "cuda"\n', "backend.kind"),
    ('[update]\nenabled = true\n', "store_dir"),
    ('[update]\nenabled = true\nstore_dir = "/s"\n', "update.mirrors is required"),
    ('[update]\nmirrors = ["ftp://h/x/"]\n', "update.mirrors"),
    ('[update]\nmirrors = ["https://u@h/x/"]\n', "user name"),
    ('[mqtt]\nreconnect_max_s = 60\n', "mqtt.reconnect_max_s"),
    ('[mqtt]\noutbox_sync = "sometimes"\n', "mqtt.outbox_sync"),
    ('[mqtt]\ncert_file = "/c.pem"\n', "cert_file and key_file"),
    ('[presence]\nmode = "maybe"\n', "presence.mode"),
    ('[presence]\nscene_change = 0\n', "presence.scene_change"),
    ('[crop]\nmargins = [2.0]\n', "crop: Value error, each margin"),
    ('[crop]\nmargins = []\n', "crop.margins"),
    ('[decision]\nmin_views = 40\nmax_views = 30\n', "decision"),
    ('[snapshot]\nmax_bytes = 10\n', "snapshot.max_bytes"),
])
def test_bad_config_names_the_key(tmp_path, toml, key):
    p = tmp_path / "kiosk.toml"
    p.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert key in str(exc.value)
    assert str(p) in str(exc.value)


def test_not_toml_and_missing_file(tmp_path):
    p = tmp_path / "k.toml"
    p.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_password_is_never_shown(tmp_path, monkeypatch):
    cfg = parse_config({"mqtt": {"username": "u", "password": "hunter2"}})
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())
    assert cfg.mqtt.credentials() == ("u", "hunter2")
    with pytest.raises(ConfigError) as exc:
        parse_config({"mqtt": {"username": "u", "password": ["hunter2"]}})
    assert "hunter2" not in str(exc.value)
    monkeypatch.setenv("KIOSK_MQTT_USERNAME", "envuser")
    monkeypatch.setenv("KIOSK_MQTT_PASSWORD", "envpw")
    assert KioskConfig().mqtt.credentials() == ("envuser", "envpw")
    # overriding other keys keeps the password
    again = apply_overrides(cfg, {"mqtt.port": 1999})
    assert again.mqtt.credentials() == ("u", "hunter2")


@pytest.mark.parametrize("url, expected", [
    ("mqtt://broker:1884", ("broker", 1884, False)),
    ("mqtt://broker", ("broker", 1883, False)),
    ("mqtts://broker", ("broker", 8883, True)),
    ("broker:1999", ("broker", 1999, False)),
])
def test_parse_broker_url(url, expected):
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize("url", ["http://broker:1883", "mqtt://:1883", "mqtt://broker:port"])
def test_parse_broker_url_errors(url):
    with pytest.raises(ConfigError, match="--broker"):
        parse_broker_url(url)


def test_validate_config_cli(tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    p = tmp_path / "kiosk.toml"
    p.write_text(f'[kiosk]\nid = "k7"\n[source]\nuri = "{clip}"\n[bundle]\npath = "{tmp_path}"\n')
    assert cli_main(["run", "--config", str(p), "--validate-config"]) == 0
    assert "config ok: kiosk k7" in capsys.readouterr().out
    # flags override the file
    assert cli_main(["run", "--config", str(p), "--validate-config", "--kiosk-id", "k8",
                     "--broker", "mqtt://example.org:1999"]) == 0
    assert "kiosk k8" in (out := capsys.readouterr().out) and "example.org:1999" in out
    # one line, exit 2, naming the key
    p.write_text('[mqtt]\nport = "x"\n')
    assert cli_main(["run", "--config", str(p), "--validate-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mqtt.port" in err and "Traceback" not in err
    p.write_text(f'[source]\nuri = "{tmp_path / "missing.mp4"}"\n')
    assert cli_main(["run", "--config", str(p), "--validate-config"]) == 2
    assert "source.uri" in capsys.readouterr().err
