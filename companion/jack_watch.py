"""Watching the JACK server from a client of our own (through the libjack that rtmidi
loaded; no other binding needed): `JackWatch` tells when the server goes away and answers
questions about its ports and connections; `PeerLink` keeps one of our ports connected by
name (`--in/--out PORT`) through its peer's restart. companion/ports.py opens the ports."""

from __future__ import annotations

import collections
import os
import sys
import threading

from midi_companion.ports import CLIENT_NAME, load_rtmidi


class JackWatch:
    """Tells when the JACK server goes away (killed, or restarted from a control app).

    rtmidi's own clients are not told (their sends still succeed, into nothing), so this is
    a port-less client of our own through the libjack rtmidi loaded, whose shutdown callback
    sets `gone` (within ~10 ms of the server's death). `JackWatch.start()` returns None where
    libjack cannot be reached that way; the daemon then simply has no watch.

    It also takes libjack's error messages (it prints a paragraph of socket errors when the
    server dies): kept in `messages`, printed to stderr only when `verbose` (--debug)."""

    JACK_NO_START_SERVER = 0x01

    def __init__(self, lib, client, verbose: bool = False):
        self.gone = threading.Event()
        self.messages: collections.deque[str] = collections.deque(maxlen=20)
        self.verbose = verbose
        self._lib, self._client = lib, client
        self._default_error = None  # libjack's error function before ours

    def _message(self, text: bytes | None) -> None:
        """libjack's error function (on whichever thread it complains from)."""
        line = (text or b"").decode(errors="replace")
        self.messages.append(line)
        if self.verbose:
            print(f"libjack: {line}", file=sys.stderr, flush=True)

    @classmethod
    def start(
        cls, client_name: str = f"{CLIENT_NAME}-watch", verbose: bool = False
    ) -> JackWatch | None:
        import ctypes

        load_rtmidi()  # loads its libjack
        path = _loaded_library("libjack")
        if path is None:
            return None
        try:
            lib = ctypes.CDLL(path)
            lib.jack_client_open.restype = ctypes.c_void_p
            lib.jack_client_open.argtypes = [
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.POINTER(ctypes.c_int),
            ]
            lib.jack_on_shutdown.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            lib.jack_client_close.argtypes = [ctypes.c_void_p]
            lib.jack_set_error_function.argtypes = [ctypes.c_void_p]
            lib.jack_port_by_name.restype = ctypes.c_void_p
            lib.jack_port_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.jack_port_get_all_connections.restype = ctypes.POINTER(ctypes.c_char_p)
            lib.jack_port_get_all_connections.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.jack_free.argtypes = [ctypes.c_void_p]
            lib.jack_connect.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        except (OSError, AttributeError):
            return None
        status = ctypes.c_int(0)
        client = lib.jack_client_open(
            client_name.encode(), cls.JACK_NO_START_SERVER, ctypes.byref(status)
        )
        if not client:
            return None
        watch = cls(lib, client, verbose)
        # called on libjack's threads: they only set the flag, or keep the message
        gone = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: watch.gone.set())
        message = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(watch._message)
        _KEEP_ALIVE.extend((gone, message))  # libjack keeps pointers to them
        lib.jack_on_shutdown(client, gone, None)
        try:
            watch._default_error = ctypes.c_void_p.in_dll(lib, "jack_error_callback").value
        except ValueError:
            pass
        lib.jack_set_error_function(message)
        return watch

    def exists(self, port: str) -> bool:
        """Whether a port of this full name ("client:port") is on the server now."""
        return bool(self._client) and bool(self._lib.jack_port_by_name(self._client, port.encode()))

    def connections(self, port: str) -> list[str]:
        """The full names of the ports `port` is connected to ([] when it is not there)."""
        if not self._client:
            return []
        handle = self._lib.jack_port_by_name(self._client, port.encode())
        if not handle:
            return []
        names = self._lib.jack_port_get_all_connections(self._client, handle)
        if not names:
            return []
        out, i = [], 0
        while names[i] is not None:
            out.append(names[i].decode(errors="replace"))
            i += 1
        self._lib.jack_free(names)
        return out

    def connect(self, source: str, destination: str) -> bool:
        """Connect two ports by full name; True when they are connected now."""
        if not self._client:
            return False
        self._lib.jack_connect(self._client, source.encode(), destination.encode())
        return destination in self.connections(source)

    def close(self) -> None:
        """Close the watch's client (left alone once the server is gone: see _leak) and give
        libjack its own error function back."""
        if self._client and not self.gone.is_set():
            self._lib.jack_client_close(self._client)
            if self._default_error:
                self._lib.jack_set_error_function(self._default_error)
        self._client = None


_KEEP_ALIVE: list = []  # ctypes callbacks handed to libjack


class PeerLink:
    """A JACK connection the user asked for by name (`--in PORT` / `--out PORT`), kept: when
    the peer's client goes away (a synth or a keyboard restarted) the daemon plays on, and
    when a port of that name is back, it is connected again. `check()` (every half second
    from the daemon's loop) says what changed."""

    def __init__(self, watch: JackWatch, ours: str, peer: str, outgoing: bool):
        self.watch, self.ours, self.peer, self.outgoing = watch, ours, peer, outgoing
        self.connected = True

    @classmethod
    def find(cls, watch: JackWatch, peer: str, own_port: str, outgoing: bool) -> PeerLink | None:
        """The link between `peer` (a full port name) and our port named `own_port`, found
        among the peer's connections just after opening; None when there is none."""
        ours = [n for n in watch.connections(peer) if n.endswith(":" + own_port)]
        return cls(watch, ours[0], peer, outgoing) if len(ours) == 1 else None

    def check(self) -> str | None:
        """ "lost" when the connection just went, "back" when it was just made again, else
        None."""
        now = self.peer in self.watch.connections(self.ours)
        if not now and self.watch.exists(self.peer):
            src, dst = (self.ours, self.peer) if self.outgoing else (self.peer, self.ours)
            now = self.watch.connect(src, dst)
        changed = now != self.connected
        self.connected = now
        if not changed:
            return None
        return "back" if now else "lost"


def _loaded_library(stem: str) -> str | None:
    """The path of the shared library `stem` this process has loaded (Linux), else None."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.split()[-1]
                if stem in os.path.basename(path) and ".so" in path:
                    return path
    except OSError:
        return None
    return None
