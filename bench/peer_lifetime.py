"""Ties a PyTorch peer's life to the Node benchmark that started it.

On Linux the kernel sends the peer SIGTERM when its parent exits, killed or not (prctl
PR_SET_PDEATHSIG): a benchmark stopped with `kill` must not leave a peer computing for
minutes, loading the machine that the next measurement runs on. Elsewhere this does nothing.
"""
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent():
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    # The parent may have gone before prctl took effect: then this process was re-parented.
    if os.getppid() != parent:
        sys.exit(1)
