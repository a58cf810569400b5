import stat

from click.testing import CliRunner

from insignia.agent.cli.api import write_x509_context
from insignia.agent.cli.main import main
from insignia.bundle import Bundle, BundleSet
from insignia.keys import private_key_from_der
from insignia.workloadapi import X509Context
from insignia.x509svid import X509Svid, parse_chain_der
from tests.unit.agent.helpers import issue, make_entry
from tests.unit.common import TD, make_ca


def test_write_lays_out_files_like_spire_with_private_keys(tmp_path):
    ca = make_ca()
    record = issue(ca, make_entry("e", "/web", "unix:uid:1"))
    svid = X509Svid(
        record.spiffe_id, parse_chain_der(record.chain_der), private_key_from_der(record.key_der)
    )
    context = X509Context((svid,), BundleSet.of([Bundle(TD, (ca.certificate,))]))
    written = write_x509_context(context, tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["bundle.0.pem", "svid.0.key", "svid.0.pem"]
    key_mode = stat.S_IMODE((tmp_path / "out" / "svid.0.key").stat().st_mode)
    assert key_mode == 0o600
    assert (tmp_path / "out" / "bundle.0.pem").read_bytes() == ca.certificate.public_bytes(
        __import__(
            "cryptography.hazmat.primitives.serialization"
        ).hazmat.primitives.serialization.Encoding.PEM
    )


def test_cli_surface_and_usage_errors(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).output.startswith("insignia-agent, version")
    result = runner.invoke(main, ["api", "fetch", "x509", "--socket", "tcp://1.2.3.4:5"])
    assert result.exit_code == 2 and "only unix sockets" in result.output
    bad = tmp_path / "agent.toml"
    bad.write_text('trust_domain = "example.org"\nbogus = 1\n')
    result = runner.invoke(main, ["run", "--config", str(bad)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "bogus: unknown key" in result.output
    result = runner.invoke(main, ["healthcheck", "--admin-socket", str(tmp_path / "none.sock")])
    assert result.exit_code == 1 and "cannot reach its admin socket" in result.output
