"""Device side: encode camera frames, search the catalogue, publish over MQTT.
Never imports torch; runs on Python 3.10 (JetPack 6)."""

__version__ = "0.1.0"
