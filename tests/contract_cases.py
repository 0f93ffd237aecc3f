"""One table of the contract's edge cases, run against the broker's rules and the SDK's.

The broker may not import the SDK, so each keeps its own parser; these cases keep them equal.
"""

#: (text, milliseconds or None when refused)
DURATIONS = [
    ("7d", 604_800_000), ("12h", 43_200_000), ("30m", 1_800_000), ("45s", 45_000),
    ("500ms", 500), ("1w", 604_800_000), (" 2h ", 7_200_000), ("2H", 7_200_000),
    ("0", 0), ("none", 0), ("off", 0), ("forever", 0),
    ("500", None), ("1.5h", None), ("-1s", None), ("7 days", None), ("", None), ("h", None),
]

#: (name, accepted by the broker)
TOPICS = [
    ("app", True), ("app-logs.v2:eu_1", True), ("A", True), ("9lives", True),
    ("x" * 200, True), ("x" * 201, False), ("", False), ("-app", False), (".app", False),
    ("app logs", False), ("app\n", False), ("\napp", False), ("app/x", False),
    ("appé", False), ("app\x00", False),
]
