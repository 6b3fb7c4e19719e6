"""Optional payload encryption, so that deployment histories on a shared Temporal are unreadable
without tidegate's key, and the codec server through which the Temporal UI still shows them.

    python -m payload_codec key                       # print a fresh key (base64 of 32 random bytes)
    python -m payload_codec serve [--port 8081] [--host 127.0.0.1] [--cors-origin URL ...]

With TIDEGATE_PAYLOAD_KEY set (the base64 of 32 bytes), every payload the worker and the CLI send
to Temporal (workflow and activity inputs and results, signals, queries, the UI's summaries and
details, failure messages) is the AES-256-GCM encryption of the whole original payload, with
metadata `encoding: binary/encrypted` and `encryption-key-id` (TIDEGATE_PAYLOAD_KEY_ID, default
"default"). TIDEGATE_PAYLOAD_OLD_KEYS (`id:base64,...`) are keys that are only decrypted with, so
histories written before a key rotation stay readable. Search attributes are never encrypted.

`serve` implements Temporal's remote codec protocol (POST /encode and /decode, a JSON
`{"payloads": [...]}` body) for the UI's TEMPORAL_CODEC_ENDPOINT; it decrypts for anyone who can
reach it, so it listens on localhost unless told otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import dataclasses
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

KEY_VARIABLE = "TIDEGATE_PAYLOAD_KEY"
KEY_ID_VARIABLE = "TIDEGATE_PAYLOAD_KEY_ID"
OLD_KEYS_VARIABLE = "TIDEGATE_PAYLOAD_OLD_KEYS"
DEFAULT_KEY_ID = "default"
ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's standard nonce; a fresh random one for every payload

log = logging.getLogger("tidegate.payload_codec")


class PayloadKeyError(RuntimeError):
    """A key that is missing, malformed or wrong: the message says which key or variable."""


def parse_key(text: str, source: str) -> bytes:
    """The 32 bytes of a base64 key; `source` (a variable name) is named when it is malformed."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raise PayloadKeyError(f"{source} is not valid base64 (make a key with `python -m payload_codec key`)") from None
    if len(key) != KEY_BYTES:
        raise PayloadKeyError(
            f"{source} must be the base64 of {KEY_BYTES} bytes (AES-256), not of {len(key)} bytes "
            "(make a key with `python -m payload_codec key`)"
        )
    return key


def new_key() -> str:
    return base64.b64encode(AESGCM.generate_key(bit_length=KEY_BYTES * 8)).decode()


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole serialized payload (its metadata too), under the current key;
    decrypts with the current key or an older one, chosen by the payload's key id. The key id is
    the associated data, so a payload whose id was altered does not decrypt."""

    def __init__(self, key: bytes, key_id: str = DEFAULT_KEY_ID, old_keys: Mapping[str, bytes] | None = None) -> None:
        self.key_id = key_id
        self._current = AESGCM(key)
        self._ciphers = {old_id: AESGCM(old_key) for old_id, old_key in (old_keys or {}).items()}
        self._ciphers[key_id] = self._current

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) if payload.metadata.get("encoding") == ENCODING else payload for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._current.encrypt(nonce, payload.SerializeToString(), self.key_id.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: self.key_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadKeyError(
                f"a payload is encrypted with key id {key_id!r}, which is not configured here "
                f"(known: {', '.join(sorted(self._ciphers))}; older keys go in {OLD_KEYS_VARIABLE})"
            )
        try:
            plain = cipher.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise PayloadKeyError(
                f"a payload encrypted with key id {key_id!r} does not decrypt: "
                "the key configured under that id is the wrong one, or the payload was altered"
            ) from None
        return Payload.FromString(plain)


def codec_from_environment(environ: Mapping[str, str] = os.environ) -> EncryptionCodec | None:
    """The codec TIDEGATE_PAYLOAD_KEY asks for, or None when it is unset or empty (no encryption)."""
    if not environ.get(KEY_VARIABLE, "").strip():
        return None
    key_id = environ.get(KEY_ID_VARIABLE, "").strip() or DEFAULT_KEY_ID
    old_keys: dict[str, bytes] = {}
    for entry in filter(None, (part.strip() for part in environ.get(OLD_KEYS_VARIABLE, "").split(","))):
        old_id, separator, old_key = entry.partition(":")
        if not separator or not old_id.strip():
            raise PayloadKeyError(f"{OLD_KEYS_VARIABLE} must be a comma-separated list of id:base64-key")
        old_keys[old_id.strip()] = parse_key(old_key, f"{OLD_KEYS_VARIABLE} (key id {old_id.strip()!r})")
    return EncryptionCodec(parse_key(environ[KEY_VARIABLE], KEY_VARIABLE), key_id, old_keys)


def with_codec(converter: DataConverter, codec: PayloadCodec | None) -> DataConverter:
    """`converter` with `codec` applied to every payload, failures' messages and stack traces
    included (moved into an encoded attribute, which the UI decodes through the codec server);
    `converter` itself when there is no codec."""
    if codec is None:
        return converter
    return dataclasses.replace(
        converter, payload_codec=codec, failure_converter_class=DefaultFailureConverterWithEncodedAttributes
    )


# -- the codec server ----------------------------------------------------------------------------

CORS_HEADERS = {
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, X-Namespace, Authorization",
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Max-Age": "600",
}


def codec_app(codec: PayloadCodec, cors_origins: Collection[str] = ()) -> web.Application:
    """Temporal's remote codec protocol over `codec`: POST /encode and /decode take and return
    `{"payloads": [...]}` (protobuf JSON of Payloads). Browsers on `cors_origins` (the Temporal
    UI's address) may call it; the UI's X-Namespace header is accepted (one codec serves all
    namespaces)."""

    @web.middleware
    async def cors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        response = await handler(request)
        origin = request.headers.get("Origin")
        if origin and origin in cors_origins:
            response.headers.update(CORS_HEADERS)
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    async def preflight(request: web.Request) -> web.Response:
        return web.Response(status=204)

    def endpoint(transform: Callable[[Sequence[Payload]], Awaitable[list[Payload]]]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                payloads = json_format.Parse(await request.read(), Payloads())
            except json_format.ParseError as error:
                return web.Response(status=400, text=f'the body must be {{"payloads": [...]}} in protobuf JSON: {error}')
            try:
                result = Payloads(payloads=await transform(payloads.payloads))
            except PayloadKeyError as error:
                log.warning("%s (namespace %s)", error, request.headers.get("X-Namespace", "?"))
                return web.Response(status=422, text=str(error))
            return web.json_response(text=json_format.MessageToJson(result))

        return handle

    app = web.Application(middlewares=[cors])
    for path, transform in (("/encode", codec.encode), ("/decode", codec.decode)):
        app.router.add_post(path, endpoint(transform))
        app.router.add_route("OPTIONS", path, preflight)
    return app


async def serve(codec: PayloadCodec, host: str, port: int, cors_origins: Collection[str]) -> None:
    runner = web.AppRunner(codec_app(codec, cors_origins))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("codec server at http://%s:%d (CORS origins: %s)", host, port, ", ".join(cors_origins) or "none")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m payload_codec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("key", help="print a fresh key for TIDEGATE_PAYLOAD_KEY")
    server = commands.add_parser("serve", help="serve Temporal's remote codec protocol for the UI")
    server.add_argument("--host", default=os.environ.get("TIDEGATE_CODEC_HOST", "127.0.0.1"))
    server.add_argument("--port", type=int, default=int(os.environ.get("TIDEGATE_CODEC_PORT") or 8081))
    server.add_argument("--cors-origin", action="append",
                        default=[o.strip() for o in os.environ.get("TIDEGATE_CODEC_CORS_ORIGINS", "").split(",") if o.strip()],
                        help="the Temporal UI's origin, e.g. http://localhost:8080 (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "key":
        print(new_key())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        codec = codec_from_environment()
    except PayloadKeyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if codec is None:
        print(f"error: {KEY_VARIABLE} is not set: the codec server needs the key", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(codec, args.host, args.port, args.cors_origin))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
