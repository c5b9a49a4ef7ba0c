"""Safe webhook targets: http(s) URLs whose host resolves only to public addresses.

The check runs when a webhook is saved (scheme, host, literal addresses) and again at every
delivery, where the host is resolved once and the connection is made to exactly the address
that was checked (the Host header and TLS name stay the URL's host). Resolving twice — once to
check, once to connect — would let a DNS answer that changes in between (DNS rebinding) reach
an internal service. Redirects are not followed, for the same reason.
"""
import ipaddress
import socket
import threading
import time
from urllib.parse import urlsplit

import urllib3

MAX_URL = 2000
# Cloud metadata services, named for a clearer message (all are non-global anyway).
METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")}


class UnsafeTarget(Exception):
    pass


def address_problem(ip):
    """Why `ip` may not be a webhook target, or None if it may."""
    ip = ipaddress.ip_address(ip)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return f"{ip} is a cloud metadata address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_private:
        return f"{ip} is a private address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return f"{ip} is not a public address"
    return None


def check_url(url, allow_private=False):
    """Validate a webhook URL when it is saved; returns an error message or None."""
    if not isinstance(url, str) or not url.strip():
        return "must be an http(s) URL"
    url = url.strip()
    if len(url) > MAX_URL:
        return f"must be at most {MAX_URL} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"is not a valid URL ({e})"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    host = parts.hostname
    if not host:
        return "must name a host"
    if parts.username or parts.password:
        return "must not contain credentials (the signature authenticates deliveries)"
    if port == 0:
        return "has an invalid port"
    if allow_private:
        return None
    if host == "localhost" or host.endswith(".localhost"):
        return "must not point to this machine (localhost)"
    try:
        problem = address_problem(host)
    except ValueError:  # a name, resolved at delivery time
        return None
    return f"must not point to a non-public address: {problem}" if problem else None


def resolve(host, port, allow_private=False):
    """The one address to connect to: every address the name resolves to must be public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UnsafeTarget(f"cannot resolve {host}: {e.strerror or e}")
    addresses = []
    for info in infos:
        addr = info[4][0].split("%", 1)[0]
        if addr not in addresses:
            addresses.append(addr)
    if not allow_private:
        for addr in addresses:
            problem = address_problem(addr)
            if problem:
                raise UnsafeTarget(f"refused: {host} resolves to {problem} (set WEBHOOK_ALLOW_PRIVATE=1 to allow)")
    if not addresses:
        raise UnsafeTarget(f"cannot resolve {host}")
    return addresses[0]


class DeadlineExceeded(Exception):
    """The receiver did not answer completely within WEBHOOK_TIMEOUT (however slowly it dripped)."""


def post(url, body, headers, timeout, allow_private=False, ca_certs=None):
    """POST `body` to `url` pinned to the checked address; returns (status, first 500 bytes).
    HTTPS verifies the certificate for the URL's host name (SNI too), not for the address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("refused: not an http(s) URL")
    host = parts.hostname
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    ip = resolve(host, port, allow_private)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = f"[{host}]" if ":" in host else host
    if parts.port:
        host_header += f":{parts.port}"
    # A hard deadline for the whole attempt: connect, send and the complete answer. urllib3's
    # timeouts apply per socket operation, so a receiver dripping one byte every few seconds
    # would never trip them; a watchdog shuts the socket down at the deadline instead.
    deadline = time.monotonic() + timeout
    t = urllib3.Timeout(connect=timeout, read=timeout)
    if https:
        import certifi
        conn = urllib3.connection.HTTPSConnection(ip, port, timeout=t.connect_timeout, cert_reqs="CERT_REQUIRED",
                                                  ca_certs=ca_certs or certifi.where(), server_hostname=host,
                                                  assert_hostname=host)
    else:
        conn = urllib3.connection.HTTPConnection(ip, port, timeout=t.connect_timeout)
    expired = threading.Event()

    def cut():
        expired.set()
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    watchdog = threading.Timer(timeout, cut)
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", path, body=body, headers={**headers, "Host": host_header})
        resp = conn.getresponse()
        excerpt = resp.read(500, decode_content=False)
        if expired.is_set() or time.monotonic() > deadline:
            raise DeadlineExceeded(f"no complete answer within {timeout:g} s")
        return resp.status, excerpt
    except Exception as e:
        if expired.is_set():
            raise DeadlineExceeded(f"no complete answer within {timeout:g} s") from None
        raise e
    finally:
        watchdog.cancel()
        conn.close()
