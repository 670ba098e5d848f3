"""A JWT-bearer token endpoint (RFC 7523, Google's service-account flavour) whose assertion checks
are Google's own: google-auth's `jwt.decode`, the verifier Google's client libraries use for
Google-signed JWTs. It checks the RS256 signature against the service account's X.509
certificate (what Google publishes for each key), the audience, and iat/exp with 60 s of clock
skew. The audience is Google's documented one (which google-auth's own client always sends) or
this endpoint's URL (a key file's token_uri, which real keys set to Google's). The one rule it adds is Google's documented limit that google-auth does not verify:
`exp - iat` at most one hour.

tokenvault's built-in provider (src/devprovider.rs) is checked against this, not against itself.

    python3 google_jwt_bearer.py CERT_PEM SERVICE_ACCOUNT_EMAIL

prints {"token_url": …} once listening on 127.0.0.1, then serves until killed; every access token
it issues starts with "verified-by-google-auth.".
"""

import json
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from google.auth import jwt

GOOGLE_AUDIENCE = "https://oauth2.googleapis.com/token"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CERT = open(sys.argv[1]).read()
EMAIL = sys.argv[2]


def verdict(form, token_url):
    """The claims of a good assertion, or why it is refused."""
    if form.get("grant_type") != [GRANT_TYPE]:
        return None, "unsupported_grant_type"
    try:
        claims = jwt.decode(
            form.get("assertion", [""])[0],
            certs=CERT,
            audience=[GOOGLE_AUDIENCE, token_url],
            clock_skew_in_seconds=60,
        )
    except Exception as err:  # google-auth raises ValueError and its own error types
        return None, f"invalid_grant: {err}"
    if claims.get("iss") != EMAIL:
        return None, "invalid_grant: not this service account"
    if claims["exp"] - claims["iat"] > 3600:
        return None, "invalid_grant: longer than an hour"
    return claims, None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        form = parse_qs(self.rfile.read(length).decode())
        token_url = f"http://127.0.0.1:{self.server.server_port}/token"
        claims, refused = verdict(form, token_url)
        if refused:
            error, _, description = refused.partition(": ")
            self.answer(400, {"error": error, "error_description": description})
        else:
            self.answer(
                200,
                {
                    "access_token": "verified-by-google-auth." + secrets.token_urlsafe(24),
                    "expires_in": 3599,
                    "token_type": "Bearer",
                },
            )

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(json.dumps({"token_url": f"http://127.0.0.1:{server.server_port}/token"}), flush=True)
server.serve_forever()
