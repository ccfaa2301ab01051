"""The kiosk configuration (kiosk.toml) as one typed, validated object.

Every section is a pydantic model with ``extra="forbid"``: an unknown key or
a bad value is a ConfigError naming the key (``mqtt.port: ...``), raised at
start, never half-way through a shift. Command-line flags override the file
(``apply_overrides``). deploy/kiosk.example.toml documents every key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from edge_runtime.scene_config import CropConfig, PresenceConfig, SnapshotConfig
from edge_runtime.update.config import UpdateConfig
from models.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

__all__ = ["KioskConfig", "KioskSection", "SourceConfig", "RoiConfig", "BundleConfig",
           "BackendConfig", "DecisionConfig", "MqttConfig", "MetricsConfig", "WebConfig", "PreviewConfig",
           "LoggingConfig", "load_config", "parse_config", "apply_overrides", "parse_broker_url",
           "parse_web_bind"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KioskSection(_Section):
    id: str = Field("kiosk-01", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                    description="kiosk id; MQTT topics are kiosk/{id}/...")
    camera_id: str = Field("cam0", pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class SourceConfig(_Section):
    uri: str = Field("0", min_length=1, description="/dev/videoN, an index, a GStreamer pipeline "
                     "(contains '!'), rtsp:// or http(s):// URL, a video file or a folder of images")
    realtime: bool = Field(False, description="files: pace at the file's frame rate (keep newest)")
    loop: bool = Field(False, description="files: start again at the end instead of ending the run")
    folder_fps: float = Field(10.0, gt=0, le=1000, description="pacing of a folder of images")
    width: int | None = Field(None, ge=16, le=8192, description="V4L2: requested frame width")
    height: int | None = Field(None, ge=16, le=8192, description="V4L2: requested frame height")
    fps: float | None = Field(None, gt=0, le=1000, description="V4L2: requested frame rate")
    open_timeout_s: float = Field(10.0, gt=0, le=600, description="RTSP/HTTP open timeout")
    read_timeout_s: float = Field(5.0, gt=0, le=600, description="RTSP/HTTP read timeout")
    max_read_failures: int = Field(5, ge=1, le=10000, description="failed reads before reopening")
    reconnect_min_s: float = Field(0.5, gt=0, le=600)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)


class RoiConfig(_Section):
    """Optional outer limit (the counter area) cropped from every frame; all 0 = whole
    frame (the default: the scene model finds the product anywhere in view)."""

    x: int = Field(0, ge=0)
    y: int = Field(0, ge=0)
    w: int = Field(0, ge=0, description="0 = no crop")
    h: int = Field(0, ge=0, description="0 = no crop")

    @property
    def enabled(self) -> bool:
        return self.w > 0 and self.h > 0


class BundleConfig(_Section):
    path: Path = Field(Path("bundle"), description="a bundle folder, or a bundle store (with current/)")
    self_test: bool = Field(True, description="run the bundle's probe images at start; log failures")


class BackendConfig(_Section):
    kind: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    threads: int | None = Field(None, ge=1, le=256, description="ONNX Runtime intra-op threads")
    max_batch: int = Field(4, ge=1, le=64, description="frames encoded together when several wait")


class DecisionConfig(_Section):
    """One event per presentation (presentation.py); window, min_frames and
    aggregate apply only with ``[presence] mode = "off"`` (decision.py)."""

    top_k: int = Field(5, ge=1, le=100)
    threshold: float | None = Field(None, ge=-1.0, le=1.0,
                                    description="cosine below which a frame is 'no match'; "
                                    "default: the bundle's search.threshold")
    lead: float = Field(0.2, ge=0.0, le=1.0,
                        description="the best item's lead over the next, as a fraction of the "
                        "spread of the ten best scores: (s1 - s2) / (s1 - s10)")
    min_views: int = Field(3, ge=1, le=1000,
                           description="steady views aggregated before an early decision")
    max_views: int = Field(30, ge=1, le=10000,
                           description="views encoded without a decision before waiting for motion")
    leave_lead: float = Field(0.2, ge=0.0, le=1.0,
                              description="lead for the decision when the product leaves first")
    stable_shift: float = Field(0.05, gt=0.0, le=1.0,
                                description="box movement per frame (fraction of its size) that is steady")
    steady_corr: float = Field(0.8, ge=-1.0, le=1.0,
                               description="least thumbnail correlation with the previous frame that is steady")
    sharp_ratio: float = Field(0.5, ge=0.0, le=1.0,
                               description="views less sharp than this x the sharpest are not used")
    swap_frames: int = Field(6, ge=1, le=1000, description="moving frames that open a swap check")
    margin: float = Field(0.02, ge=0.0, le=2.0,
                          description="presence off only: top-1 minus top-2 cosine needed per frame")
    swap_corr: float = Field(0.6, ge=-1.0, le=1.0,
                             description="a view less like the decided one than this opens a swap check")
    window: int = Field(8, ge=1, le=1000, description="frames looked at for a decision")
    min_frames: int = Field(5, ge=1, le=1000, description="frames in the window that must agree")
    cooldown_s: float = Field(0.5, ge=0.0, le=86400,
                              description="an item seen less than this long ago gives no new event")
    aggregate: int = Field(3, ge=1, le=64, description="mean of the last k embeddings is searched")

    @model_validator(mode="after")
    def _frames_fit(self) -> DecisionConfig:
        if self.min_frames > self.window:
            raise ValueError("min_frames must not exceed window")
        if self.min_views > self.max_views:
            raise ValueError("min_views must not exceed max_views")
        return self


class MqttConfig(_Section):
    host: str = Field("localhost", min_length=1, max_length=253)
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = Field(None, max_length=128, description="default: kiosk-{kiosk.id}")
    username: str | None = Field(None, description="or env KIOSK_MQTT_USERNAME")
    password: SecretStr | None = Field(None, description="or env KIOSK_MQTT_PASSWORD; never logged")
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    session_expiry_s: int = Field(3600, ge=0, le=2**32 - 1, description="MQTT 5 session expiry")
    reconnect_min_s: float = Field(1.0, ge=0.1, le=30, description="first reconnect delay")
    reconnect_max_s: float = Field(5.0, ge=0.1, le=30,
                                   description="reconnect delay cap (half of each delay is random)")
    outbox: str | None = Field(None, min_length=1, description="QoS 1 messages kept until "
                               "acknowledged: a SQLite file, or \"memory\" (lost at exit); "
                               "default: outbox-{kiosk.id}.sqlite in the state directory "
                               "($STATE_DIRECTORY, else ~/.local/state/kiosk)")
    outbox_sync: Literal["full", "normal"] = Field(
        "full", description="full: each message is fsynced before it is sent (survives a power "
        "cut); normal: survives a crash of the process only")
    queue_max: int = Field(1000, ge=1, le=1_000_000, description="outbox bound in messages (oldest dropped)")
    queue_max_bytes: int = Field(16 << 20, ge=1 << 16, le=1 << 34,
                                 description="outbox bound in payload bytes (oldest dropped)")
    metrics_interval_s: float = Field(10.0, gt=0, le=3600)
    flush_timeout_s: float = Field(5.0, ge=0, le=600, description="time given to the queue at shutdown")

    @model_validator(mode="after")
    def _pairs(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        if self.password is not None and self.username is None:
            raise ValueError("password given without username")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self

    def credentials(self) -> tuple[str | None, str | None]:
        """Username/password from the config, else from the environment."""
        user = self.username or os.environ.get("KIOSK_MQTT_USERNAME") or None
        pw = self.password.get_secret_value() if self.password else os.environ.get("KIOSK_MQTT_PASSWORD")
        return user, (pw if user else None)


class MetricsConfig(_Section):
    prometheus: bool = Field(False, description="serve /metrics in the Prometheus text format")
    host: str = Field("127.0.0.1", description="loopback by default")
    port: int = Field(9108, ge=0, le=65535, description="0 = any free port")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class WebConfig(_Section):
    """The local set-up page (edge_runtime/web.py): off by default, loopback by
    default. A bind on any other address needs a token; writes always do."""

    enabled: bool = Field(False, description="serve the page (also: --web HOST:PORT)")
    host: str = Field("127.0.0.1", min_length=1, description="loopback by default")
    port: int = Field(8080, ge=0, le=65535, description="0 = any free port")
    token_env: str = Field("KIOSK_WEB_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                           description="environment variable holding the page's token")
    stream_fps: float = Field(5.0, gt=0, le=15, description="live view frames per second (cap)")
    events: int = Field(20, ge=1, le=500, description="last events kept for the page")

    def token(self) -> str | None:
        """The token from the environment (never from the file: it is a secret)."""
        return os.environ.get(self.token_env) or None

    def check(self) -> None:
        """A non-loopback bind without a token is refused at start."""
        if self.enabled and self.host not in LOOPBACK_HOSTS and self.token() is None:
            raise ConfigError(f"web.host: {self.host} is not a loopback address: set "
                              f"{self.token_env} (the page's token) or bind 127.0.0.1")


class PreviewConfig(_Section):
    path: Path | None = Field(None, description="write an annotated .mp4 here")
    fps: float = Field(30.0, gt=0, le=240)


class LoggingConfig(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class KioskConfig(_Section):
    kiosk: KioskSection = KioskSection()
    source: SourceConfig = SourceConfig()
    roi: RoiConfig = RoiConfig()
    presence: PresenceConfig = PresenceConfig()
    crop: CropConfig = CropConfig()
    bundle: BundleConfig = BundleConfig()
    backend: BackendConfig = BackendConfig()
    decision: DecisionConfig = DecisionConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    mqtt: MqttConfig = MqttConfig()
    metrics: MetricsConfig = MetricsConfig()
    web: WebConfig = WebConfig()
    update: UpdateConfig = UpdateConfig()
    preview: PreviewConfig = PreviewConfig()
    logging: LoggingConfig = LoggingConfig()
    max_frames: int | None = Field(None, ge=1, description="stop after this many frames (tests)")

    @model_validator(mode="after")
    def _update_store(self) -> KioskConfig:
        if self.update.enabled and self.update.store_dir is None:
            raise ValueError("update.store_dir is required when update.enabled is true")
        return self


def _first_error(exc: ValidationError, where: str) -> ConfigError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__") or "(top level)"
    msg = err.get("msg", "invalid")
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    value = err.get("input")
    shown = "" if isinstance(value, dict) or err.get("type") == "missing" else f" (got {value!r})"
    if "password" in loc:
        shown = ""
    return ConfigError(f"{where}: {loc}: {msg}{shown}")


def parse_config(data: dict[str, Any], where: str = "config") -> KioskConfig:
    try:
        return KioskConfig.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, where) from None


def load_config(path: str | Path | None) -> KioskConfig:
    """Read and validate a kiosk.toml; None gives the defaults."""
    if path is None:
        return KioskConfig()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    return parse_config(data, str(p))


def parse_web_bind(text: str) -> tuple[str, int]:
    """``--web HOST:PORT`` (``[::1]:8080`` for IPv6; ``:8080`` = 127.0.0.1) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--web: expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://host:port`` / ``mqtts://host:port`` -> (host, port, tls)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"--broker: scheme {parts.scheme!r} is not mqtt:// or mqtts://")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--broker: bad port in {url!r}") from None
    if not parts.hostname:
        raise ConfigError(f"--broker: no host in {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    return parts.hostname, port or (8883 if tls else 1883), tls


def apply_overrides(cfg: KioskConfig, overrides: dict[str, Any]) -> KioskConfig:
    """Return a new config with dotted-key overrides (``{"source.uri": "x"}``), validated."""
    data = cfg.model_dump(mode="python")
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    if data["mqtt"].get("password") is not None and cfg.mqtt.password is not None:
        data["mqtt"]["password"] = cfg.mqtt.password.get_secret_value()
    return parse_config(data, "flags")
