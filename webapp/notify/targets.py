"""Safe webhook targets: http(s) URLs whose host resolves only to public addresses.

The check runs when a webhook is saved (scheme, host, literal addresses) and again at every
delivery, where the host is resolved once and the connection is made to exactly the address
that was checked (the Host header and TLS name stay the URL's host). Resolving twice — once to
check, once to connect — would let a DNS answer that changes in between (DNS rebinding) reach
an internal service. Redirects are not followed, for the same reason.
"""
import ipaddress
import os
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


class DeliveryError(Exception):
    """A delivery that failed on the way (timeout, refused, TLS): the message names the kind of
    failure and never the address connected to (that is a DNS answer of the webhook owner's
    choosing, maybe an internal one; urllib3's own messages include it)."""


# IPv6 forms that carry an IPv4 address inside: the connection ends up at that IPv4 address (the
# OS for mapped ones, a relay or translator for the others), so the IPv4 address is what counts.
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: public IPv4 only
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use: a private translator
SIXTOFOUR = ipaddress.ip_network("2002::/16")
TEREDO = ipaddress.ip_network("2001::/32")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated (RFC 4291)
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT (RFC 2765)
SITE_LOCAL = ipaddress.ip_network("fec0::/10")  # deprecated, yet is_global in Python 3.11


def _kind(ip):
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


def address_kind(ip):
    """What kind of non-public address `ip` is ("a loopback address", ...), or None if it is a
    public one. Worded without the address: delivery errors show it, and a DNS answer is the
    target's business (maybe an internal network's layout), not the attempt log's."""
    ip = ipaddress.ip_address(ip)
    if ip.version == 6:
        ip = ipaddress.IPv6Address(ip.packed)  # without a zone id: "fe80::1%eth0" is fe80::1
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        elif ip in TEREDO:
            return "a Teredo tunnel address"
        elif ip in SIXTOFOUR:
            inner = _kind(ip.sixtofour)
            return "a 6to4 address" + (f" embedding {inner}" if inner else "")
        elif ip in NAT64_LOCAL:
            return "a local-use NAT64 address"
        elif ip in NAT64:
            inner = _kind(ipaddress.IPv4Address(ip.packed[-4:]))
            return f"a NAT64 address embedding {inner}" if inner else None
        elif ip in IPV4_TRANSLATED or (ip in IPV4_COMPATIBLE and int(ip) > 1):
            return "an IPv4-compatible address (deprecated form)"
        elif ip in SITE_LOCAL:
            return "a site-local address"
    return _kind(ip)


def address_problem(ip):
    """Why `ip` may not be a webhook target, or None if it may."""
    kind = address_kind(ip)
    return f"{ipaddress.ip_address(ip)} is {kind}" if kind else None


def literal_address(host):
    """The address a host written as a number means, or None for a name. Besides the usual
    forms, the resolver also reads the old inet_aton ones (`127.1`, `0x7f000001`,
    `2130706433`, `017700000001`): those are checked at save time too."""
    host = host.rstrip(".") if host.count(".") > 1 else host
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
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
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return "must not point to this machine (localhost)"
    ip = literal_address(host)
    if ip is None:  # a name, resolved (and checked) at delivery time
        return None
    problem = address_problem(ip)
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
            kind = address_kind(addr)
            if kind:
                # The kind, not the address: a DNS answer can be an internal network's layout.
                raise UnsafeTarget(f"refused: {host} resolves to {kind} (set WEBHOOK_ALLOW_PRIVATE=1 to allow)")
    if not addresses:
        raise UnsafeTarget(f"cannot resolve {host}")
    return addresses[0]


class DeadlineExceeded(DeliveryError):
    """The receiver did not answer completely within WEBHOOK_TIMEOUT (however slowly it dripped)."""


class _Watched:
    """A connection that keeps its TCP socket as soon as it is connected, so the deadline's
    watchdog can shut it down during the TLS handshake too (urllib3 sets `sock` only once
    the handshake is done: a receiver dripping its handshake would otherwise never be cut)."""
    raw_sock = None

    def _new_conn(self):
        sock = super()._new_conn()
        self.raw_sock = sock
        return sock


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


def post(url, body, headers, timeout, allow_private=False, ca_certs=None):
    """POST `body` to `url` pinned to the checked address; returns (status, first 500 bytes).
    HTTPS verifies the certificate for the URL's host name (SNI too), not for the address."""
    # A hard deadline for the whole attempt: resolution, connect (TLS handshake included),
    # send and the complete answer. urllib3's timeouts apply per socket operation, so a
    # receiver dripping one byte every few seconds would never trip them; a watchdog shuts
    # the socket down at the deadline instead, and every step gets only the time left.
    deadline = time.monotonic() + timeout
    expired = threading.Event()
    conn = None

    def too_late():
        return DeadlineExceeded(f"no complete answer within {timeout:g} s")

    def left():
        return deadline - time.monotonic()

    def cut():
        expired.set()
        c = conn
        sock = c is not None and (getattr(c, "sock", None) or c.raw_sock)
        if sock:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    watchdog = threading.Timer(timeout, cut)
    watchdog.daemon = True
    watchdog.start()
    try:
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
        if expired.is_set() or left() <= 0:  # the resolution took the whole attempt
            raise too_late()
        if https:
            import certifi
            conn = _HTTPSConnection(ip, port, timeout=left(), cert_reqs="CERT_REQUIRED",
                                    ca_certs=ca_certs or certifi.where(), server_hostname=host,
                                    assert_hostname=host)
        else:
            conn = _HTTPConnection(ip, port, timeout=left())
        try:
            conn.connect()
            # Connected just as the deadline passed (the watchdog may have found no socket
            # yet): fail now; else every later socket operation gets at most the time left.
            remaining = left()
            if expired.is_set() or remaining <= 0:
                raise too_late()
            conn.timeout = remaining  # getresponse() applies it to the socket again
            conn.sock.settimeout(remaining)
            conn.request("POST", path, body=body, headers={**headers, "Host": host_header})
            resp = conn.getresponse()
            excerpt = resp.read(500, decode_content=False)
        except DeadlineExceeded:
            raise
        except Exception as e:
            if expired.is_set() or left() <= 0:  # a timeout of the time left is the deadline's
                raise too_late() from None
            raise DeliveryError(describe(e, timeout)) from e
        if expired.is_set() or time.monotonic() > deadline:
            raise too_late()
        return resp.status, excerpt
    finally:
        watchdog.cancel()
        if conn is not None:
            conn.close()


def describe(e, timeout):
    """What went wrong, without the address: urllib3 and the OS name the pinned IP."""
    import ssl
    from urllib3 import exceptions as ux
    chain, todo = [], [e]
    while todo and len(chain) < 20:  # the causes, and what urllib3 wraps in its args
        cur = todo.pop(0)
        if cur is None or cur in chain:
            continue
        chain.append(cur)
        todo += [cur.__cause__, cur.__context__, *(a for a in cur.args if isinstance(a, BaseException))]
    for err in chain:
        if isinstance(err, ssl.SSLCertVerificationError):
            return f"TLS certificate not accepted ({err.verify_message or 'verification failed'})"
        if err.__class__.__name__ == "CertificateError":  # urllib3's host name check: names only
            return f"TLS certificate not accepted ({err})"
    for err in chain:
        if isinstance(err, ssl.SSLError):
            return f"TLS error ({err.reason or 'handshake failed'})"
    if any(isinstance(err, ux.SSLError) for err in chain):
        return "TLS error"
    # Before the timeouts: urllib3's NewConnectionError is a ConnectTimeoutError subclass.
    for err in chain:
        if isinstance(err, OSError) and err.errno and not isinstance(err, (TimeoutError, socket.timeout)):
            return f"connection failed ({os.strerror(err.errno)})"
    if any(isinstance(err, (ux.TimeoutError, TimeoutError, socket.timeout)) for err in chain):
        return f"timed out after {timeout:g} s"
    if isinstance(e, (ux.ProtocolError, ConnectionError)):
        return "connection closed by the receiver"
    return f"delivery failed ({e.__class__.__name__})"
