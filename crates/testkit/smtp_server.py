#!/usr/bin/env python3
"""A real SMTP submission server for foldertrack's integration tests (started by testkit::smtp).

aiosmtpd with STARTTLS (required before AUTH) and AUTH PLAIN/LOGIN, handing every accepted
message over LMTP to the test's Dovecot, so a message sent by foldertrack really lands in the
recipient's mailbox. Knobs make it misbehave on purpose:

  --reject TEXT     RCPT TO addresses containing TEXT get 550 5.1.1 (permanent failure)
  --tempfail N      the first N DATA commands get 451 4.3.0 (transient failure)
  --log FILE        one line per accepted message: its Message-ID (to count sends exactly)
  --oauth-tokens T  also offer AUTH XOAUTH2, accepting these comma-separated access tokens
  --down            bind the port but do not listen (connections are refused) until SIGUSR1:
                    a server that is down, on a port nobody else can take meanwhile

It binds --port (default 0: a free port the kernel picks) itself and prints `port N` on stdout,
then `ready` once it serves; the launcher reads both, so no port is guessed.

Usage: smtp_server.py --lmtp /path/to/dovecot/run/lmtp --cert C --key K \
                      --users alice:pass,carol:pass [--port P] [--down] [--log F] [--reject T]
                      [--tempfail N]
"""

import argparse
import base64
import asyncio
import email.parser
import signal
import smtplib
import socket
import ssl
import sys

from aiosmtpd.controller import Controller


class BoundController(Controller):
    """Serves on a socket bound beforehand (aiosmtpd would bind host:port itself)."""

    def __init__(self, sock, *args, **kwargs):
        self.sock = sock
        super().__init__(*args, port=sock.getsockname()[1], **kwargs)

    def _create_server(self):
        return self.loop.create_server(
            self._factory_invoker, sock=self.sock, ssl=self.ssl_context
        )
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler:
    def __init__(self, args):
        self.args = args
        self.tempfail_left = args.tempfail
        self.tokens = set(filter(None, (args.oauth_tokens or "").split(",")))

    async def auth_XOAUTH2(self, server, args):
        # RFC-less but documented by Google/Microsoft: base64("user=U\x01auth=Bearer T\x01\x01")
        if not self.tokens or len(args) < 2:
            return AuthResult(success=False, handled=False)
        try:
            fields = dict(
                f.split("=", 1)
                for f in base64.b64decode(args[1]).decode().split("\x01")
                if "=" in f
            )
        except Exception:  # noqa: BLE001
            return AuthResult(success=False, handled=False)
        token = fields.get("auth", "").removeprefix("Bearer ")
        ok = token in self.tokens and fields.get("user") in self.args.users_map
        return AuthResult(success=ok, handled=False, auth_data=fields.get("user"))

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.args.reject and self.args.reject in address:
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.tempfail_left > 0:
            self.tempfail_left -= 1
            return "451 4.3.0 temporary failure, try again later"
        data = envelope.original_content or envelope.content
        # One LMTP transaction per recipient: LMTP answers DATA once per recipient, which
        # smtplib.LMTP.sendmail does not read.
        for rcpt in envelope.rcpt_tos:
            try:
                with smtplib.LMTP(self.args.lmtp) as lmtp:
                    lmtp.sendmail(envelope.mail_from, [rcpt], data)
            except smtplib.SMTPRecipientsRefused as e:
                return "550 5.1.1 LMTP refused %r" % (e.recipients,)
            except Exception as e:  # noqa: BLE001 - report any hand-off failure as transient
                return "451 4.3.0 LMTP hand-off failed: %s" % e
        msg = email.parser.BytesHeaderParser().parsebytes(data)
        if self.args.log:
            with open(self.args.log, "a") as f:
                f.write("%s\n" % (msg.get("Message-ID", "").strip(),))
        return "250 2.0.0 OK delivered to %d recipient(s)" % len(envelope.rcpt_tos)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--down", action="store_true")
    p.add_argument("--lmtp", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--users", required=True)
    p.add_argument("--log")
    p.add_argument("--reject")
    p.add_argument("--tempfail", type=int, default=0)
    p.add_argument("--oauth-tokens")
    p.add_argument("--implicit-tls", action="store_true")
    args = p.parse_args()
    users = dict(u.split(":", 1) for u in args.users.split(","))
    args.users_map = users

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and users.get(auth_data.login.decode()) == auth_data.password.decode()
        )
        return AuthResult(success=ok, handled=False)

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    # Implicit TLS (port 465 style): the whole connection is TLS from the first byte.
    tls = (
        dict(ssl_context=ctx, auth_require_tls=False)
        if args.implicit_tls
        else dict(tls_context=ctx, require_starttls=True, auth_require_tls=True)
    )
    # Bound, not listening: a connection is refused (not queued) until the server is up.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", args.port))
    if args.down:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print("port %d" % sock.getsockname()[1], flush=True)
    if args.down:
        signal.sigwait({signal.SIGUSR1})
    controller = BoundController(
        sock,
        Handler(args),
        hostname="127.0.0.1",
        authenticator=authenticator,
        auth_required=True,
        server_hostname="smtp.test",
        **tls,
    )
    controller.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
