"""Optional TLS: with a certificate and key configured the same port serves https and wss (a real
TLS client that trusts only that certificate); a missing key file is a clear configuration error."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streamcap.outputs import wire
from streamcap.runtime.config import load_config
from streamcap.core.errors import ConfigError
from streamcap.runtime.service import Service

pytestmark = pytest.mark.integration


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _config(cert, key):
    return load_config(None, environ={}, overrides={"server": {"port": 0, "tls_cert": str(cert), "tls_key": str(key)}})


async def test_https_and_wss_on_one_port(tmp_path):
    cert, key = _self_signed(tmp_path)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with Service(_config(cert, key)) as svc:
        assert svc.url("/").startswith("https://") and svc.server.ws_url().startswith("wss://")

        def get() -> dict:
            import urllib.request

            with urllib.request.urlopen(svc.url("/healthz"), context=client_ctx, timeout=10) as r:
                return json.loads(r.read())

        assert (await asyncio.to_thread(get))["status"] == "ok"
        async with websockets.connect(svc.server.ws_url(), ssl=client_ctx, open_timeout=10) as ws:
            assert isinstance(wire.decode_server_message(await asyncio.wait_for(ws.recv(), 10)), wire.HelloMsg)
        # a client that does not trust the certificate is refused by TLS itself
        with pytest.raises(ssl.SSLCertVerificationError):
            async with websockets.connect(svc.server.ws_url(), ssl=ssl.create_default_context(), open_timeout=10):
                pass


async def test_a_missing_key_file_is_a_clear_config_error(tmp_path):
    cert, _ = _self_signed(tmp_path)
    with pytest.raises(ConfigError, match="cannot load TLS certificate"):
        async with Service(_config(cert, tmp_path / "missing.pem")):
            pass
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_config(None, environ={}, overrides={"server": {"tls_cert": str(cert)}})
