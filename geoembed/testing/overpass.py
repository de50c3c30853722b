"""A stand-in Overpass API for tests that answers with real OSM data: the nodes and ways of an
``.osm.pbf`` (e.g. the Helsinki kit) that match the query's tag filters in its bounding box, written
as Overpass writes OSM XML.

It understands the statements :func:`geoembed.sources.overpass.overpass_query` writes
(``node|way|relation|nwr`` with ``["k"]["k"!="no"]`` or ``["k"~"^(a|b)$"]`` and a ``(s,w,n,e)`` box,
then ``(._;>;);``), and answers relations with nothing. Error documents (HTTP 200 with a remark)
and HTML error pages are available for fault tests.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from urllib.parse import parse_qs
from xml.sax.saxutils import quoteattr

from geoembed.testing.remote import Reply

__all__ = ["OVERPASS_HTML_ERROR", "OVERPASS_TIMEOUT_REMARK", "overpass_handler", "overpass_xml"]

OVERPASS_TIMEOUT_REMARK = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6" generator="Overpass API 0.7.62.1 084b4234">\n'
    b'<note>The data included in this document is from www.openstreetmap.org. The data is made available '
    b'under ODbL.</note>\n<meta osm_base="2024-05-01T10:00:00Z"/>\n'
    b'  <node id="1" lat="60.17" lon="24.94"/>\n'
    b'<remark> runtime error: Query timed out in "query" at line 3 after 26 seconds. </remark>\n\n</osm>\n'
)
OVERPASS_HTML_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html>\n<html><head><title>OSM3S Response</title></head>'
    b'<body><p><strong style="color:#FF0000">Error</strong>: runtime error: open64: 0 Success '
    b'/osm3s_osm_base Dispatcher_Client::request_read_and_idx::timeout. The server is probably too busy '
    b'to handle your request. </p></body></html>\n'
)
_STMT_RE = re.compile(r'^\s*(node|way|relation|nwr)\["([^"]+)"~"\^\((.*)\)\$"\]'
                      r'\(([-\d.]+),([-\d.]+),([-\d.]+),([-\d.]+)\);\s*$')
_STMT_ANY = re.compile(r'^\s*(node|way|relation|nwr)\["([^"]+)"\]\["[^"]+"!="no"\]'
                       r'\(([-\d.]+),([-\d.]+),([-\d.]+),([-\d.]+)\);\s*$')


@functools.lru_cache(maxsize=4)
def _load(pbf: str) -> tuple[dict, dict]:
    """nodes {id: (lon, lat, tags)} and ways {id: (refs, tags)} of an OSM file."""
    import osmium

    nodes, ways = {}, {}
    for obj in osmium.FileProcessor(pbf):
        if obj.is_node():
            nodes[obj.id] = (obj.location.lon, obj.location.lat, dict(obj.tags))
        elif obj.is_way():
            ways[obj.id] = ([n.ref for n in obj.nodes], dict(obj.tags))
    return nodes, ways


def _unquote_regex(alts: str) -> list[str]:
    """The values of a ``^(a|b)$`` alternative as written by the query builder (QL and regex escapes)."""
    text = alts.replace('\\"', '"').replace("\\\\", "\\")
    return [re.sub(r"\\(.)", r"\1", v) for v in re.split(r"(?<!\\)\|", text)]


def overpass_xml(pbf: str | Path, query: str) -> bytes:
    """The OSM XML answer to ``query`` over the objects of ``pbf``."""
    nodes, ways = _load(str(pbf))
    sel_nodes: set[int] = set()
    sel_ways: set[int] = set()
    for line in query.splitlines():
        m = _STMT_ANY.match(line)
        if m:
            kind, key, s, w, n, e = m.groups()
            ok = lambda tags, key=key: key in tags and tags[key] != "no"  # noqa: E731
        else:
            m = _STMT_RE.match(line)
            if not m:
                continue
            kind, key, alts, s, w, n, e = m.groups()
            values = set(_unquote_regex(alts))
            ok = lambda tags, key=key, values=values: tags.get(key) in values  # noqa: E731
        s, w, n, e = (float(v) for v in (s, w, n, e))

        def inside(nid: int, s=s, w=w, n=n, e=e) -> bool:
            lon, lat, _ = nodes.get(nid, (None, None, None))
            return lon is not None and s <= lat <= n and w <= lon <= e

        if kind in ("node", "nwr"):
            sel_nodes |= {i for i, (_, _, tags) in nodes.items() if tags and ok(tags) and inside(i)}
        if kind in ("way", "nwr"):
            sel_ways |= {i for i, (refs, tags) in ways.items() if ok(tags) and any(inside(r) for r in refs)}
    all_nodes = sel_nodes | {r for i in sel_ways for r in ways[i][0] if r in nodes}
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<osm version="0.6" generator="Overpass API 0.7.62.1 084b4234">',
           "<note>The data included in this document is from www.openstreetmap.org. The data is made "
           "available under ODbL.</note>", '<meta osm_base="2024-05-01T10:00:00Z"/>', ""]
    for i in sorted(all_nodes):
        lon, lat, tags = nodes[i]
        if tags:
            out.append(f'  <node id="{i}" lat="{lat:.7f}" lon="{lon:.7f}">')
            out += [f"    <tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in sorted(tags.items())]
            out.append("  </node>")
        else:
            out.append(f'  <node id="{i}" lat="{lat:.7f}" lon="{lon:.7f}"/>')
    for i in sorted(sel_ways):
        refs, tags = ways[i]
        out.append(f'  <way id="{i}">')
        out += [f'    <nd ref="{r}"/>' for r in refs]
        out += [f"    <tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in sorted(tags.items())]
        out.append("  </way>")
    out.append("")
    out.append("</osm>")
    return ("\n".join(out) + "\n").encode()


def overpass_handler(pbf: str | Path):
    """A :class:`~geoembed.testing.remote.LocalServer` route answering Overpass POSTs (``data=<QL>``)
    from ``pbf``; the queries it saw are appended to ``handler.queries``."""

    def handler(method, query, body, headers):
        ql = parse_qs(body.decode()).get("data", [""])[0] if method == "POST" else query.get("data", "")
        handler.queries.append(ql)
        if not ql.strip():
            return Reply(400, b"<html><body>Error: line 1: parse error: empty query</body></html>", "text/html")
        return Reply(body=overpass_xml(pbf, ql), content_type="application/osm3s+xml")

    handler.queries = []
    return handler
