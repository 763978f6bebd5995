"""Whether TFDS can download a dataset from here: its download hosts and a fast probe.

Offline, TFDS's own download attempt does not fail fast (its HTTP retries back
off for minutes before raising), so callers probe the hosts first with
`unreachable` and only then let TFDS try.
"""
from __future__ import annotations

import socket
import threading
import urllib.parse

PROBE_TIMEOUT_S = 3.0  # how long to wait for one host to answer a TCP connect


def download_hosts(builder_cls) -> dict[str, int]:
  """Host -> port of the URLs in a TFDS builder class's recorded checksums (sorted by host).

  Empty when TFDS records none (e.g. manual-download datasets).
  """
  try:
    urls = builder_cls.url_infos or {}
  except Exception:  # pylint: disable=broad-except
    urls = {}
  hosts = {}
  for url in urls:
    parts = urllib.parse.urlparse(url)
    if parts.hostname:
      hosts[parts.hostname] = parts.port or (80 if parts.scheme == 'http' else 443)
  return dict(sorted(hosts.items()))


def reachable(host: str, port: int) -> bool:
  """Whether a TCP connection to host:port opens within `PROBE_TIMEOUT_S` seconds.

  Runs in a daemon thread so that a hanging DNS lookup cannot stall the caller.
  """
  result = []

  def probe():
    try:
      with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
        result.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(PROBE_TIMEOUT_S + 1.0)
  return bool(result)


def unreachable(hosts: dict[str, int]) -> list[str]:
  """The hosts of `hosts` (host -> port) that `reachable` cannot reach, in order."""
  return [host for host, port in hosts.items() if not reachable(host, port)]
