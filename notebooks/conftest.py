"""nbval collection: the real-model notebook runs only where the real extra is installed."""

from hybrid.real import available

collect_ignore = [] if available() is None else ["real"]
