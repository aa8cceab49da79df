"""uvicorn's h11 protocol with a deadline for the request line and headers (slow-header clients).

uvicorn times out an idle keep-alive connection, but not one that trickles its headers: a client
sending a header line every few seconds holds its connection forever. Here every connection must send
a complete request head within `read_timeout` seconds of connecting (or of its previous response);
past it, 408 and the connection is closed. The body has its own deadline (serve/guard.py). The timeout
comes from the app's lifespan state, so every worker process reads the same policy.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

READ_TIMEOUT_STATE = "sentune.read_timeout"  # key of the lifespan state the app yields
DEFAULT_READ_TIMEOUT = 10.0
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HeadDeadlineH11(H11Protocol):
    """Closes a connection whose request head is not complete within the read timeout."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        if self.transport.is_closing():
            return
        seconds = float(self.app_state.get(READ_TIMEOUT_STATE, DEFAULT_READ_TIMEOUT))
        self._head_timer = self.loop.call_later(seconds, self._head_late, self.cycle)

    def _head_late(self, cycle) -> None:
        """No request began since the timer started (a new one makes a new cycle): its head is late."""
        waiting = self.cycle is cycle and (cycle is None or cycle.response_complete)
        if not waiting or self.transport.is_closing():
            return
        self.transport.write(TIMED_OUT)
        self.transport.close()
