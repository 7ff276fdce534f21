"""An SMTP server speaking TLS, for the escalation email tests: aiosmtpd over STARTTLS or over TLS
from the start (SMTPS), with a certificate from the test's private CA, accepting mail only after a
login, and delivering what it accepts into a Maildir.

Run by tests/src/smtp.rs with the interpreter aiosmtpd is installed for:
    tls_server.py --mode starttls|smtps --port PORT --cert CERT.pem --key KEY.pem
                  --user USER --password PASSWORD --maildir DIR
It serves until SIGTERM or SIGINT.
"""

import argparse
import asyncio
import logging
import signal
import ssl
import warnings

from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["starttls", "smtps"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--maildir", required=True)
    return parser.parse_args()


async def serve(args):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    handler = Mailbox(args.maildir)

    def authenticator(server, session, envelope, mechanism, auth_data):
        accepted = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == args.user.encode()
            and auth_data.password == args.password.encode()
        )
        # handled=False: aiosmtpd then answers a refusal with 535 itself (with its default,
        # handled=True, it answers nothing and the client waits).
        return AuthResult(success=accepted, handled=False)

    if args.mode == "smtps":
        # The whole connection is TLS, which aiosmtpd's auth_require_tls does not see (it knows
        # only STARTTLS): turned off here, with the warning that a login could go in the clear.
        warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
        logging.getLogger("mail.log").setLevel(logging.ERROR)

    def session():
        options = dict(
            hostname="localhost",
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=args.mode == "starttls",
        )
        if args.mode == "starttls":
            options.update(tls_context=context, require_starttls=True)
        return SMTP(handler, **options)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        session,
        host="127.0.0.1",
        port=args.port,
        ssl=context if args.mode == "smtps" else None,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(serve(arguments()))
