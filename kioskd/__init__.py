"""kioskd: a push-to-talk voice kiosk daemon for OpenAI's gpt-realtime."""

__version__ = "0.1.0"
