"""A clock the test moves by hand, for code that takes its "now" as a parameter (the limiter)."""

START = 1_000_000.0


class Clock:
    """Seconds, starting at :data:`START`, that move only when the test says."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
