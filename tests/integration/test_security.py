"""Security against the real server: TLS, mutual TLS, bearer tokens, what the logs never hold, what the
model store never loads, and where no pickle may hide.

Certificates are made here with ``cryptography``: a CA, a server certificate for 127.0.0.1/localhost, a
client certificate from the same CA and one from a CA the server does not trust.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import datetime as dt
import hmac
import ipaddress
import os
import secrets
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import onnx
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from onnx import TensorProto

from hark.config import Settings
from hark.core.model_store import MODEL_FILE, ModelStore, VerificationError, load_version, sha256_file
from hark.security import MIN_TOKEN_CHARS, TokenVerifier, bearer_token, parse_tokens
from hark.server import StartupError, start_server
from hark.v1 import hark_pb2, hark_pb2_grpc
from loadtest.soak import audio, config
from tests.fixtures_models import noise, publish_tiny
from tests.integration.conftest import TEST_SETTINGS, Hark, StartHark
from tests.integration.test_cli import HARK, Result, write_wav
from tests.integration.test_server import StreamResult, audio_requests

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
Metadata = tuple[tuple[str, str], ...]
TOKEN = "tok-" + secrets.token_hex(16)
OTHER_TOKEN = "tok-" + secrets.token_hex(16)


# Certificates ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Pem(cert_path, key_path)


def _ca(directory: Path, stem: str) -> tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(_name(stem))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return _write(directory, stem, cert, key), cert, key


def _leaf(
    directory: Path, stem: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], *, server: bool
) -> Pem:
    ca_cert, ca_key = issuer
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return _write(directory, stem, builder.sign(ca_key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Pem
    client: Pem
    rogue_ca: Path
    rogue_client: Pem  # signed by a CA the server does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = _ca(d, "hark-test-ca")
    rogue, rogue_cert, rogue_key = _ca(d, "rogue-ca")
    return Pki(
        ca=ca.cert,
        server=_leaf(d, "server", (ca_cert, ca_key), server=True),
        client=_leaf(d, "client", (ca_cert, ca_key), server=False),
        rogue_ca=rogue.cert,
        rogue_client=_leaf(d, "rogue-client", (rogue_cert, rogue_key), server=False),
    )


def _credentials(ca: Path | None, client: Pem | None) -> grpc.ChannelCredentials | None:
    if ca is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )


def _stream_code(address: str, credentials: grpc.ChannelCredentials | None, metadata: Metadata) -> grpc.StatusCode:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        stub = hark_pb2_grpc.ClassifierStub(channel)  # type: ignore[no-untyped-call]
        try:
            for _ in stub.StreamClassify(iter([config(), *audio_requests(noise(1.2))]), metadata=metadata, timeout=10):
                pass
        except grpc.RpcError as e:
            code: grpc.StatusCode = e.code()
            return code
    return grpc.StatusCode.OK


async def stream_code(
    address: str, metadata: Metadata = (), *, ca: Path | None = None, client: Pem | None = None
) -> grpc.StatusCode:
    """Status of one short stream of real audio (TLS when ``ca`` is given); a failed handshake is UNAVAILABLE.

    A blocking client on a worker thread: when the server refuses a call while audio is still in flight,
    grpc.aio clients can report INTERNAL instead of the server's status (grpc/grpc#36066).
    """
    return await asyncio.to_thread(_stream_code, address, _credentials(ca, client), metadata)


async def run_stream(
    stub: hark_pb2_grpc.ClassifierStub,
    requests: list[hark_pb2.StreamRequest],
    metadata: tuple[tuple[str, str], ...] = (),
) -> StreamResult:
    call = stub.StreamClassify(iter(requests), metadata=metadata)
    responses = []
    try:
        async for response in call:
            responses.append(response)
    except grpc.aio.AioRpcError:
        pass
    return StreamResult(responses, await call.code(), await call.details() or "")


# TLS and mutual TLS ---------------------------------------------------------------------------------------


async def test_tls_serves_only_tls_clients_that_trust_its_ca(
    start_hark: StartHark, tiny_model_store: Path, pki: Pki
) -> None:
    h = await start_hark(tiny_model_store, tls_cert_file=pki.server.cert, tls_key_file=pki.server.key)
    assert await stream_code(h.address, ca=pki.ca) == grpc.StatusCode.OK
    assert await stream_code(h.address) == grpc.StatusCode.UNAVAILABLE  # plaintext
    assert await stream_code(h.address, ca=pki.rogue_ca) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(
    start_hark: StartHark, tiny_model_store: Path, pki: Pki
) -> None:
    h = await start_hark(
        tiny_model_store,
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        tls_client_ca_file=pki.ca,
    )
    assert await stream_code(h.address, ca=pki.ca, client=pki.client) == grpc.StatusCode.OK
    assert await stream_code(h.address, ca=pki.ca) == grpc.StatusCode.UNAVAILABLE  # no client certificate
    assert await stream_code(h.address, ca=pki.ca, client=pki.rogue_client) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tls_cert_file": "server.crt"}, "set both tls_cert_file and tls_key_file"),
        ({"tls_client_ca_file": "ca.crt"}, "mutual TLS is TLS first"),
        ({"tls_cert_file": "missing.crt", "tls_key_file": "server.key"}, "cannot read the TLS certificate"),
        ({"auth_tokens_file": "missing-tokens"}, "cannot read the token file"),
        ({"auth_tokens_file": "empty-tokens"}, "holds no token"),
        ({"auth_tokens": "short"}, f"shorter than {MIN_TOKEN_CHARS} characters"),
    ],
)
async def test_security_settings_that_cannot_work_stop_the_start(
    tiny_model_store: Path, pki: Pki, tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    (tmp_path / "empty-tokens").write_text("# rotated out\n\n")
    files = {"server.crt": pki.server.cert, "server.key": pki.server.key, "ca.crt": pki.ca}
    resolved = {k: (files.get(v) or tmp_path / v) if k.endswith("_file") else v for k, v in settings.items()}
    with pytest.raises(StartupError, match=message):
        await start_server(Settings(**{**TEST_SETTINGS, "model_store": tiny_model_store, **resolved}))


# Tokens ---------------------------------------------------------------------------------------------------


@pytest.fixture
async def authed(start_hark: StartHark, tiny_model_store: Path, tmp_path: Path) -> Hark:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one per line\n{TOKEN}\n\n")
    return await start_hark(tiny_model_store, auth_tokens_file=tokens, auth_tokens=f"{OTHER_TOKEN}")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing credentials: send the metadata 'authorization: Bearer <token>'"),
        (bearer("x" * 32), "invalid token"),
        (bearer(TOKEN[:-1]), "invalid token"),
        ((("authorization", f"Basic {TOKEN}"),), "must be 'Bearer <token>'"),
        ((("authorization", "Bearer "),), "must be 'Bearer <token>'"),
    ],
    ids=["none", "wrong", "prefix of a valid one", "basic scheme", "empty bearer"],
)
async def test_calls_without_a_valid_token_are_unauthenticated(
    authed: Hark, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    assert await stream_code(authed.address, metadata) == grpc.StatusCode.UNAUTHENTICATED
    for call in (
        authed.stub.Classify(
            hark_pb2.ClassifyRequest(sample_rate_hz=16_000, encoding=1, pcm=b"\0\0"), metadata=metadata
        ),
        authed.stub.ListModels(hark_pb2.ListModelsRequest(), metadata=metadata),
        authed.stub.GetModel(hark_pb2.GetModelRequest(name="tiny"), metadata=metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert message in (error.value.details() or "")
    assert authed.running.servicer.active_calls == 0


async def test_every_configured_token_is_accepted(authed: Hark) -> None:
    for token in (TOKEN, OTHER_TOKEN):  # from the file and from HARK_AUTH_TOKENS
        assert await stream_code(authed.address, bearer(token)) == grpc.StatusCode.OK
        listed = await authed.stub.ListModels(hark_pb2.ListModelsRequest(), metadata=bearer(token))
        assert [m.name for m in listed.models] == ["tiny"]
    # The scheme is case-insensitive (RFC 7235).
    assert await stream_code(authed.address, (("authorization", f"bearer {TOKEN}"),)) == grpc.StatusCode.OK


async def test_health_is_exempt_and_reflection_is_not_unless_configured(
    authed: Hark, start_hark: StartHark, tiny_model_store: Path
) -> None:
    health = health_pb2_grpc.HealthStub(authed.channel)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
    assert await _reflection_code(authed.channel) == grpc.StatusCode.UNAUTHENTICATED
    assert await _reflection_code(authed.channel, bearer(TOKEN)) == grpc.StatusCode.OK

    strict = await start_hark(
        tiny_model_store, auth_tokens=TOKEN, auth_exempt_health=False, auth_exempt_reflection=True
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await health_pb2_grpc.HealthStub(strict.channel).Check(health_pb2.HealthCheckRequest())
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await _reflection_code(strict.channel) == grpc.StatusCode.OK


async def _reflection_code(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata
    )
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as e:
        return e.code()
    code: grpc.StatusCode = await call.code()
    return code


def test_tokens_are_verified_whatever_their_length_and_parsed_strictly() -> None:
    verifier = TokenVerifier([TOKEN, OTHER_TOKEN])
    assert verifier.verify(TOKEN) and verifier.verify(OTHER_TOKEN.encode())
    for wrong in ("", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "x" * 10_000):
        assert not verifier.verify(wrong)
    assert parse_tokens(f"{TOKEN}  # laptop\n\n,{OTHER_TOKEN}", "test") == [TOKEN, OTHER_TOKEN]
    with pytest.raises(ValueError, match="characters that cannot travel"):
        parse_tokens("has a space in it but is long", "test")
    assert bearer_token([("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")])[0] is None


def test_tokens_are_compared_in_constant_time_against_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing must not tell how much of a guess was right, how long the token is, or which token matched:
    every check compares fixed-length digests with ``hmac.compare_digest``, against every token, no early exit."""
    compared: list[tuple[int, int]] = []

    def recording_compare(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real_compare(a, b)

    real_compare = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", recording_compare)
    third = "tok-" + secrets.token_hex(24)
    verifier = TokenVerifier([TOKEN, OTHER_TOKEN, third])
    for presented, valid in [(TOKEN, True), (third, True), (TOKEN[:5], False), ("x" * 10_000, False), ("", False)]:
        compared.clear()
        assert verifier.verify(presented) is valid
        assert compared == [(32, 32)] * 3, presented[:8]


def test_settings_never_show_the_tokens() -> None:
    settings = Settings(auth_tokens=TOKEN)
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())


# Logs -----------------------------------------------------------------------------------------------------


async def test_logs_hold_no_token_and_no_audio(
    start_hark: StartHark, tiny_model_store: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Debug-level logs of authenticated and refused streams and calls: neither secrets nor payload."""
    h = await start_hark(tiny_model_store, auth_tokens=f"{TOKEN},{OTHER_TOKEN}", log_level="debug")
    marker = b"PCM-PAYLOAD-MARKER"  # an even number of bytes: valid int16 audio
    pcm = marker * 2000
    result = await run_stream(h.stub, [config(emit_scores=True), audio(pcm), audio(pcm)], metadata=bearer(TOKEN))
    assert result.code == grpc.StatusCode.OK, result.details
    refused = await run_stream(h.stub, [config(), audio(pcm + b"\x00")], metadata=bearer(TOKEN))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    await h.stub.Classify(
        hark_pb2.ClassifyRequest(sample_rate_hz=16_000, encoding=1, pcm=pcm), metadata=bearer(OTHER_TOKEN)
    )
    wrong = "tok-" + secrets.token_hex(16)
    # Only the config: audio still in flight when the server refuses can make a grpc.aio client report
    # INTERNAL instead of the server's status (grpc/grpc#36066).
    refused_auth = await run_stream(h.stub, [config()], metadata=bearer(wrong))
    assert refused_auth.code == grpc.StatusCode.UNAUTHENTICATED
    await asyncio.sleep(0.1)
    logs = "".join(capfd.readouterr())
    assert "stream finished" in logs and "UNAUTHENTICATED" in logs  # the logs were captured
    for secret in (TOKEN, OTHER_TOKEN, wrong, "Bearer"):
        assert secret not in logs
    for form in (marker.decode(), marker.hex(), base64.b64encode(marker * 3).decode(), repr(marker)[2:-1]):
        assert form not in logs


# Debug capture ---------------------------------------------------------------------------------------------


async def test_audio_capture_is_off_by_default_and_bounded_when_on(
    hark: Hark, start_hark: StartHark, tiny_model_store: Path, tmp_path: Path
) -> None:
    assert hark.running.plane.capture is None
    capture_dir = tmp_path / "capture"
    h = await start_hark(tiny_model_store, debug_capture_dir=capture_dir, debug_capture_max_bytes=8_000)
    samples = noise(1.0)
    assert (await run_stream(h.stub, [config(), *audio_requests(samples)])).code == grpc.StatusCode.OK
    for _ in range(50):
        if files := list(capture_dir.glob("*.wav")):
            break
        await asyncio.sleep(0.02)
    (wav,) = files
    data, rate = sf.read(wav, dtype="int16")
    assert rate == 16_000 and data.size == 4_000  # 8000 bytes of int16, not the whole second
    assert stat.S_IMODE(wav.stat().st_mode) == 0o600
    assert stat.S_IMODE(capture_dir.stat().st_mode) == 0o700


# The model store loads verified ONNX bytes from under its root, nothing else ---------------------------------


def test_symlinked_model_files_are_refused(tmp_path: Path) -> None:
    outside = publish_tiny(tmp_path / "elsewhere", "tiny")  # a valid version outside the store
    for name in (MODEL_FILE, "manifest.json"):
        version_dir = publish_tiny(tmp_path / f"store-{name}", "tiny")
        (version_dir / name).unlink()
        (version_dir / name).symlink_to(outside / name)
        with pytest.raises(VerificationError, match="symlinks are refused"):
            load_version(version_dir)


def test_weights_outside_the_checksummed_file_are_refused(tmp_path: Path) -> None:
    """External data would load weights the manifest's sha256 does not cover, even from the version folder."""
    version_dir = publish_tiny(tmp_path / "store", "tiny")
    model = onnx.load(str(version_dir / MODEL_FILE))
    onnx.save(model, str(tmp_path / "external.onnx"), save_as_external_data=True, location="weights.bin",
              size_threshold=0)  # fmt: skip
    (version_dir / "weights.bin").write_bytes((tmp_path / "weights.bin").read_bytes())
    (version_dir / MODEL_FILE).write_bytes((tmp_path / "external.onnx").read_bytes())
    manifest = (version_dir / "manifest.json").read_text()
    old_sha = manifest.split('"sha256": "')[1][:64]
    (version_dir / "manifest.json").write_text(manifest.replace(old_sha, sha256_file(version_dir / MODEL_FILE)))
    assert any(
        t.data_location == TensorProto.EXTERNAL
        for t in onnx.load(str(version_dir / MODEL_FILE), load_external_data=False).graph.initializer
    )
    with pytest.raises(VerificationError, match="onnxruntime cannot load"):
        load_version(version_dir)
    store = ModelStore(tmp_path / "store")
    assert str(version_dir) in store.refresh().refused


FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "torch",
                     "hark_training"}  # fmt: skip


def test_no_pickle_and_no_torch_in_the_serving_path() -> None:
    """Unpickling runs code: nothing under service/ may import a pickle-based loader, or torch, or training."""
    offences = []
    for path in sorted((REPO / "service").rglob("*.py")):
        if path.relative_to(REPO / "service").parts[:2] == ("hark", "v1"):
            continue  # generated protobuf stubs
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
                names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            elif (
                isinstance(node, ast.keyword)
                and node.arg == "allow_pickle"
                and not (isinstance(node.value, ast.Constant) and node.value.value is False)
            ):
                offences.append(f"{path.name}:{node.value.lineno}: allow_pickle")
            offences += [
                f"{path.name}:{getattr(node, 'lineno', 0)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_MODULES
            ]
    assert offences == []


def test_the_server_process_never_imports_pickle_based_loaders() -> None:
    """The same, at run time: importing the server and client loads none of them (the stdlib's own
    ``pickle`` may be pulled in by a dependency, so only the third-party loaders and torch are checked)."""
    code = (
        "import sys, hark.server, hark.client, hark.cli\n"
        "print(sorted(m for m in ('torch', 'joblib', 'dill', 'cloudpickle', 'hark_training') if m in sys.modules))"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# The CLI with TLS and a token --------------------------------------------------------------------------------


async def _hark(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *HARK, *map(str, args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("HARK_")}, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_cli_over_mutual_tls_with_a_token(
    start_hark: StartHark, tiny_model_store: Path, pki: Pki, tmp_path: Path
) -> None:
    h = await start_hark(
        tiny_model_store,
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        tls_client_ca_file=pki.ca,
        auth_tokens=TOKEN,
    )
    wav = write_wav(tmp_path / "clip.wav", rate=16_000, subtype="PCM_16", seconds=1.2)
    tls = ["--server", h.address, "--tls-ca", pki.ca, "--tls-cert", pki.client.cert, "--tls-key", pki.client.key]
    ok = await _hark("classify", "--json", *tls, wav, env={"HARK_TOKEN": TOKEN})
    assert ok.code == 0, ok.err
    assert ok.json_lines()[0]["model"] == "tiny"
    streamed = await _hark("stream", "--fast", *tls, "--token", TOKEN, wav)
    assert streamed.code == 0, streamed.err
    health = await _hark("health", *tls)  # exempt from the token
    assert (health.code, health.out) == (0, "SERVING\n")

    no_token = await _hark("models", *tls)
    assert no_token.code == 2
    assert no_token.err.startswith("hark: error: UNAUTHENTICATED: missing credentials")
    no_certificate = await _hark("models", "--server", h.address, "--tls-ca", pki.ca, "--token", TOKEN)
    assert no_certificate.code == 3 and "UNAVAILABLE" in no_certificate.err
    half_pair = await _hark("models", "--server", h.address, "--tls-cert", pki.client.cert)
    assert half_pair.code == 2 and "needs its key" in half_pair.err
    for result in (ok, streamed, no_token, no_certificate):
        assert "Traceback" not in result.err and TOKEN not in result.err
