"""The download cache against a local server: once, resumed with Range after a cut, verified by
length and checksum, and nothing incomplete under the final name."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

from geoembed.errors import ConfigError, InputError
from geoembed.sources.download import cached_download, download_paths
from geoembed.testing.remote import LocalServer

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server():
    with LocalServer() as srv:
        srv.add_file("/extracts/country-latest.osm.pbf", DATA)
        yield srv


def url_of(srv) -> str:
    return srv.url + "/extracts/country-latest.osm.pbf"


def test_download_once_into_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOEMBED_CACHE_DIR", str(tmp_path / "cache"))
    path = cached_download(url_of(server), sha256=SHA, backoff_s=0.01)
    assert path.read_bytes() == DATA and path.name == "country-latest.osm.pbf"
    assert path.is_relative_to(tmp_path / "cache" / "downloads")
    assert cached_download(url_of(server), sha256="sha256:" + SHA) == path  # no second download
    assert cached_download(url_of(server)) == path
    assert len(server.requests_to("/extracts/country-latest.osm.pbf")) == 1
    assert not path.with_name(path.name + ".part").exists()


def test_cut_download_is_resumed_with_range(server):
    server.fail("/extracts/country-latest.osm.pbf", ("drop", 100_000))
    path = cached_download(url_of(server), sha256=SHA, backoff_s=0.01)
    assert path.read_bytes() == DATA
    reqs = server.requests_to("/extracts/country-latest.osm.pbf")
    assert len(reqs) == 2 and reqs[1]["headers"]["Range"] == "bytes=100000-"
    assert reqs[1]["headers"]["If-Range"].startswith('"')  # the ETag of the first answer


def test_truncated_download_keeps_its_part_and_a_rerun_resumes(server):
    server.fail("/extracts/country-latest.osm.pbf", ("drop", 50_000), ("drop", 20_000))
    final, part = download_paths(url_of(server))
    with pytest.raises(InputError, match=f"download of {url_of(server)}: cut short at 70000 of 300000 bytes.*"
                       f"2 attempts.*partial file {part} is kept: rerun to resume"):
        cached_download(url_of(server), retries=1, backoff_s=0.01)
    assert not final.exists() and part.stat().st_size == 70_000  # nothing looks complete
    path = cached_download(url_of(server), sha256=SHA, retries=0)
    assert path.read_bytes() == DATA
    assert server.requests_to("/extracts/country-latest.osm.pbf")[-1]["headers"]["Range"] == "bytes=70000-"


def test_a_changed_file_restarts_the_part(server):
    server.fail("/extracts/country-latest.osm.pbf", ("drop", 50_000))
    with pytest.raises(InputError, match="cut short"):
        cached_download(url_of(server), retries=0)
    new = os.urandom(200_000)
    server.add_file("/extracts/country-latest.osm.pbf", new)  # a new ETag: If-Range gets the whole file
    path = cached_download(url_of(server), sha256=hashlib.sha256(new).hexdigest(), retries=0)
    assert path.read_bytes() == new


def test_checksum_mismatch_is_an_error_and_removes_the_file(server):
    final, part = download_paths(url_of(server))
    with pytest.raises(InputError, match=f"download of {url_of(server)}: sha256 is sha256:{SHA}, expected "
                       "sha256:0{64}; the file was removed"):
        cached_download(url_of(server), sha256="0" * 64)
    assert not final.exists() and not part.exists()
    with pytest.raises(ConfigError, match="64 hexadecimal digits"):
        cached_download(url_of(server), sha256="abc")


def test_cached_file_with_another_checksum_is_downloaded_again(server):
    path = cached_download(url_of(server))
    path.write_bytes(b"stale")
    assert cached_download(url_of(server), sha256=SHA).read_bytes() == DATA


def test_server_errors_are_retried_then_reported(server):
    server.fail("/extracts/country-latest.osm.pbf", ("status", 500))
    assert cached_download(url_of(server), backoff_s=0.01).read_bytes() == DATA
    with pytest.raises(InputError, match="download of .*/missing.pbf: HTTP 404 Not Found.*check the URL"):
        cached_download(server.url + "/missing.pbf")
    server.fail("/again.pbf", *[("status", 503)] * 3)
    with pytest.raises(InputError, match="HTTP 503.*3 attempts"):
        cached_download(server.url + "/again.pbf", retries=2, backoff_s=0.01)


def test_timeout_names_the_url(server):
    server.fail("/extracts/country-latest.osm.pbf", ("hang", 30))
    t0 = time.monotonic()
    with pytest.raises(InputError, match="download of .*country-latest.osm.pbf: no data within 0.5 s"):
        cached_download(url_of(server), timeout_s=0.5, retries=0)
    assert time.monotonic() - t0 < 10


def test_unreachable_server_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x.osm.pbf"
    with pytest.raises(InputError, match=f"download of {url}: connection failed .*2 attempts"):
        cached_download(url, retries=1, backoff_s=0.01)
    assert not download_paths(url)[0].exists()


def test_cache_needs_a_folder(server, monkeypatch):
    monkeypatch.setenv("GEOEMBED_CACHE_DIR", "")
    with pytest.raises(ConfigError, match="GEOEMBED_CACHE_DIR is set empty"):
        cached_download(url_of(server))
    with pytest.raises(ConfigError, match="not an http"):
        download_paths("ftp://host/x.pbf")
