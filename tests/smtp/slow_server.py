"""A slow SMTP server, for the escalation loop's tests: aiosmtpd taking DELAY seconds over each
message before accepting it (a hospital's mail server under load), delivering into a Maildir.

Run by tests/src/smtp.rs with the interpreter aiosmtpd is installed for:
    slow_server.py --port PORT --delay SECONDS --maildir DIR
It serves until SIGTERM or SIGINT.
"""

import argparse
import asyncio
import signal

from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True)
    parser.add_argument("--maildir", required=True)
    return parser.parse_args()


class SlowMailbox(Mailbox):
    """Delivers into the Maildir after waiting `delay` seconds (other sessions go on meanwhile)."""

    def __init__(self, maildir, delay):
        super().__init__(maildir)
        self.delay = delay

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


async def serve(args):
    handler = SlowMailbox(args.maildir, args.delay)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="localhost"), host="127.0.0.1", port=args.port
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(serve(arguments()))
