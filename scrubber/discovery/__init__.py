"""Discovery: find memorized secrets nobody told us about.

sample (baits + unconditional) -> detect candidates -> judge by exposure -> rank.
"""

from scrubber.discovery.baits import DEFAULT_BAITS, Bait, resolve_baits
from scrubber.discovery.config import DEFAULT_THRESHOLD_BITS, DiscoverScanConfig, DiscoveryOptions
from scrubber.discovery.scan import DiscoveryResult, discover, run_discovery, scan_report, write_canary_file

__all__ = [
    "DEFAULT_BAITS",
    "DEFAULT_THRESHOLD_BITS",
    "Bait",
    "DiscoverScanConfig",
    "DiscoveryOptions",
    "DiscoveryResult",
    "discover",
    "resolve_baits",
    "run_discovery",
    "scan_report",
    "write_canary_file",
]
