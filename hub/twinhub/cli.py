"""The ``twinhub`` command (placeholder until the CLI lands)."""


def main() -> None:
    raise SystemExit("twinhub: CLI not built yet")
