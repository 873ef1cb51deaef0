"""A stop request (Ctrl-C, SIGTERM, SLURM's warning signal) that the training loop honours between steps."""
from __future__ import annotations

import signal
import time


class StopFlag:
    """Set by SIGINT, SIGTERM or SIGUSR1; the loop finishes its step, saves and exits."""
    # One stop request can arrive more than once: a Ctrl-C reaches every process in the terminal's
    # process group and a launcher may forward it again (torchrun does, then waits 30 s before SIGKILL;
    # SLURM signals every task). Repeats this soon are the same request, not a second Ctrl-C.
    # SIGUSR1 is what scripts/slurm_train.sh asks SLURM to send shortly before the time limit.
    DUPLICATE_WINDOW_S = 3.0
    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))

    def __init__(self):
        self.signal, self.first_at = None, 0.0
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signal is not None:
            if time.monotonic() - self.first_at < self.DUPLICATE_WINDOW_S:
                return
            raise KeyboardInterrupt  # a second Ctrl-C, later, means now
        self.signal, self.first_at = signal.Signals(signum).name, time.monotonic()
        print(f"\n{self.signal} received: finishing this step, then saving and exiting (again to abort)", flush=True)
