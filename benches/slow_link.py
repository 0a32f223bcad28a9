#!/usr/bin/env python3
"""A TCP proxy on loopback that behaves like a slower link: each direction is limited to RATE megabits per second
and every chunk is delayed by half of RTT milliseconds. For measuring the two-party protocol as if the client and
the server were on two machines (docs/two-parties.md), where `tc netem` is not available.

    python3 benches/slow_link.py --listen 127.0.0.1:0 --to 127.0.0.1:PORT --mbit 100 --rtt-ms 20

Prints `listening on 127.0.0.1:N` once it accepts connections; stops on Ctrl-C / SIGTERM. Loopback only.
Standard library only.
"""
import argparse
import asyncio
import signal
import time

CHUNK = 64 * 1024


class Link:
    """One direction's shared budget: a byte clock at `rate` bytes per second (a token bucket without burst)."""

    def __init__(self, rate):
        self.rate = rate
        self.free_at = 0.0

    def send_time(self, n):
        """When the last of `n` bytes handed over now leaves the link."""
        now = time.monotonic()
        self.free_at = max(self.free_at, now) + n / self.rate
        return self.free_at


async def pump(reader, writer, link, delay):
    # Bytes leave at the link's rate and arrive `delay` later; chunks keep their order.
    queue = asyncio.Queue()

    async def deliver():
        while True:
            item = await queue.get()
            if item is None:
                break
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except OSError:
            pass

    task = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            due = link.send_time(len(data)) + delay
            # Do not read far ahead of the link: hold the reader while the link is busy (a real socket's window).
            ahead = due - delay - time.monotonic()
            if ahead > 0.05:
                await asyncio.sleep(ahead - 0.05)
            await queue.put((due, data))
    except (ConnectionError, OSError):
        pass
    await queue.put(None)
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--to", required=True, help="host:port of the server")
    ap.add_argument("--mbit", type=float, required=True, help="megabits per second, each direction")
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="round-trip time added")
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("slow_link listens on loopback only")
    to_host, to_port = a.to.rsplit(":", 1)
    rate, delay = a.mbit * 1e6 / 8, a.rtt_ms / 2000
    up, down = Link(rate), Link(rate)

    async def handle(client_r, client_w):
        server_r, server_w = await asyncio.open_connection(to_host, int(to_port))
        await asyncio.gather(pump(client_r, server_w, up, delay), pump(server_r, client_w, down, delay))
        for w in (client_w, server_w):
            w.close()

    server = await asyncio.start_server(handle, host, int(port))
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
