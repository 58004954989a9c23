"""The local clamd's rendered config and signature databases (no clamd started: see
tests/integration/test_clamd_local.py for the real one)."""
from __future__ import annotations

import shutil

import pytest

from pipeline.localstack.clamd import SIGNATURES_DIR, ClamdSetupError, clamd_service, socket_path

needs_clamd = pytest.mark.skipif(shutil.which("clamd", path="/usr/sbin:/usr/local/sbin") is None,
                                 reason="clamd not installed (deploy/local/install-debian-packages.sh)")


@needs_clamd
def test_config_and_databases(tmp_path):
    spec = clamd_service(tmp_path, "127.0.0.1", 41199, stream_max_length=12345)
    conf = (tmp_path / "clamd/clamd.conf").read_text()
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in conf.splitlines()
             if line and not line.startswith("#")}
    assert lines["Foreground"] == "yes" and lines["AlertExceedsMax"] == "yes"
    assert lines["TCPAddr"] == "127.0.0.1" and lines["TCPSocket"] == "41199"
    assert lines["LocalSocket"] == str(socket_path(tmp_path)) == str(tmp_path / "clamd/clamd.sock")
    assert lines["StreamMaxLength"] == "12345"
    assert lines["ScanArchive"] == "yes" and lines["ScanMail"] == "yes"
    assert lines["DatabaseDirectory"] == str(tmp_path / "clamd/db")
    assert sorted(p.name for p in (tmp_path / "clamd/db").iterdir()) == ["poststelle.ldb", "poststelle.ndb"]
    assert spec.name == "clamd" and spec.argv[1:] == ["-c", str(tmp_path / "clamd/clamd.conf")]
    assert spec.ready_probe is not None and spec.ready_probe() is False  # nothing listens yet


@needs_clamd
def test_databases_are_replaced_at_each_start(tmp_path):
    (tmp_path / "clamd/db").mkdir(parents=True)
    (tmp_path / "clamd/db/stale.ndb").write_text("Old.Sig:0:*:41414141\n")
    clamd_service(tmp_path, "127.0.0.1", 41199)
    assert not (tmp_path / "clamd/db/stale.ndb").exists()
    assert (tmp_path / "clamd/db/poststelle.ndb").read_bytes() == (SIGNATURES_DIR / "poststelle.ndb").read_bytes()


@needs_clamd
def test_refuses_a_directory_without_databases(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no signatures here")
    with pytest.raises(ClamdSetupError, match="no signature database"):
        clamd_service(tmp_path / "home", "127.0.0.1", 41199, signatures_dir=empty)


def test_the_repository_holds_no_literal_eicar_string():
    """The signature stores EICAR as hex only; a literal copy would make scanners flag the repo."""
    from tests.virus_samples import eicar

    needle = eicar()
    root = SIGNATURES_DIR.parents[2]
    for path in root.rglob("*"):
        skipped = {".git", ".venv", "var", "__pycache__"} & set(path.relative_to(root).parts)
        if path.is_file() and not skipped:
            assert needle not in path.read_bytes(), path
